// Collect the box of every token span in one pass (called through Playwright's page.evaluate).
// A token may be wrapped in several spans (one per element it crosses): its box is their union.
// Spans that are not rendered (display:none, inside <template>, ...) have an all-zero rect and
// add nothing, so a token none of whose spans render keeps the all-zero box and is dropped.
// Coordinates are CSS pixels relative to the document (the page is never scrolled, but a page
// could set its own scroll position, so the scroll offset is added back).
// Boxes come back as one string, far cheaper to pass than an array of 4n numbers: with `binary`,
// the base64 of the little-endian float64 values (no number formatting or parsing on either
// side), else the numbers separated by spaces.
(count, binary) => {
  const sx = window.scrollX, sy = window.scrollY;
  const box = new Float64Array(4 * count);
  const seen = new Uint8Array(count);
  for (const span of document.querySelectorAll("span[data-layoutja]")) {
    const r = span.getBoundingClientRect();
    if (r.x === 0 && r.y === 0 && r.width === 0 && r.height === 0) continue;
    const i = +span.dataset.layoutja, k = 4 * i;
    const x0 = r.left + sx, y0 = r.top + sy, x1 = r.right + sx, y1 = r.bottom + sy;
    if (!seen[i]) {
      seen[i] = 1;
      box[k] = x0; box[k + 1] = y0; box[k + 2] = x1; box[k + 3] = y1;
    } else {
      box[k] = Math.min(box[k], x0); box[k + 1] = Math.min(box[k + 1], y0);
      box[k + 2] = Math.max(box[k + 2], x1); box[k + 3] = Math.max(box[k + 3], y1);
    }
  }
  const body = document.body ? document.body.getBoundingClientRect() : null;
  const root = document.documentElement;
  return {
    boxes: binary ? new Uint8Array(box.buffer).toBase64() : box.join(" "),
    body: body ? [body.left + sx, body.top + sy, body.right + sx, body.bottom + sy] : null,
    layout: [root.clientWidth, root.clientHeight, root.scrollWidth, root.scrollHeight],
  };
}
