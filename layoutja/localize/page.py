"""Localize one page: tokenize its text, wrap each subword in a span, render, read the boxes.

    raw bytes ─► decode_html ─► parse_html (text blocks, raw positions) ─► wrap_tokens
              ─► Browser.render (one evaluate) ─► page_record (normalize, drop unrendered)

Each block's text is tokenized as one string, so a word split by inline markup is one word. A
token is wrapped by editing the raw HTML around its characters; a token whose characters lie in
several text runs (`<b>東</b>京`) gets one span per run, all with the same `data-layoutja`
index, and the browser script unions their boxes.

Normalized boxes follow the published pipeline: relative to `document.body`'s rect,
`int(1000 * (x - body.x0) / body.width)` (same for y with the height), clamped to 0–1000. The
CSS-pixel boxes are stored too, so other normalizations (e.g. per training window, which keeps
vertical resolution on long pages) can be computed later without rendering again.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from layoutja.common import UserError
from layoutja.localize.browser import Browser, RenderResult, RenderTimeout
from layoutja.localize.config import LocalizeConfig
from layoutja.text.htmlpage import HtmlPage, decode_html, parse_html
from layoutja.text.tokenizer import JapaneseTokenizer

# nowrap keeps a subword on one line; with ligatures on, a glyph spanning two spans (f|i) gives
# the second span zero width, so ligatures are turned off on token spans.
SPAN_OPEN = '<span data-layoutja="{}" style="white-space:nowrap;font-variant-ligatures:none">'
SPAN_CLOSE = "</span>"


@dataclass
class WrappedPage:
    """A page's tokens with their raw-HTML ranges, and the HTML with every token wrapped."""

    html: str
    tokens: list[str]
    ids: list[int]
    raw: list[tuple[int, int]]  # [start, end) character range of each token in the raw file


def wrap_tokens(page: HtmlPage, tokenizer: JapaneseTokenizer) -> WrappedPage:
    """Tokenize each text block and build the HTML with one span per token piece."""
    tokens: list[str] = []
    ids: list[int] = []
    raw: list[tuple[int, int]] = []
    # (start, end, order, key, text): a replacement of source[start:end]. At one position spans
    # close (order 0) before others open (order 1); of spans opening together (tokens made from
    # one source character, like ﬁ → f ##i…), the one reaching further opens first, so the
    # spans nest and each `</span>` closes the right one.
    edits = [(s, e, 0, (0, -1), text) for s, e, text in page.edits]
    for block, text in zip(page.blocks, page.texts()):
        enc = tokenizer.encode(text)
        for token, token_id, s, e in zip(enc.tokens, enc.ids, enc.starts, enc.ends):
            index = len(tokens)
            tokens.append(token)
            ids.append(token_id)
            if e <= s:  # a zero-width token (e.g. the second piece of a lower-cased İ)
                at = block.starts[s] if s < len(block.starts) else block.ends[-1]
                raw.append((at, at))
                edits.append((at, at, 1, (-at, index), SPAN_OPEN.format(index) + SPAN_CLOSE))
                continue
            raw.append((block.starts[s], block.ends[e - 1]))
            # One piece per text run the token touches.
            cuts = block.runs[bisect_right(block.runs, s) : bisect_left(block.runs, e)]
            for a, b in pairwise([s, *cuts, e]):
                start, end = block.starts[a], block.ends[b - 1]
                edits.append((start, start, 1, (-end, index), SPAN_OPEN.format(index)))
                edits.append((end, end, 0, (0, index), SPAN_CLOSE))
    edits.sort(key=lambda edit: edit[:4])
    out, done = [], 0
    for start, end, _, _, text in edits:
        out.append(page.source[done:start])
        out.append(text)
        done = max(done, end)
    out.append(page.source[done:])
    html = "".join(out)
    if html.startswith("\ufeff"):  # a BOM counts in raw offsets, but is not document text
        html = html[1:]
    return WrappedPage(html, tokens, ids, raw)


def normalize_box(
    box: tuple[float, float, float, float], frame: tuple[float, float, float, float]
) -> list[int]:
    """A CSS-pixel box as 0–1000 integers relative to `frame` (x0, y0, x1, y1), clamped."""
    fx0, fy0, fx1, fy1 = frame
    width, height = fx1 - fx0, fy1 - fy0

    def scale(v: float, origin: float, size: float) -> int:
        return min(1000, max(0, int(1000 * (v - origin) / size)))

    x0, y0, x1, y1 = box
    return [
        scale(x0, fx0, width),
        scale(y0, fy0, height),
        scale(x1, fx0, width),
        scale(y1, fy0, height),
    ]


def page_record(page: HtmlPage, wrapped: WrappedPage, result: RenderResult) -> dict:
    """The stored record of a rendered page: rendered tokens only, with all their positions."""
    _, _, doc_width, doc_height = result.layout
    frame = result.body
    if frame is None or frame[2] <= frame[0] or frame[3] <= frame[1]:
        frame = (0.0, 0.0, max(doc_width, 1.0), max(doc_height, 1.0))  # empty or no body
    keep = [i for i, box in enumerate(result.boxes) if any(box)]
    return {
        "encoding": page.encoding,
        "tokens": [wrapped.tokens[i] for i in keep],
        "input_ids": [wrapped.ids[i] for i in keep],
        "bbox": [normalize_box(result.boxes[i], frame) for i in keep],
        "px": [list(result.boxes[i]) for i in keep],
        "html_span": [list(page.span(*wrapped.raw[i])) for i in keep],
        "dropped": len(wrapped.tokens) - len(keep),
        "viewport_width": int(result.layout[0]),
        "page_width": float(doc_width),
        "page_height": float(doc_height),
        "body": list(frame),
    }


def localize_html(data: bytes, tokenizer: JapaneseTokenizer, browser: Browser) -> dict:
    """Localize one HTML document given as bytes (see the module docstring)."""
    text, encoding = decode_html(data)
    page = parse_html(text, encoding)
    wrapped = wrap_tokens(page, tokenizer)
    return page_record(page, wrapped, browser.render(wrapped.html, len(wrapped.tokens)))


@contextmanager
def rendering(name: str | Path) -> Iterator[None]:
    """Browser failures (a crash, a timeout, a page that hangs) as one clear error naming `name`."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        yield
    except (PlaywrightError, RenderTimeout) as e:
        reason = (str(e).strip().splitlines() or ["the browser failed"])[0]
        raise UserError(f"{name}: {reason}") from None


def localize_file(path: Path, tokenizer: JapaneseTokenizer, browser: Browser) -> dict:
    """Localize one HTML file; its record names it (page id = file name without suffix)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    record = {"page_id": path.stem, "category": "", "source": path.name}
    with rendering(path):
        record.update(localize_html(data, tokenizer, browser))
    return record


def show_page(
    path: Path,
    tokenizer: JapaneseTokenizer,
    out: Path,
    tiles: bool = False,
    config: LocalizeConfig | None = None,
) -> tuple[dict, list[Path]]:
    """Localize a page and save a screenshot with every stored token box drawn on it."""
    with Browser(config) as browser:
        record = localize_file(path, tokenizer, browser)  # leaves the page loaded
        tile_height = browser.viewport[1] if tiles else None
        with rendering(path):
            return record, browser.screenshot(record["px"], out, tile_height)
