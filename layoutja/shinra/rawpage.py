"""A SHINRA page's raw HTML and its (line, offset) positions.

SHINRA points into a raw page by (0-based line, character offset) pairs, end exclusive, lines
counted as `str.splitlines` counts them. A page is decoded exactly as the localizer decodes it
(`decode_html`: BOM, else `<meta charset>`, else UTF-8), so the positions labeling, prediction
and scoring read are the ones the localized tokens carry, whatever the page's encoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from layoutja.common import UserError
from layoutja.text.htmlpage import NEWLINE, decode_html, line_col, line_starts

Position = tuple[int, int]  # (line, offset)


class RawPage:
    """The decoded text of a raw page, with positions ↔ character indexes and cuts between them."""

    def __init__(self, source: str, encoding: str = "utf-8", path: Path | None = None):
        self.source, self.encoding, self.path = source, encoding, path
        self.starts = line_starts(source)
        ends = np.array([*self.starts[1:], len(source)])
        breaks = [len(m.group()) for m in NEWLINE.finditer(source)]
        self._lengths = ends - np.array(self.starts) - np.array([*breaks, 0])

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
        return int(self._lengths[line])

    def index(self, position: Position) -> int | None:
        """The character index of a (line, offset) position, None if it is not on the page (an
        offset may be the line's length: the position just before its break)."""
        line, offset = position
        if not 0 <= line < len(self.starts) or not 0 <= offset <= self.line_length(line):
            return None
        return self.starts[line] + offset

    def indexes(self, lines: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """`index` of many positions at once (arrays of lines and offsets): -1 where a position
        is not on the page."""
        lines, offsets = np.asarray(lines, dtype=np.int64), np.asarray(offsets, dtype=np.int64)
        on_page = (lines >= 0) & (lines < len(self.starts))
        line = np.where(on_page, lines, 0)
        on_page &= (offsets >= 0) & (offsets <= self._lengths[line])
        return np.where(on_page, np.asarray(self.starts)[line] + offsets, -1)

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


class PageFinder:
    """A SHINRA page's file in an html/ directory, by page id and ENE: html/<ENE>/<id>.html,
    html/<id>.html (the leaderboard's), or html/<category>/<id>.html under any other category
    name (SHINRA 2022's English ones: `Airport`), found by one listing of the directory."""

    def __init__(self, html_dir: str | Path):
        self.html_dir = Path(html_dir)
        self._by_id: dict[str, Path] | None = None

    def find(self, page_id: str, ene: str) -> Path | None:
        for path in (self.html_dir / ene / f"{page_id}.html", self.html_dir / f"{page_id}.html"):
            if path.is_file():
                return path
        if self._by_id is None:
            self._by_id = {p.stem: p for p in sorted(self.html_dir.glob("*/*.html"), reverse=True)}
        return self._by_id.get(page_id)
