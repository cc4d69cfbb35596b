"""The manifests of a localized directory, read and shown as one.

Every run of `layoutja localize` keeps a record of what it made (`Store`): the settings the data
was made with (tokenizer, vocabulary hash, Chromium, viewport, normalization), its parts and
its counts. A run without `--shard` keeps it in `manifest.json`. Shards (`--shard I/N`) keep
theirs in `manifest-0000I-of-0000N.json`, and `manifest.json` is then the directory's view of
them all, rewritten as each shard starts and finishes: the settings, the directory's one
`shard_count`, the counts summed, every part, and under `shards` each shard's counts and
whether it finished. Readers here take the records, never the view, so nothing is counted twice.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from layoutja.common import UserError
from layoutja.localize.sources import shard_tag

VIEW = "manifest.json"
_PER_RECORD = ("shard", "counts", "parts", "updated", "finished")  # not settings of the data


def is_view(manifest: dict) -> bool:
    """Whether a parsed `manifest.json` is the view of shard records (not a run's own record)."""
    return "shards" in manifest


def read_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the manifest: {e}") from None


def read_manifests(directory: Path) -> dict[Path, dict]:
    """The run records of a localized directory (or the manifest of a packed text corpus), by
    file: one per shard, the view left out; {} where it has none."""
    if not directory.is_dir():
        return {}
    records = {}
    for path in sorted(directory.glob("manifest*.json")):
        manifest = read_manifest(path)
        if not (path.name == VIEW and is_view(manifest)):
            records[path] = manifest
    return records


def tokenizer_name(manifest: dict) -> str | None:
    """The tokenizer a manifest names, as `resolve` takes it: an absolute directory, or a hub
    name pinned to the commit it was localized with (`owner/name@COMMIT`)."""
    name, revision = manifest.get("tokenizer"), manifest.get("tokenizer_revision")
    return f"{name}@{revision}" if name and revision else name


def manifest_facts(directory: Path) -> dict:
    """What the manifests of localized pages (or of a packed text corpus) say about the data,
    for a model card: source, pages (instances), tokens, tokenizer, vocabulary hash, Chromium."""
    manifests = list(read_manifests(directory).values())
    if not manifests:
        return {}
    first = {**manifests[0], "tokenizer": tokenizer_name(manifests[0])}
    keys = ("source", "tokenizer", "tokenizer_vocab_sha256", "chromium")
    facts = {key: first[key] for key in keys if first.get(key)}
    counts = [m.get("counts", m) for m in manifests]  # localized: "counts"; packed: top level
    for key in ("pages", "instances", "tokens"):
        if any(key in c for c in counts):
            facts[key] = sum(c.get(key, 0) for c in counts)
    return facts


def check_vocabulary(localized: Path, tokenizer_dir: Path, tokenizer: str) -> None:
    """Refuse pages localized with a vocabulary other than `tokenizer`'s (in `tokenizer_dir`):
    their ids would mean other tokens to the model and train silently into garbage. The error
    names both vocabularies and the command that localizes the pages with the right one."""
    from layoutja.text.tokenizer import vocab_sha256

    ours = vocab_sha256(tokenizer_dir)
    for path, manifest in read_manifests(localized).items():
        theirs = manifest.get("tokenizer_vocab_sha256")
        if theirs and theirs != ours:
            source = manifest.get("source", "PAGES")
            raise UserError(
                f"{localized}: these pages were localized with the tokenizer "
                f"{manifest.get('tokenizer', '?')} ({path.name}), whose vocabulary (vocab.txt "
                f"sha256 {theirs[:12]}) is not that of {tokenizer} ({ours[:12]}), the one used "
                f"here: their token ids would mean other tokens. Localize them again with "
                f"{tokenizer}: layoutja localize {source} --tokenizer {tokenizer} --out NEW_DIR"
            )


def directory_counts(records: dict[Path, dict]) -> dict:
    """Pages, tokens, dropped tokens and failed pages of every record, summed."""
    keys = ("pages", "tokens", "dropped_tokens", "failed")
    return {key: sum(m.get("counts", {}).get(key, 0) for m in records.values()) for key in keys}


@contextmanager
def view_lock(directory: Path) -> Iterator[None]:
    """Hold the lock on `manifest.json` of `directory`: shards that start or finish together
    take turns, so that each view holds every record and a record moves only once."""
    with open(directory / ".lock-manifest", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_view(directory: Path) -> dict:
    """Rewrite `manifest.json` as the view of the shard records in `directory`; returns it."""
    from layoutja.localize.store import atomic_write

    with view_lock(directory):
        records = read_manifests(directory)
        settings: dict = {}
        for manifest in records.values():  # every shard's settings agree where it matters
            settings.update({k: v for k, v in manifest.items() if k not in _PER_RECORD})
        # The tokenizer as one record names it (shards may name one vocabulary differently:
        # a hub name with its commit, or a directory without one).
        first = next(iter(records.values()), {})
        for key in ("tokenizer", "tokenizer_revision"):
            settings.pop(key, None)
            if key in first:
                settings[key] = first[key]
        view = {
            **settings,
            # One for the directory: a run with another is refused (`Store`).
            "shard_count": first.get("shard", [0, 1])[1],
            "counts": directory_counts(records),
            "shards": {
                shard_tag(m.get("shard", (0, 1))): {
                    "counts": m.get("counts", {}),
                    "finished": m.get("finished", False),
                }
                for m in records.values()
            },
            "parts": {name: s for m in records.values() for name, s in m["parts"].items()},
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        text = json.dumps(view, ensure_ascii=False, indent=1)
        atomic_write(directory / VIEW, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return view
