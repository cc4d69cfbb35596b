// Load a page and read its token boxes in as few round trips as possible (see Browser.render).
//
// The page travels as its source and a list of edits, not as the wrapped HTML: the span markup
// is most of the wrapped page's size (about 90 characters per token), and assembling it here
// costs less than passing it through Playwright's driver. `ops` is the base64 of int32 triples
// (start, end, code) sorted by position: source[start:end] is replaced by the opening tag of
// token `code`'s span (code >= 0: open[0] + code + open[1]) or by texts[-code - 1].
//
// The page's own scripts are off, so no event or timer can call back into this script: it
// cannot wait for the page to settle. A call with a source writes the page, lays it out (which
// starts the loads that style and layout ask for: fonts, CSS images) and returns null; a call
// with `source` null reads the boxes once the page has settled (load fired, every image loaded
// or failed, no font pending), else returns null, and the caller asks again.
([source, ops, open, texts, count]) => {
  if (source !== null) {
    const op = new Int32Array(Uint8Array.fromBase64(ops).buffer);
    const parts = [];
    let done = 0;
    for (let k = 0; k < op.length; k += 3) {
      const start = op[k], end = op[k + 1], code = op[k + 2];
      parts.push(source.slice(done, start));
      parts.push(code >= 0 ? open[0] + code + open[1] : texts[-code - 1]);
      done = Math.max(done, end);
    }
    parts.push(source.slice(done));
    document.open();
    document.write(parts.join(""));
    document.close();
    void document.documentElement.scrollHeight; // lays the page out
    return null;
  }
  const settled = document.readyState === "complete" && document.fonts.status === "loaded" &&
    Array.prototype.every.call(document.images, (image) => image.complete);
  return settled ? (BOXES)(count, true) : null;
}
