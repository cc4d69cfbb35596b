"""Read a raw HTML page the way the browser will, keeping every text character's source position.

The localizer wraps tokens in `<span>`s by editing the raw HTML, and SHINRA annotations point
into the raw file as (line, column), so the page text must come with, for each character, the
range of raw characters it was decoded from (`&amp;` is one character from five). A small
scanner does this instead of a full HTML parser: it needs only tags, comments, entities and the
elements whose content is not page text, and it must agree with Chromium on those:

- raw-text elements (`<script>`, `<style>`, `<textarea>`, `<title>`, ...) end only at their own
  end tag, whatever they contain; their text is not page text;
- `<template>`, `<noscript>`, `<svg>`, `<math>` and `<select>` content is skipped too;
  `<noscript>` is also cut from the rendered page: with scripts off Chromium would lay it out,
  shifting what follows, though a reader with scripts on never sees it;
- inline elements (`<a>`, `<b>`, `<span>`, ruby bases, ...) continue the text flow, so a word
  split by markup is one word; every other tag, `<br>` and ruby annotations (`<rt>`, `<rp>`)
  end a block. Comments do not break words (`a<!---->b` renders as `ab`).

Lines are counted as the official SHINRA checker counts them, with Python's `str.splitlines`
(`\\n`, `\\r\\n`, `\\r`, and also U+2028, U+0085, ...), 0-based; columns in characters.
"""

from __future__ import annotations

import codecs
import html
import re
from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

INLINE = frozenset(
    "a abbr acronym b bdi bdo big cite code data del dfn em font i ins kbd label mark nobr q "
    "rb ruby s samp small span strike strong sub sup time tt u var wbr".split()
)
RAW_TEXT = frozenset("script style textarea title xmp iframe noembed noframes".split())
HIDDEN = RAW_TEXT | {"template", "noscript", "svg", "math", "select", "plaintext"}
_SPECIAL = HIDDEN | {"meta"}  # the tags the scanner does more with than end a block

_MARKUP = re.compile(
    r"""<!--(?:-?>|.*?(?:--!?>|\Z))           # comment (also the empty <!--> and <!--->)
      | <[!?][^>]*>?                          # doctype, CDATA, processing instruction
      | </?([A-Za-z][^\t\n\f\r />]*)          # a start or end tag: its name, then attributes:
        (?:[\t\n\f\r /]+                      #   separators
          | [^\t\n\f\r />][^\t\n\f\r />=]*     #   a name (it may start with =) and a value,
            (?:[\t\n\f\r ]*=[\t\n\f\r ]*          #   quoted (may hold >; open to the end of
               (?:"[^"]*(?:"|\Z)|'[^']*(?:'|\Z)|[^\t\n\f\r >]*))?  # file if unclosed) or bare
        )*>?
      | </[^A-Za-z>][^>]*>? | </>             # bogus end tags, ignored
    """,
    re.S | re.X,
)
_ENTITY = re.compile(r"&(?:#[0-9]+;?|#[xX][0-9A-Fa-f]+;?|[A-Za-z][A-Za-z0-9]*;?)")
NEWLINE = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")  # str.splitlines
_REFRESH = re.compile(r"""http-equiv[\t\n\f\r ]*=[\t\n\f\r ]*["']?[\t\n\f\r ]*refresh""", re.I)
_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([-\w.:]+)""", re.I)
# WHATWG encoding labels that Python names differently, or whose Python codec lacks characters
# browsers decode (NEC's ① in Shift_JIS and EUC-JP).
_ENCODING_ALIASES = {
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "windows-31j": "cp932", "ms_kanji": "cp932", "ms932": "cp932", "csshiftjis": "cp932",
    "euc-jp": "euc_jis_2004", "x-euc-jp": "euc_jis_2004", "cseucpkdfmtjapanese": "euc_jis_2004",
    "csiso2022jp": "iso2022_jp",
    "iso-8859-1": "cp1252", "latin1": "cp1252", "us-ascii": "cp1252", "ascii": "cp1252",
    "utf-16": "utf-8", "utf-16le": "utf-8", "utf-16be": "utf-8",
}  # fmt: skip


_BREAKS = np.array([ord(c) for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"], np.uint32)


def line_starts(source: str) -> list[int]:
    """Offsets where each line of `source` begins, lines counted as `str.splitlines` does."""
    # As NEWLINE.finditer would find them, on the characters as an array (pages have many lines).
    codes = np.frombuffer(source.encode("utf-32-le", "surrogatepass"), np.uint32)
    after = np.flatnonzero(np.isin(codes, _BREAKS)) + 1
    crlf = (codes[after - 1] == 13) & (np.append(codes, 0)[after] == 10)  # \r\n is one break
    return [0, *after[~crlf].tolist()]


def line_col(starts: list[int], offset: int) -> tuple[int, int]:
    """(0-based line, character column) of a character offset, given the `line_starts`."""
    line = bisect_right(starts, offset) - 1
    return line, offset - starts[line]


def decode_html(data: bytes) -> tuple[str, str]:
    """(text, encoding): a BOM, else `<meta charset>` in the first 1024 bytes, else UTF-8.

    Undecodable bytes become U+FFFD, as in the browser. A UTF-8 BOM stays in the text as
    U+FEFF, as Python's `open(encoding="utf-8")` (and so SHINRA's line offsets) keeps it.
    """
    if data.startswith(codecs.BOM_UTF8):
        return data.decode("utf-8", "replace"), "utf-8"
    for bom, name in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            return data[len(bom) :].decode(name, "replace"), name
    encoding = "utf-8"
    declared = _CHARSET.search(data[:1024])
    if declared:
        label = declared.group(1).decode("ascii", "replace").lower()
        label = _ENCODING_ALIASES.get(label, label)
        try:
            name = codecs.lookup(label).name
            b"a".decode(name, "replace")  # bytes-to-bytes codecs (base64, hex, ...): no text
            encoding = name
        except LookupError:
            pass  # an unknown label, or no text encoding: browsers fall back too
    return data.decode(encoding, "replace"), encoding


@dataclass
class Block:
    """The text of one block of the page flow, with each character's raw-HTML range.

    Characters are kept as pieces, not one by one: most text is literal, one character per raw
    character, so a piece is the whole text run; a character reference is a piece whose
    characters all come from the whole reference (`&amp;` → `&` from five).
    """

    chunks: list[str] = field(default_factory=list)  # the pieces' text, joined when tokenized
    # (characters, raw start, raw end, literal) of each piece, in order.
    pieces: list[tuple[int, int, int, bool]] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)  # where each uninterrupted text run begins
    length: int = 0  # characters

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def starts(self) -> list[int]:
        return char_ranges([self])[0].tolist()

    @property
    def ends(self) -> list[int]:
        return char_ranges([self])[1].tolist()

    def add(self, text: str, start: int, end: int, literal: bool) -> None:
        self.chunks.append(text)
        self.pieces.append((len(text), start, end, literal))
        self.length += len(text)


def char_ranges(blocks: list[Block]) -> tuple[np.ndarray, np.ndarray]:
    """Each character's raw range [start, end) (int64), the blocks' characters end to end."""
    rows = [piece for block in blocks for piece in block.pieces]
    length, start, end, literal = np.array(rows, np.int64).reshape(-1, 4).T
    piece = np.repeat(np.arange(len(rows)), length)
    offset = np.arange(len(piece)) - np.repeat(np.cumsum(length) - length, length)
    literal = literal[piece].astype(bool)
    starts = start[piece] + np.where(literal, offset, 0)
    return starts, np.where(literal, starts + 1, end[piece])


@dataclass
class HtmlPage:
    """A decoded page: its raw text, the text blocks a reader sees, and edits it needs."""

    source: str
    encoding: str
    blocks: list[Block]
    # (start, end, replacement) edits of the raw HTML for rendering (meta refresh, <noscript>).
    edits: list[tuple[int, int, str]]
    line_starts: list[int]

    def texts(self) -> list[str]:
        """Each block's text: what the localizer tokenizes, and what vocabulary training reads."""
        return [block.text for block in self.blocks]

    def line_col(self, offset: int) -> tuple[int, int]:
        """(0-based line, character column) of a raw character offset."""
        return line_col(self.line_starts, offset)

    def spans(self, raw: np.ndarray) -> np.ndarray:
        """SHINRA's (start line, start offset, end line, end offset) of raw ranges [start, end)
        (an (n, 2) int array): an end is the line and offset after the range's last character,
        an empty range starts and ends at its position."""
        lines = np.asarray(self.line_starts)
        filled = raw[:, 1] > raw[:, 0]
        last = np.where(filled, raw[:, 1] - 1, raw[:, 0])
        start_line = np.searchsorted(lines, raw[:, 0], "right") - 1
        end_line = np.searchsorted(lines, last, "right") - 1
        end_col = last - lines[end_line] + filled
        return np.stack([start_line, raw[:, 0] - lines[start_line], end_line, end_col], axis=1)

    def span(self, start: int, end: int) -> tuple[int, int, int, int]:
        """`spans` of one raw range [start, end)."""
        return tuple(self.spans(np.array([[start, end]]))[0].tolist())


def parse_html(source: str, encoding: str = "utf-8") -> HtmlPage:
    """Scan decoded HTML into text blocks with raw positions (see the module docstring)."""
    blocks: list[Block] = []
    edits: list[tuple[int, int, str]] = []
    block = Block()
    hidden: list[str] = []  # open elements whose content is skipped
    pos = 1 if source.startswith("\ufeff") else 0  # a BOM is not text (but counts in offsets)

    def end_block() -> None:
        nonlocal block
        if not block.text.isspace():
            blocks.append(block)
        block = Block()

    noscript_start = -1  # where the outermost open <noscript> began
    # Search from `pos` each time: after raw text (a <script> holding `i<n`) scanning resumes at
    # its end tag, never at a match that began inside the raw text and swallowed the end tag.
    while (match := _MARKUP.search(source, pos)) is not None:
        if not hidden and match.start() > pos:
            _add_text(block, source, pos, match.start())
        pos = match.end()
        name = (match.group(1) or "").lower()
        tag = match.group(0)
        if not name:  # comment, doctype, bogus markup: no effect on the flow
            continue
        if not hidden and name not in _SPECIAL:  # most tags: all they can do is end a block
            if block.length and name not in INLINE:
                end_block()
            continue
        closing = tag.startswith("</")
        opens = not closing and not tag.endswith("/>")
        # Even inside <noscript> (scripts are off), and in any spelling (`&#114;efresh`).
        if name == "meta" and _REFRESH.search(html.unescape(tag)):
            edits.append((match.start(), match.end(), "<meta data-layoutja-removed=refresh>"))
        foreign = bool(hidden) and hidden[0] in ("svg", "math")  # no raw text in SVG/MathML
        if block.length and not hidden and name not in INLINE:
            end_block()
        if closing:
            if name in hidden:  # an end tag closes its innermost element and all inside it
                del hidden[len(hidden) - 1 - hidden[::-1].index(name) :]
                if name == "noscript" and "noscript" not in hidden:
                    _remove(edits, noscript_start, match.end())
        elif name in RAW_TEXT and not foreign:
            # The browser reads raw text up to the matching end tag, whatever it holds.
            end = re.compile(rf"</{name}[\t\n\f\r />]", re.I).search(source, pos)
            pos = end.start() if end else len(source)
        elif name == "plaintext" and not foreign:
            pos = len(source)  # everything after <plaintext> is raw text
        elif name in HIDDEN and opens:
            if name == "noscript" and "noscript" not in hidden:
                noscript_start = match.start()
            hidden.append(name)
    if not hidden and pos < len(source):
        _add_text(block, source, pos, len(source))
    if "noscript" in hidden:  # never closed: with scripts on, it runs to the end
        _remove(edits, noscript_start, len(source))
    if block.length:
        end_block()
    return HtmlPage(source, encoding, blocks, edits, line_starts(source))


def _remove(edits: list[tuple[int, int, str]], start: int, end: int) -> None:
    """Cut source[start:end] from the rendered page (edits inside it are dropped with it)."""
    edits[:] = [e for e in edits if e[0] < start]
    edits.append((start, end, ""))


def _add_text(block: Block, source: str, start: int, end: int) -> None:
    """Append raw text source[start:end] (entities decoded, NULs dropped) to a block."""
    block.runs.append(block.length)
    raw = source[start:end]
    if "&" not in raw and "\0" not in raw:  # the common case: one character per character
        block.add(raw, start, end, True)
        return
    i = start
    for m in [*_ENTITY.finditer(source, start, end), None]:
        literal_end = m.start() if m else end
        for part in re.finditer("[^\0]+", source[i:literal_end]):  # the browser ignores NUL
            block.add(part.group(), i + part.start(), i + part.end(), True)
        if m is None:
            break
        block.add(html.unescape(m.group(0)), m.start(), m.end(), False)
        i = m.end()
    if block.length == block.runs[-1]:  # nothing was added (only NULs)
        block.runs.pop()
