"""The output of a localization run: Parquet parts, a journal, failures and a manifest.

A run over a million pages must never lose finished work, and a reader must never see a
half-written file:

- every finished page is appended at once to a journal (an Arrow IPC stream, written unbuffered),
  so `kill -9` loses only the pages in flight; a torn last record is ignored on recovery;
- every `pages_per_part` pages the journal becomes a Parquet part, written under a temporary
  name and renamed into place (atomic), and the journal starts again;
- `failures.jsonl` gets one line per page that could not be localized, with the reason (it is
  there, empty, from the start);
- the manifest records what the data was made with (tokenizer, its vocabulary hash, Chromium
  version, viewport, normalization, geometry) and the counts, and is rewritten atomically after
  every part.

A run that starts where another stopped moves the parts it cannot read to `damaged/` (their
pages are then not done), recovers the journal into a part, then skips every page found in the
parts (and, unless asked to retry them, in failures). Shards of one corpus (`--shard I/N`) may
share an output directory: each has its own file names, `manifest.json` is the view of them all
(`layoutja.localize.manifest`), and a run of another shard count is refused. An error writing
(a full disk) stops the run with one line; what was stored stays.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from layoutja.common import UserError, human_bytes
from layoutja.localize.manifest import VIEW, read_manifest, read_manifests, view_lock, write_view
from layoutja.localize.parts import DamagedPart, read_part, with_page_lengths
from layoutja.localize.sources import shard_tag

FORMAT = "layoutja-localized/1"
DAMAGED = "damaged"  # where a rerun moves the parts it cannot read
SCHEMA = pa.schema(
    [
        ("page_id", pa.string()),
        ("category", pa.string()),
        ("source", pa.string()),  # path relative to the input root: the key for resuming
        ("encoding", pa.string()),
        ("tokens", pa.list_(pa.string())),
        ("input_ids", pa.list_(pa.int32())),
        ("bbox", pa.list_(pa.list_(pa.int16(), 4))),  # normalized 0-1000: x0, y0, x1, y1
        ("px", pa.list_(pa.list_(pa.float32(), 4))),  # CSS pixels in the document
        ("html_span", pa.list_(pa.list_(pa.int32(), 4))),  # start line, offset, end line, offset
        ("dropped", pa.int32()),  # tokens not rendered (all-zero box), not stored
        ("viewport_width", pa.int32()),  # layout width measured
        ("page_width", pa.float32()),
        ("page_height", pa.float32()),
        ("body", pa.list_(pa.float32(), 4)),  # the frame boxes were normalized against
    ]
)
_BOXES = {"bbox": np.int16, "px": np.float32, "html_span": np.int32}  # 4 values per token
# Run settings that must match for pages to be mixed in one output directory.
MUST_MATCH = ("format", "tokenizer_vocab_sha256", "viewport", "normalization", "geometry")
# What an output written before a setting existed was made with: before `geometry`, every page
# was laid out without a scrollbar and measured by its own body, the `clean` geometry.
BEFORE_SETTING = {"geometry": "clean"}


def record_batch(record: dict) -> pa.RecordBatch:
    """One page as a one-row batch of `SCHEMA`; per-token values are lists or numpy arrays.

    Built from flat arrays, not with `from_pylist`, which would walk every token's box in Python.
    """
    columns = []
    for field in SCHEMA:
        value = record[field.name]
        if field.name in _BOXES:
            flat = pa.array(np.asarray(value, _BOXES[field.name]).reshape(-1))
            values = pa.FixedSizeListArray.from_arrays(flat, 4)
        elif field.name == "input_ids":
            values = pa.array(np.asarray(value, np.int32))
        elif field.name == "tokens":
            values = pa.array(value, pa.string())
        else:  # one value per page
            columns.append(pa.array([value], field.type))
            continue
        offsets = pa.array([0, len(values)], pa.int32())
        columns.append(pa.ListArray.from_arrays(offsets, values, type=field.type))
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def atomic_write(path: Path, write) -> None:
    """Write to a temporary name, flush it to disk, rename: readers see all of it or nothing."""
    tmp = path.with_name(f".tmp-{path.name}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: give back the space it took
        raise
    os.replace(tmp, path)


def _lock(path: Path, shard: tuple[int, int], out: Path):
    """Hold an exclusive lock on this shard of `out` for the life of the process."""
    handle = open(path, "w")  # noqa: SIM115 - held open on purpose, released when it closes
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UserError(
            f"{out}: another run is writing shard {shard[0]}/{shard[1]} here; wait for it or "
            "use another --out"
        ) from None
    return handle


class Store:
    """The files of one shard of a run in `out` (see the module docstring)."""

    def __init__(
        self,
        out: Path,
        shard: tuple[int, int],
        settings: dict,
        pages_per_part: int = 500,
        retry_failed: bool = False,
    ):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        index, count = shard
        self.tag = shard_tag(shard)
        tag = "" if count == 1 else f"-{self.tag}"
        # A run without shards keeps its record in manifest.json; shards keep theirs beside the
        # view of them all (`layoutja.localize.manifest`).
        self.manifest_path = out / (VIEW if count == 1 else f"manifest-{self.tag}.json")
        self.failures_path = out / f"failures{tag}.jsonl"
        self.journal_path = out / f"journal-{self.tag}.arrows"
        self.pages_per_part = pages_per_part
        self.settings = {"format": FORMAT, **settings, "shard": [index, count]}
        self.parts: dict[str, dict] = {}
        self.finished = False  # every page of the shard tried: set by `close`
        self.failed: dict[str, dict] = {}
        self.done: set[str] = set()
        self.damaged: list[dict] = []  # parts moved aside at the start: part, moved_to, reason
        self._batches: list[pa.RecordBatch] = []
        self._journal = None
        self._lock = _lock(out / f".lock-{self.tag}", shard, out)
        try:
            self._start(retry_failed)
        except BaseException:
            self._lock.close()  # a refused start leaves the shard free at once
            raise

    # --- start-up -------------------------------------------------------------------------
    def _start(self, retry_failed: bool) -> None:
        out = self.out
        # The shard count and settings are checked and the record claimed in one turn of the
        # view's lock: a run starting beside this one sees the record.
        with view_lock(out):
            records = read_manifests(out)
            self._check_shard_count(records)
            self._check_settings(records)
            for stale in [*out.glob(f".tmp-*{self.tag}*"),
                          out / f".tmp-{self.manifest_path.name}"]:  # fmt: skip
                stale.unlink(missing_ok=True)  # a write that was killed before its rename
            if not self.manifest_path.exists():
                self.write_manifest()
        self.failed = self._read_failures(retry_failed)
        with self._writing("the failures list", self.failures_path):
            self.failures_path.touch()  # there even when no page fails, as the docs list it
        self._recover_parts()
        self._recover_journal()
        self.write_manifest()
        self._view()  # the directory's view counts this shard from its start

    def _check_shard_count(self, records: dict[Path, dict]) -> None:
        """Refuse a shard count other than that of the records here. Pages go to shards by a
        hash of their key modulo the count, so runs of two counts would share pages: each would
        localize some that the other holds (at once, both would store them)."""
        index, count = self.settings["shard"]
        for path, old in records.items():
            theirs = old.get("shard", [0, 1])[1]
            if theirs != count:
                this = f"--shard {index}/{count}" if count > 1 else "without --shard"
                raise UserError(
                    f"{self.out}: its pages are localized {_split(theirs)} ({path.name}), "
                    f"this run {this}; a directory has one shard count: localize "
                    f"{_split(theirs)} here, or use another --out"
                )

    def _check_settings(self, records: dict[Path, dict]) -> None:
        """Refuse settings other than those of the pages already here (any shard's)."""
        for path, old in records.items():
            for key in MUST_MATCH:
                made = old.get(key, BEFORE_SETTING.get(key))
                ours = self.settings.get(key, BEFORE_SETTING.get(key))
                if made != ours:
                    same = f", or --config localize/{made}.yaml" if key == "geometry" else ""
                    raise UserError(
                        f"{path}: this output was made with {key}={made!r}, not {ours!r}; "
                        f"use another --out{same}"
                    )
        old = records.get(self.manifest_path)
        if old is not None:  # this shard's own record: its parts and Chromium so far
            self.parts = old.get("parts", {})
            if old.get("chromium"):
                self.settings.setdefault("chromium", old["chromium"])

    def _read_failures(self, retry: bool) -> dict[str, dict]:
        failed = {}
        if self.failures_path.exists():
            text = self.failures_path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # a line torn by a kill: end it
                with open(self.failures_path, "a", encoding="utf-8") as f:
                    f.write("\n")
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                    failed[entry["source"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by a kill
        if retry and failed:
            self.failures_path.write_text("", encoding="utf-8")
            return {}
        return failed

    def _recover_parts(self) -> None:
        """Done: every page in this shard's parts (a directory has one shard count, so no other
        shard's parts hold its pages). The parts as they are on disk: one may have been written
        after the last manifest, or deleted by hand since. A part that cannot be read is moved
        to `damaged/`, so that its pages count as not done and are localized again."""
        known, self.parts = self.parts, {}
        for part in self._part_files():
            try:
                self.done.update(read_part(part, ["source"]).column("source").to_pylist())
                self.parts[part.name] = known.get(part.name) or _part_stats(read_part(part))
            except DamagedPart as e:
                aside = self.out / DAMAGED / f"{time.strftime('%Y%m%dT%H%M%S')}-{part.name}"
                with self._writing("a damaged part aside", aside):
                    aside.parent.mkdir(exist_ok=True)
                    os.replace(part, aside)
                pages = known.get(part.name, {}).get("pages")
                self.damaged.append({"part": str(part), "moved_to": str(aside),
                                     "reason": e.reason, "pages": pages})  # fmt: skip

    def _recover_journal(self) -> None:
        if not self.journal_path.exists():
            return
        batches = []
        try:
            with pa.OSFile(str(self.journal_path)) as f, pa.ipc.open_stream(f) as reader:
                for batch in reader:
                    batches.append(batch)
        except (pa.ArrowInvalid, OSError):
            pass  # a torn tail (the page being written when the run was killed)
        self._batches = [b for b in batches if _source(b) not in self.done]
        self.done.update(_source(b) for b in self._batches)
        self._flush_part()
        self.journal_path.unlink(missing_ok=True)

    @contextmanager
    def _writing(self, what: str, path: Path) -> Iterator[None]:
        """An error writing the output (a full disk) as one line: what was being written, the
        free space; the pages stored so far stay (in parts, or the journal a rerun recovers)."""
        try:
            yield
        except OSError as e:
            reason = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0]
            free = human_bytes(shutil.disk_usage(self.out).free)
            raise UserError(
                f"{path}: cannot write {what}: {reason} ({free} free there); the "
                f"{self.counts()['pages']} page(s) stored so far are kept: make room and run "
                "the same command again"
            ) from None

    # --- while running --------------------------------------------------------------------
    def add(self, batch: pa.RecordBatch) -> None:
        """Store one localized page (a `record_batch`) durably (journal) and roll a part when
        enough are in."""
        with self._writing("the journal", self.journal_path):
            if self._journal is None:
                # Unbuffered: each page reaches the OS as it is written (kill -9 loses only the
                # pages in flight), and a failed write (a full disk) leaves nothing to flush.
                self._sink = open(self.journal_path, "wb", buffering=0)  # noqa: SIM115 - _roll
                self._journal = pa.ipc.new_stream(self._sink, SCHEMA)
            self._journal.write_batch(batch)
        self._batches.append(batch)
        self.done.add(_source(batch))
        if len(self._batches) >= self.pages_per_part:
            self._roll()

    def fail(self, source: str, reason: str) -> None:
        entry = {"source": source, "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with self._writing("the failures list", self.failures_path):
            with open(self.failures_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.failed[source] = entry

    def close(self) -> dict:
        """Write what is left as a part and the final manifest, marked finished; release the
        shard. Returns the directory's manifest (with shards: the view of them all)."""
        self.finished = True
        self._roll()
        self._lock.close()
        return self._view() or read_manifest(self.manifest_path)

    def _view(self) -> dict | None:
        """Rewrite the view of the shards' records, where the records are shards'."""
        if self.manifest_path.name == VIEW:
            return None
        with self._writing("the manifest", self.out / VIEW):
            return write_view(self.out)

    def _roll(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._sink.close()
            self._journal = None
        self._flush_part()
        self.journal_path.unlink(missing_ok=True)
        self.write_manifest()

    def _flush_part(self) -> None:
        if not self._batches:
            return
        seq = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in self._part_files()), default=-1)
        path = self.out / f"part-{self.tag}-{seq:05d}.parquet"
        table = with_page_lengths(pa.Table.from_batches(self._batches, schema=SCHEMA))

        def write(tmp: Path) -> None:
            # No dictionary encoding: boxes and positions hardly repeat, so their dictionaries
            # only overflow. Without them a part is 38% smaller and a third faster to write.
            pq.write_table(table, tmp, compression="zstd", use_dictionary=False)

        with self._writing("a part", path):
            atomic_write(path, write)
        self.parts[path.name] = _part_stats(table)
        self._batches = []

    def _part_files(self) -> list[Path]:
        return sorted(self.out.glob(f"part-{self.tag}-*.parquet"))

    def counts(self) -> dict:
        """Pages, tokens and dropped tokens in the parts, and failed pages, of this shard."""
        stats = list(self.parts.values())
        return {
            "pages": sum(s["pages"] for s in stats) + len(self._batches),
            "tokens": sum(s["tokens"] for s in stats)
            + sum(_part_stats(b)["tokens"] for b in self._batches),
            "dropped_tokens": sum(s["dropped_tokens"] for s in stats)
            + sum(_part_stats(b)["dropped_tokens"] for b in self._batches),
            "failed": len(self.failed),
        }

    def write_manifest(self) -> None:
        manifest = {
            **self.settings,
            "counts": self.counts(),
            "parts": self.parts,
            "finished": self.finished,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        text = json.dumps(manifest, ensure_ascii=False, indent=1)
        with self._writing("the manifest", self.manifest_path):
            atomic_write(self.manifest_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _split(count: int) -> str:
    return "without --shard" if count == 1 else f"with --shard I/{count}"


def _source(batch: pa.RecordBatch) -> str:
    return batch.column("source")[0].as_py()


def _part_stats(table: pa.Table | pa.RecordBatch) -> dict:
    return {
        "pages": table.num_rows,
        "tokens": pc.sum(pc.list_value_length(table.column("tokens"))).as_py() or 0,
        "dropped_tokens": pc.sum(table.column("dropped")).as_py() or 0,
    }
