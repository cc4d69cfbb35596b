"""The pages of a localization run: found under a SHINRA root, a directory or a glob, each
with the key it is stored under, and split into shards by a hash of that key, so that shards of
one corpus (`--shard I/N`, a SLURM array) share an output directory without overlap."""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from layoutja.common import UserError
from layoutja.text.pagetext import HTML_SUFFIXES


@dataclass(frozen=True)
class PageTask:
    path: Path
    source: str  # path relative to the input root, POSIX style: the page's key in the output
    page_id: str
    category: str  # SHINRA category (the directory above the file), "" for flat layouts


def find_pages(src: str) -> list[PageTask]:
    """The HTML pages under SRC: a SHINRA root (with `html/`), a directory, or a glob, sorted."""
    path = Path(src)
    if any(c in src for c in "*?["):
        files = [Path(p) for p in glob.glob(src, recursive=True)]
        root = Path(os.path.commonpath([p.parent for p in files])) if files else path.parent
    elif path.is_dir():
        root = path / "html" if (path / "html").is_dir() else path
        files = [p for p in root.rglob("*") if p.suffix.lower() in HTML_SUFFIXES]
    elif path.exists():
        root, files = path.parent, [path]
    else:
        raise UserError(f"{src}: no such file or directory")
    files = sorted(p for p in files if p.is_file() and p.suffix.lower() in HTML_SUFFIXES)
    if not files:
        raise UserError(f"{src}: no .html files found")
    tasks, keys = [], {}
    for p in files:
        rel = p.relative_to(root)
        category = _printable(rel.parent.as_posix()) if rel.parent != Path(".") else ""
        task = PageTask(p, _printable(rel.as_posix()), _printable(p.stem), category)
        # A key must name one file, or resuming would skip the other as done. Only a name with
        # undecodable bytes can take another's: byte 0xFF is written as the four characters
        # `\xff`, which a name may also hold.
        other = keys.setdefault(task.source, p)
        if other != p:
            raise UserError(
                f"{_bytes(other)} and {_bytes(p)} (their names as bytes) would both be stored "
                f"under the key {task.source}: rename one of them"
            )
        tasks.append(task)
    return tasks


def _bytes(path: Path) -> str:
    """A path as the bytes it is made of, so that a literal `\\` and an undecodable byte differ."""
    return repr(os.fsencode(path))


def page_task(path: Path) -> PageTask:
    """One page given alone: its name as a batch run stores it, and its category where it lies in
    the SHINRA layout (`html/<category>/<page_id>.html`), as a batch run over the SHINRA directory
    finds it."""
    shinra = path.parent.parent.name == "html"
    category = _printable(path.parent.name) if shinra else ""
    return PageTask(path, _printable(path.name), _printable(path.stem), category)


def _printable(name: str) -> str:
    """A file name as valid Unicode: undecodable bytes (surrogates from the OS) as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' → (I, N), 0 ≤ I < N."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected I/N, e.g. 0/8") from None
    if not 0 <= index < count:
        raise UserError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def shard_tag(shard: tuple[int, int]) -> str:
    """A shard's name in file names and in the manifest's view: `IIIII-of-NNNNN`."""
    return "{:05d}-of-{:05d}".format(*shard)


def in_shard(task: PageTask, shard: tuple[int, int]) -> bool:
    """Deterministic split by a hash of the page's relative path (stable when pages are added)."""
    index, count = shard
    digest = hashlib.blake2b(task.source.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count == index
