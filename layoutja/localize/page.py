"""Localize one page: tokenize its text, wrap each subword in a span, render, read the boxes.

    raw bytes ─► decode_html ─► parse_html (text blocks, raw positions) ─► wrap_tokens
              ─► Browser.render (one evaluate) ─► page_arrays (normalize, drop unrendered)

Each block's text is tokenized as one string, so a word split by inline markup is one word. A
token is wrapped by editing the raw HTML around its characters; a token whose characters lie in
several text runs (`<b>東</b>京`) gets one span per run, all with the same `data-layoutja`
index, and the browser script unions their boxes. Past tokenizing, a page's work is done on
whole-page numpy arrays, not per token in Python.

Normalized boxes follow the published pipeline: relative to `document.body`'s rect (as the
configured geometry lays the page out and measures it: see `LocalizeConfig.geometry`),
`int(1000 * (x - body.x0) / body.width)` (same for y with the height), clamped to 0–1000. The
CSS-pixel boxes are stored too, so other normalizations (e.g. per training window, which keeps
vertical resolution on long pages) can be computed later without rendering again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, compress
from pathlib import Path

import numpy as np

from layoutja.common import UserError
from layoutja.localize.browser import (  # SPAN_OPEN is re-exported with SPAN_CLOSE
    SPAN_CLOSE,
    SPAN_OPEN,  # noqa: F401
    Browser,
    Markup,
    RenderResult,
    RenderTimeout,
)
from layoutja.localize.config import LocalizeConfig
from layoutja.localize.sources import page_task
from layoutja.text.htmlpage import HtmlPage, char_ranges, decode_html, parse_html
from layoutja.text.tokenizer import JapaneseTokenizer

_CLOSE = -1  # the op code of SPAN_CLOSE: Markup.texts[0]


@dataclass
class WrappedPage:
    """A page's tokens with their raw-HTML ranges, and the markup that wraps every token."""

    markup: Markup
    tokens: list[str]
    ids: np.ndarray  # int32
    raw: np.ndarray  # int64, shape (n, 2): [start, end) character range in the raw file

    @property
    def html(self) -> str:
        return self.markup.html


def _flat(lists: Iterator[list[int]]) -> np.ndarray:
    return np.fromiter(chain.from_iterable(lists), np.int64)


def wrap_tokens(page: HtmlPage, tokenizer: JapaneseTokenizer) -> WrappedPage:
    """Tokenize each text block and build the markup with one span per token piece."""
    blocks = page.blocks
    encodings = [tokenizer.encode(text) for text in page.texts()]
    tokens = list(chain.from_iterable(enc.tokens for enc in encodings))
    ids = np.fromiter(chain.from_iterable(enc.ids for enc in encodings), np.int32, len(tokens))
    # The page as flat arrays, blocks laid end to end: each character's raw range, each text
    # run's first character, each token's characters [s, e) and the end of its block.
    lengths = np.fromiter((block.length for block in blocks), np.int64, len(blocks))
    base = np.cumsum(lengths) - lengths
    char_start, char_end = char_ranges(blocks)
    runs = _flat([first + r for r in block.runs] for first, block in zip(base.tolist(), blocks))
    per_block = np.fromiter((len(enc.tokens) for enc in encodings), np.int64, len(blocks))
    s = _flat(enc.starts for enc in encodings) + np.repeat(base, per_block)
    e = _flat(enc.ends for enc in encodings) + np.repeat(base, per_block)
    # Indices are clipped where np.where evaluates a side that the condition then discards.
    last = len(char_start) - 1
    first_char, last_char = char_start[np.minimum(s, last)], char_end[np.maximum(e - 1, 0)]
    # A zero-width token (e.g. the second piece of a lower-cased İ) sits at its character, or
    # after the block's last one, as an empty span.
    empty = e <= s
    inside = s < np.repeat(base + lengths, per_block)
    at = np.where(inside, first_char, char_end[np.maximum(s - 1, 0)])
    raw = np.stack([np.where(empty, at, first_char), np.where(empty, at, last_char)], axis=1)
    # One piece per text run the token touches: the runs starting strictly inside it cut it.
    cut = np.searchsorted(runs, s, "right")
    pieces = np.where(empty, 1, np.searchsorted(runs, e, "left") - cut + 1)
    owner = np.repeat(np.arange(len(tokens)), pieces)
    k = np.arange(len(owner)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    run_before = runs[np.clip(cut[owner] + k - 1, 0, len(runs) - 1)]
    run_after = runs[np.clip(cut[owner] + k, 0, len(runs) - 1)]
    a = np.where(k == 0, s[owner], run_before)
    b = np.where(k == pieces[owner] - 1, e[owner], run_after)
    start = np.where(empty[owner], at[owner], char_start[np.minimum(a, last)])
    end = np.where(empty[owner], at[owner], char_end[np.maximum(b - 1, 0)])
    markup = _markup(page, owner, start, end, empty[owner])
    return WrappedPage(markup, tokens, ids, raw)


def _markup(
    page: HtmlPage, owner: np.ndarray, start: np.ndarray, end: np.ndarray, empty: np.ndarray
) -> Markup:
    """The sorted edits of the raw HTML: the page's own, and a span around each token piece.

    At one position spans close (order 0) before others open (order 1); of spans opening
    together (tokens made from one source character, like ﬁ → f ##i…), the one reaching further
    opens first, so the spans nest and each `</span>` closes the right one. A zero-width token's
    empty span sorts as one opening and gets its `</span>` right after it.
    """
    edits = list(page.edits)
    if page.source.startswith("\ufeff"):  # a BOM counts in raw offsets, but is not document text
        edits.insert(0, (0, 1, ""))
    n, closing = len(edits), ~empty
    m = int(closing.sum())
    zeros = np.zeros(n + len(start) + m, np.int64)
    at = np.concatenate([[edit[0] for edit in edits], start, end[closing]]).astype(np.int64)
    until = np.concatenate([[edit[1] for edit in edits], start, end[closing]]).astype(np.int64)
    order, reach = zeros.copy(), zeros.copy()
    order[n : n + len(start)] = 1
    reach[n : n + len(start)] = -end
    code = np.concatenate([-2 - np.arange(n), owner, np.full(m, _CLOSE)])
    rank = np.concatenate([np.full(n, -1), owner, owner[closing]])
    sort = np.lexsort((rank, reach, order, until, at))
    empty_open = np.concatenate([np.zeros(n, bool), empty, np.zeros(m, bool)])[sort]
    rows = np.repeat(sort, 1 + empty_open)
    ops = np.stack([at[rows], until[rows], code[rows]], axis=1)
    ops[1:, 2][rows[1:] == rows[:-1]] = _CLOSE  # the second copy ends the empty span
    return Markup(page.source, ops.astype(np.int32), [SPAN_CLOSE, *(edit[2] for edit in edits)])


def normalize_boxes(boxes: np.ndarray, frame: tuple[float, float, float, float]) -> np.ndarray:
    """CSS-pixel boxes (n, 4) as 0–1000 integers relative to `frame` (x0, y0, x1, y1), clamped."""
    fx0, fy0, fx1, fy1 = frame
    origin = np.array([fx0, fy0, fx0, fy0])
    size = np.array([fx1 - fx0, fy1 - fy0, fx1 - fx0, fy1 - fy0])
    # The published `int(1000 * (v - origin) / size)`: the same float64 steps, then truncation.
    return np.clip(np.trunc(1000 * (boxes - origin) / size), 0, 1000).astype(np.int16)


def page_arrays(page: HtmlPage, wrapped: WrappedPage, result: RenderResult) -> dict:
    """The stored record of a rendered page, rendered tokens only, per-token values as arrays."""
    _, _, doc_width, doc_height = result.layout
    frame = result.body
    if frame is None or frame[2] <= frame[0] or frame[3] <= frame[1]:
        frame = (0.0, 0.0, max(doc_width, 1.0), max(doc_height, 1.0))  # empty or no body
    keep = result.array.any(axis=1)
    boxes = result.array[keep]
    return {
        "encoding": page.encoding,
        "tokens": list(compress(wrapped.tokens, keep.tolist())),
        "input_ids": wrapped.ids[keep],
        "bbox": normalize_boxes(boxes, frame),
        "px": boxes,
        "html_span": page.spans(wrapped.raw[keep]).astype(np.int32),
        "dropped": len(wrapped.tokens) - len(boxes),
        "viewport_width": int(result.layout[0]),
        "page_width": float(doc_width),
        "page_height": float(doc_height),
        "body": list(frame),
    }


class NotText(UserError):
    """A file that is not a page of text: binary data, or text in an encoding it does not say."""


def prepare_page(
    data: bytes, tokenizer: JapaneseTokenizer, config: LocalizeConfig | None = None
) -> tuple[HtmlPage, WrappedPage]:
    """The part of localizing that needs no browser: decode, scan, tokenize, wrap.

    With `config`, a file that is not text is refused (`NotText`): its decoded characters hold
    a NUL, or more than `max_undecodable` of them are U+FFFD, or of its tokens `max_unknown`
    are [UNK]. Checked before tokenizing where possible: garbage is slow to tokenize.
    """
    text, encoding = decode_html(data)
    if config is not None:
        if nul := text.count("\x00"):
            raise NotText(f"not text: {nul} NUL character(s), as in binary files")
        share = text.count("\ufffd") / len(text) if text else 0.0
        if share > config.max_undecodable:
            raise NotText(
                f"not text: {share:.0%} of its characters are bytes that {encoding} cannot "
                f"decode (more than max_undecodable {config.max_undecodable:g})"
            )
    page = parse_html(text, encoding)
    wrapped = wrap_tokens(page, tokenizer)
    if config is not None and len(wrapped.ids):
        share = float(np.mean(wrapped.ids == tokenizer.unk_id))
        if share > config.max_unknown:
            raise NotText(
                f"not text: {share:.0%} of its {len(wrapped.ids)} tokens are "
                f"{tokenizer.unk_token} (more than max_unknown {config.max_unknown:g})"
            )
    return page, wrapped


def render_page(page: HtmlPage, wrapped: WrappedPage, browser: Browser) -> dict:
    """Render a prepared page and return its record; per-token values as numpy arrays."""
    return page_arrays(page, wrapped, browser.render(wrapped.markup, len(wrapped.tokens)))


def localize_arrays(data: bytes, tokenizer: JapaneseTokenizer, browser: Browser) -> dict:
    """Localize one HTML document given as bytes; per-token values as numpy arrays."""
    return render_page(*prepare_page(data, tokenizer), browser)


def localize_html(data: bytes, tokenizer: JapaneseTokenizer, browser: Browser) -> dict:
    """Localize one HTML document given as bytes (see the module docstring), as plain lists."""
    return _lists(localize_arrays(data, tokenizer, browser))


def _lists(record: dict) -> dict:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in record.items()}


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
    """Localize one HTML file; its record names it and gives its category (`page_task`). A file
    that is not text (`prepare_page`, by the browser's setting) is refused, as a batch does."""
    try:
        prepared = prepare_page(path.read_bytes(), tokenizer, browser.config)
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    except NotText as e:
        raise UserError(f"{path}: {e}") from None
    task = page_task(path)
    record = {"page_id": task.page_id, "category": task.category, "source": task.source}
    with rendering(path):
        record.update(_lists(render_page(*prepared, browser)))
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
