"""Plain-text corpora for text-only pretraining, packed into training instances once.

The usual BERT/ELECTRA pretraining format: one sentence per line, a blank line between
documents. The sentences of a document are tokenized and packed greedily into instances of at
most `max_tokens` tokens (a sentence longer than that is cut), and an instance never crosses a
document boundary. Instances go to Parquet parts (`source`, `input_ids`) that the data loader
streams as it streams localized pages (`windows`). Packing runs once: the manifest written
last records what was packed (files with sizes and times, vocabulary, length), so a rerun or a
resume on the same corpus reuses the parts.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from layoutja.common import Progress, UserError
from layoutja.localize.parts import with_page_lengths
from layoutja.localize.store import atomic_write
from layoutja.text.pagetext import TEXT_SUFFIXES
from layoutja.text.tokenizer import JapaneseTokenizer, vocab_sha256

BLOCK_LINES = 50_000  # lines tokenized at a time: bounded memory on corpora of any size


def text_files(path: Path) -> list[Path]:
    """A text file, or the .txt files under a directory (sorted)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise UserError(f"{path}: no localized Parquet parts and no .txt files")
        return files
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    return [path]


def pack(sentences: Iterable[list[int] | None], max_tokens: int) -> Iterator[tuple[int, list[int]]]:
    """(document number, instance) for a stream of sentences (token ids) in which None ends a
    document: whole sentences while they fit, long sentences cut, never across documents. Only
    the instance being filled is held, however long a document is."""
    instance: list[int] = []
    document = 0
    for sentence in sentences:
        if sentence is None:
            if instance:
                yield document, instance
                instance = []
                document += 1
            continue
        if instance and len(instance) + len(sentence) > max_tokens:
            yield document, instance
            instance = []
        instance += sentence
        while len(instance) > max_tokens:  # a sentence longer than an instance
            yield document, instance[:max_tokens]
            instance = instance[max_tokens:]
    if instance:
        yield document, instance


def read_lines(path: Path, skipped: list[str], bar: Progress | None = None) -> Iterator[str]:
    """The lines of a file, decoded as UTF-8 (a BOM dropped); an undecodable line is skipped
    and noted."""
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if bar is not None:
                    bar.update(len(raw))
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    yield line.removeprefix("\ufeff") if number == 1 else line
                except UnicodeDecodeError as e:
                    skipped.append(f"{path}:{number}: not UTF-8 ({e.reason})")
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None


def sentences(
    lines: Iterable[str], tokenizer: JapaneseTokenizer, workers: int
) -> Iterator[list[int] | None]:
    """Each line's token ids, None for a blank line (the end of a document)."""
    lines = iter(lines)
    while block := list(islice(lines, BLOCK_LINES)):
        texts = [line for line in block if line.strip()]
        encoded = tokenizer.encode_batch(texts, workers=workers)
        for line in block:
            yield next(encoded).ids if line.strip() else None


def _fingerprint(files: list[Path], tokenizer_dir: Path, max_tokens: int) -> dict:
    """What the packed parts depend on: the files as they are, the tokenizer, the length."""
    config = (tokenizer_dir / "tokenizer_config.json").read_bytes()
    return {
        "format": "layoutja-text-1",
        "files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
        "tokenizer_vocab_sha256": vocab_sha256(tokenizer_dir),
        "tokenizer_config_sha256": hashlib.sha256(config).hexdigest(),
        "max_tokens": max_tokens,
    }


def _packed(out: Path, fingerprint: dict) -> bool:
    """Whether `out`'s manifest (written last) records this fingerprint."""
    try:
        done = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return {k: done.get(k) for k in fingerprint} == fingerprint


def wait_until_packed(source: Path, tokenizer_dir: Path, out: Path, max_tokens: int) -> None:
    """For the other ranks of a multi-process run while the main one packs. Polling, not a
    barrier: packing a large corpus outlasts the process group's collective timeout."""
    fingerprint = _fingerprint(text_files(source), tokenizer_dir, max_tokens)
    while not _packed(out, fingerprint):
        time.sleep(5)


def pack_text_corpus(
    source: Path,
    tokenizer_dir: Path,
    out: Path,
    max_tokens: int,
    workers: int = 1,
    rows_per_part: int = 20_000,
    progress: bool = True,
) -> Path:
    """Tokenize and pack a text file (or a directory of them) into `out`; returns `out`.

    Does nothing when `out` already holds this corpus packed with this vocabulary and length.
    """
    files = text_files(source)
    fingerprint = _fingerprint(files, tokenizer_dir, max_tokens)  # before reading the files
    if _packed(out, fingerprint):
        return out
    manifest = out / "manifest.json"
    out.mkdir(parents=True, exist_ok=True)
    for stale in [manifest, *out.glob("part-*.parquet")]:
        stale.unlink(missing_ok=True)
    tokenizer = JapaneseTokenizer.from_pretrained(tokenizer_dir)
    schema = pa.schema([("source", pa.string()), ("input_ids", pa.list_(pa.int32()))])
    rows: dict[str, list] = {"source": [], "input_ids": []}
    parts = instances = tokens = 0
    skipped: list[str] = []

    def flush() -> None:
        nonlocal parts
        table = with_page_lengths(pa.table(rows, schema=schema))
        atomic_write(out / f"part-{parts:05d}.parquet", lambda p: pq.write_table(table, p))
        parts += 1
        rows["source"], rows["input_ids"] = [], []

    bar = Progress(sum(p.stat().st_size for p in files), "B", "packing text", progress,
                   scale=True)  # fmt: skip
    for path in files:
        name = path.relative_to(source) if source.is_dir() else path.name
        lines = read_lines(path, skipped, bar)
        for document, instance in pack(sentences(lines, tokenizer, workers), max_tokens):
            rows["source"].append(f"{name}:{document}")
            rows["input_ids"].append(instance)
            instances, tokens = instances + 1, tokens + len(instance)
            if len(rows["source"]) == rows_per_part:
                flush()
    bar.close()
    if rows["source"]:
        flush()
    for line in skipped[:10]:
        print(f"skipped {line}", file=sys.stderr)
    if not instances:
        raise UserError(f"{source}: no text to train on")
    summary = {"instances": instances, "tokens": tokens, "skipped_lines": len(skipped)}
    text = json.dumps({**fingerprint, **summary}, indent=1)
    atomic_write(manifest, lambda p: p.write_text(text, encoding="utf-8"))
    return out
