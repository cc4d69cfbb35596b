"""SHINRA's plain text of a page (`plain/<ENE>/<page_id>.txt`) and `text_offset`s into it.

SHINRA's plain text is the raw HTML with every comment and tag removed (their line breaks
too) and every character reference decoded: on the real sample (7 pages, 186 gold records with
both offsets) this rebuilds every plain file exactly, and maps every gold html_offset onto its
text_offset. The mapping is only used where it rebuilds the page's plain file exactly: a page
whose file differs (another tool made it, or a construct not seen in the sample) gets no
text_offset rather than a wrong one.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np

from layoutja.shinra.rawpage import Position, RawPage

# A comment, a tag, a character reference, or a run of text (a lone < or & is text).
_PIECE = re.compile(
    r"(<!--.*?(?:-->|\Z))|(<[^>]*>?)|(&(?:#[0-9]+|#[xX][0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);?)"
    r"|[^<&]+|[<&]",
    re.S,
)


class PlainText:
    """The plain text of a raw page, with html positions → plain positions."""

    def __init__(self, raw: RawPage):
        pieces, to_plain, length = [], np.empty(len(raw.source) + 1, dtype=np.int64), 0
        for m in _PIECE.finditer(raw.source):
            start, end = m.span()
            text = "" if m.group(1) or m.group(2) else m.group()
            if m.group(3):
                text = html.unescape(text)
            if text == m.group():  # text: each character is itself
                to_plain[start:end] = np.arange(length, length + end - start)
            else:  # removed or decoded: a position inside maps to where it begins
                to_plain[start:end] = length
            pieces.append(text)
            length += len(text)
        to_plain[len(raw.source)] = length
        self.page = RawPage("".join(pieces))
        self._raw, self._to_plain = raw, to_plain

    @classmethod
    def matching(cls, raw: RawPage, path: Path) -> PlainText | None:
        """The plain text of `raw` if it is exactly SHINRA's file at `path`, else None."""
        try:
            given = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        plain = cls(raw)
        return plain if plain.page.source == given else None

    def offset(self, start: Position, end: Position) -> dict | None:
        """The text_offset of the raw range start–end, None when it is not on the page."""
        a, b = self._raw.index(start), self._raw.index(end)
        if a is None or b is None:
            return None
        (l0, c0), (l1, c1) = (self.page.position(int(self._to_plain[i])) for i in (a, b))
        return {"start": {"line_id": l0, "offset": c0}, "end": {"line_id": l1, "offset": c1},
                "text": self.page.text((l0, c0), (l1, c1))}  # fmt: skip
