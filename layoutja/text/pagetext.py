"""Read text corpora: plain-text files and the page text of HTML files, file by file.

The page text of an HTML file is exactly what the localizer tokenizes: the file is decoded and
scanned by `layoutja.text.htmlpage` (the one reader of page text), and each text block is one
line. So `<noscript>`, `<textarea>`, `<svg>`, `<select>`, scripts and styles are not page text.

A corpus of a million files must survive a few broken ones, so `iter_texts` reports a file it
cannot read (with the reason) through a callback and goes on; `read_text` is for the single-file
case, where the same problem is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from layoutja.common import UserError
from layoutja.text.htmlpage import decode_html, parse_html

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
TEXT_SUFFIXES = (".txt",)


def read_text(path: Path) -> str:
    """The whole file as UTF-8 text; a clear UserError naming the file when that fails."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(
            f"{path}: not UTF-8 text (line {line}, byte offset {e.start}: {e.reason})"
        ) from None


def html_text(data: bytes) -> list[str]:
    """The page text of raw HTML bytes: one line per text block, as the localizer reads it."""
    return parse_html(*decode_html(data)).texts()


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus the text and HTML files under named directories (sorted).

    A path that does not exist is a UserError up front, before any work starts.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p
                for p in item.rglob("*")
                if p.is_file() and p.suffix.lower() in HTML_SUFFIXES + TEXT_SUFFIXES
            )
            if not found:
                raise UserError(f"{item}: directory holds no .txt or .html files")
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise UserError(f"{item}: no such file or directory")
    return files


def file_texts(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, or the page text blocks of an HTML file (decoded as the
    browser decodes it: BOM, `<meta charset>`, else UTF-8)."""
    if path.suffix.lower() not in HTML_SUFFIXES:
        return read_text(path).splitlines()
    try:
        return html_text(path.read_bytes())
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None


def iter_texts(
    files: Iterable[Path], on_error: Callable[[Path, str], None]
) -> Iterator[tuple[Path, list[str]]]:
    """(file, lines) for each readable file; `on_error(file, reason)` for each unreadable one."""
    for path in files:
        try:
            yield path, file_texts(path)
        except UserError as e:
            on_error(path, str(e))
        except Exception as e:  # a failure on one page must not end the corpus
            on_error(path, f"{path}: {type(e).__name__}: {e}")
