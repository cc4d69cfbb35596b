"""A SHINRA page's raw HTML and its (line, offset) positions.

SHINRA points into a raw page by (0-based line, character offset) pairs, end exclusive, lines
counted as `str.splitlines` counts them. A page is decoded exactly as the localizer decodes it
(`decode_html`: BOM, else `<meta charset>`, else UTF-8), so the positions labeling, prediction
and scoring read are the ones the localized tokens carry, whatever the page's encoding.
"""

from __future__ import annotations

from pathlib import Path

from layoutja.common import UserError
from layoutja.text.htmlpage import NEWLINE, decode_html, line_col, line_starts

Position = tuple[int, int]  # (line, offset)


class RawPage:
    """The decoded text of a raw page, with positions ↔ character indexes and cuts between them."""

    def __init__(self, source: str, encoding: str = "utf-8", path: Path | None = None):
        self.source, self.encoding, self.path = source, encoding, path
        self.starts = line_starts(source)

    @classmethod
    def read(cls, path: str | Path) -> RawPage:
        """The page at `path`; a file that cannot be read is a UserError naming it."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"{path}: cannot read the page: {e.strerror or e}") from None
        return cls(*decode_html(data), path=path)

    def line_length(self, line: int) -> int:
        """Characters of a line, its break excluded."""
        start = self.starts[line]
        if line + 1 == len(self.starts):
            return len(self.source) - start
        end = self.starts[line + 1]
        return end - start - (2 if self.source[max(start, end - 2) : end] == "\r\n" else 1)

    def index(self, position: Position) -> int | None:
        """The character index of a (line, offset) position, None if it is not on the page (an
        offset may be the line's length: the position just before its break)."""
        line, offset = position
        if not 0 <= line < len(self.starts) or not 0 <= offset <= self.line_length(line):
            return None
        return self.starts[line] + offset

    def position(self, index: int) -> Position:
        """The (line, offset) of a character index (0 ≤ index ≤ len(source))."""
        if not 0 <= index <= len(self.source):
            raise ValueError(f"index {index} outside the page (0–{len(self.source)})")
        return line_col(self.starts, index)

    def text(self, start: Position, end: Position) -> str | None:
        """The raw characters from start to end, each line break as `\\n`; None when a position is
        not on the page or end comes before start."""
        a, b = self.index(start), self.index(end)
        if a is None or b is None or b < a:
            return None
        return NEWLINE.sub("\n", self.source[a:b])
