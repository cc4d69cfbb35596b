"""Read text corpora: plain-text files and the visible text of HTML pages, file by file.

A corpus of a million files must survive a few broken ones, so `iter_texts` reports a file it
cannot read (with the reason) through a callback and goes on; `read_text` is for the single-file
case, where the same problem is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import lxml.html

from layoutja.errors import UserError

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
TEXT_SUFFIXES = (".txt",)
# Elements whose text a reader never sees. (<noscript> is kept: scripts are off when rendering.)
INVISIBLE = ("script", "style", "template", "head")
_PARSER = lxml.html.HTMLParser(encoding="utf-8")


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


def html_visible_text(html: str) -> list[str]:
    """The non-empty lines of text a reader of the page sees (scripts, styles dropped)."""
    if not html.strip():
        return []
    # Bytes with an explicit encoding: lxml refuses str input that carries an XML declaration.
    root = lxml.html.document_fromstring(html.encode("utf-8"), parser=_PARSER)
    for element in list(root.iter(*INVISIBLE)):  # a list: dropping while iterating skips some
        element.drop_tree()
    lines = (line.strip() for line in root.text_content().splitlines())
    return [line for line in lines if line]


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
    """The lines of a text file, or the visible text lines of an HTML file."""
    text = read_text(path)
    if path.suffix.lower() in HTML_SUFFIXES:
        return html_visible_text(text)
    return text.splitlines()


def iter_texts(
    files: Iterable[Path], on_error: Callable[[Path, str], None]
) -> Iterator[tuple[Path, list[str]]]:
    """(file, lines) for each readable file; `on_error(file, reason)` for each unreadable one."""
    for path in files:
        try:
            yield path, file_texts(path)
        except UserError as e:
            on_error(path, str(e))
        except Exception as e:  # a parser failure on one page must not end the corpus
            on_error(path, f"{path}: {type(e).__name__}: {e}")
