// Draw token boxes over the page for `layoutja show`: one outlined div per box, in a layer
// whose own offset is measured so the outlines land where the spans are whatever the page's
// positioning. Boxes are [x0, y0, x1, y1] in document CSS pixels.
(boxes) => {
  const layer = document.createElement("div");
  layer.style.cssText = "position:absolute;left:0;top:0;width:0;height:0;z-index:2147483647";
  document.documentElement.appendChild(layer);
  const origin = layer.getBoundingClientRect();
  const ox = origin.left + window.scrollX, oy = origin.top + window.scrollY;
  const colors = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4"];
  boxes.forEach(([x0, y0, x1, y1], i) => {
    const d = document.createElement("div");
    d.style.cssText = `position:absolute;box-sizing:border-box;pointer-events:none;` +
      `left:${x0 - ox}px;top:${y0 - oy}px;width:${x1 - x0}px;height:${y1 - y0}px;` +
      `border:1px solid ${colors[i % colors.length]};background:rgba(255,230,0,0.15)`;
    layer.appendChild(d);
  });
}
