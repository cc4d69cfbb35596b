"""Pretraining data paths: windows/s, memory and disk of layoutja's shuffle against libraries'.

Each path turns localized pages (`layoutja localize` Parquet parts) into windows of up to
`--max-length` tokens ([CLS] + 510 + [SEP], overlapping by `--margin`), an `input_ids` array and
an (n, 4) `bbox` array each, in a seeded shuffle: reading, shuffling and cutting, no model.
Paths the running interpreter lacks are skipped, with the reason:

- *layoutja stream*: `windows.WindowStream` (up to commit 145ae66): parts shuffled and dealt to
  ranks, windows shuffled within 4 parts; DataLoader workers take every n-th window;
- *layoutja order*: `pretrain.order` (from e5754ea): one global order whatever the world size,
  windows of `--shuffle-parts` parts shuffled together; workers take every n-th window;
- *mosaicml-streaming*: MDS written by `MDSWriter`, read by `StreamingDataset` (py1e,
  num_canonical_nodes 1, shuffle_seed `--seed`);
- *litdata*: written by `litdata.optimize`, read by `StreamingDataset(shuffle=True, seed=...)`.

The libraries get one sample per window (not per page: their shuffle, sample counts and resume
state then count windows, the unit of a global batch; a page is 1 to hundreds of windows),
without [CLS]/[SEP] (added when read, as layoutja does), with its part, page and start as fields,
in shards of about one Parquet part each (their 64 MB default would make this corpus one shard).

Each (path, workers) run is a fresh process reading `--windows` windows through a DataLoader
(batch_size=None, numpy arrays passed as they are), timed from opening the data (index, workers'
start) to the last window; the fastest of `--rounds` (interleaved). CPU us/window: the run's CPU
time, workers' included (the least of the rounds; other load on the machine changes it less).
Peak RSS sums the process tree every 20 ms (shared pages count once per process); "(imports)":
the RSS once the path's modules are loaded.
Extra disk: the converted copy. Parts/batch: the mean number of Parquet parts that the first 50
global batches of 256 windows draw from (0 workers).

    python bench/bench_data.py --data DIR [--seed 0] [--windows 12800] [--workers 0,1,2]
        [--rounds 1] [--paths litdata,"layoutja order"] [--shuffle-parts 64] [--work DIR]

Run it in an interpreter that has the libraries, with `layoutja` on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import torch

CLS, SEP, PAD, MASK = 2, 3, 0, 4  # the ids `layoutja vocab` gives its special tokens
GLOBAL_BATCH, BATCHES = 256, 50
MAX_TOKENS, MARGIN, SHUFFLE_PARTS = 510, 128, 64  # set from the command line
SHARD_BYTES = 1 << 20  # set from the data: about one shard per Parquet part


def spans(length: int, max_tokens: int, margin: int) -> list[tuple[int, int]]:
    """[start, end) of the windows of a page of `length` tokens: layoutja's cut (the module it
    lives in depends on the layoutja on the path: today's or an older checkout's)."""
    try:
        from layoutja.pretrain.order import window_spans
    except ImportError:
        from layoutja.pretrain.windows import window_spans
    return window_spans(length, max_tokens, margin)


def source_windows(parts: list[Path], first: int = 0, max_tokens=None, margin=None):
    """(part, page, start, input_ids, bbox) of every window, in file order, without specials."""
    max_tokens, margin = max_tokens or MAX_TOKENS, margin or MARGIN
    for part, path in enumerate(parts, first):
        column = pq.read_table(path, columns=["input_ids", "bbox"]).combine_chunks()
        ids_col = column.column("input_ids").chunk(0)
        offsets, ids = ids_col.offsets.to_numpy(), ids_col.flatten().to_numpy().astype(np.int32)
        boxes = column.column("bbox").chunk(0).flatten().flatten().to_numpy()
        boxes = boxes.astype(np.int16).reshape(-1, 4)
        for page in range(len(offsets) - 1):
            a, b = offsets[page], offsets[page + 1]
            for s, e in spans(b - a, max_tokens, margin):
                yield part, page, s, ids[a + s : a + e], boxes[a + s : a + e]


def with_specials(ids: np.ndarray, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.concatenate([[CLS], ids, [SEP]]).astype(np.int64)
    return ids, np.concatenate([[[0] * 4], bbox, [[1000] * 4]]).astype(np.int64)


def worker_share() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


class Windows(torch.utils.data.IterableDataset):
    """(input_ids, bbox[, part]) of epoch `set_epoch(e)`: `epoch(e)`, called where iterated.
    Epochs are driven from the main process (a library's workers sync at an epoch's end)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.current = epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.current = epoch

    def __iter__(self):
        return iter(self.epoch(self.current))


# Paths: (files, seed, rank, world) -> an iterable of (input_ids, bbox[, part]) per epoch;
# `files`: the Parquet parts, or [the directory convert() wrote].


def layoutja_stream(files, seed, rank, world):
    from layoutja.pretrain.windows import SpecialIds, WindowStream

    stream = WindowStream(files, SpecialIds(PAD, CLS, SEP, MASK), seed=seed, rank=rank,
                          world=world, max_length=MAX_TOKENS + 2, margin=MARGIN)  # fmt: skip

    def epoch(_):  # one endless stream; a worker takes every n-th window
        worker, workers = worker_share()
        for k, ((ids, bbox), _, _) in enumerate(stream.windows()):
            if k % workers == worker:
                yield ids, bbox

    return Windows(epoch)


def layoutja_order(files, seed, rank, world):
    from layoutja.pretrain.order import Corpus, Order, Owner, PageReader
    from layoutja.pretrain.windows import read_pages

    order = Order(Corpus.index(files, MAX_TOKENS, MARGIN), seed, shuffle_parts=SHUFFLE_PARTS)

    def epoch(_):  # one endless stream; per_device 1: the DataLoader's turns keep the order
        worker, workers = worker_share()
        owner = Owner(rank, world, worker, workers)
        reader = PageReader(order, owner, GLOBAL_BATCH, 1, read_pages)
        for first in itertools.count(0, GLOBAL_BATCH):
            positions = np.arange(first, first + GLOBAL_BATCH)
            mine = positions[owner.owns(positions, GLOBAL_BATCH, 1)]
            for p, row in zip(mine.tolist(), order.rows(mine).tolist()):
                _, ids, bbox = reader.page(p, row)
                part, _, s, e = order.corpus.windows[row].tolist()
                yield *with_specials(ids[s:e], bbox[s:e]), part

    return Windows(epoch)


def convert_mds(parts: list[Path], out: Path) -> list[Path]:
    from streaming import MDSWriter

    columns = {"input_ids": "ndarray:int32", "bbox": "ndarray:int16",
               "part": "int32", "page": "int32", "start": "int32"}  # fmt: skip
    with MDSWriter(out=str(out), columns=columns, size_limit=SHARD_BYTES) as writer:
        for part, page, start, ids, bbox in source_windows(parts):
            writer.write({"input_ids": ids, "bbox": bbox, "part": part, "page": page,
                          "start": start})  # fmt: skip
    return [out]


def mosaicml_streaming(files, seed, rank, world):
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()  # rank and world come from the environment (torchrun's)
    dataset = StreamingDataset(local=str(files[0]), shuffle=True, shuffle_algo="py1e",
                               shuffle_seed=seed, num_canonical_nodes=1,
                               batch_size=GLOBAL_BATCH // world)  # fmt: skip
    return Windows(lambda _: ((*with_specials(s["input_ids"], s["bbox"]), int(s["part"]))
                              for s in dataset))  # fmt: skip


def litdata_samples(item: tuple):
    """The samples of one part (run in litdata's spawned workers: no globals from main)."""
    part, path, max_tokens, margin = item
    for _, page, start, ids, bbox in source_windows([Path(path)], part, max_tokens, margin):
        yield {"input_ids": ids, "bbox": bbox, "part": part, "page": page, "start": start}


def convert_litdata(parts: list[Path], out: Path) -> list[Path]:
    import litdata

    inputs = [(i, str(path), MAX_TOKENS, MARGIN) for i, path in enumerate(parts)]
    litdata.optimize(fn=litdata_samples, inputs=inputs, output_dir=str(out),
                     chunk_bytes=SHARD_BYTES, num_workers=1, mode="overwrite",
                     verbose=False)  # fmt: skip
    return [out]


def litdata_path(files, seed, rank, world):
    import litdata  # rank and world come from torch.distributed

    dataset = litdata.StreamingDataset(str(files[0]), shuffle=True, seed=seed)

    def epoch(e):
        dataset.set_epoch(e + 1)  # litdata's epochs count from 1
        for s in dataset:
            yield *with_specials(s["input_ids"], s["bbox"]), int(s["part"])

    return Windows(epoch)


# name: (module:attribute that must import, convert or None, read)
PATHS = {
    "layoutja stream": ("layoutja.pretrain.windows:WindowStream", None, layoutja_stream),
    "layoutja order": ("layoutja.pretrain.order:PageReader", None, layoutja_order),
    "mosaicml-streaming": ("streaming:StreamingDataset", convert_mds, mosaicml_streaming),
    "litdata": ("litdata:StreamingDataset", convert_litdata, litdata_path),
}


BASELINE = os.environ.get("BENCH_DATA_BASELINE")  # --baseline: where "layoutja stream" runs


def unavailable(name: str) -> str | None:
    if name == "layoutja stream" and BASELINE and not os.environ.get("BENCH_DATA_CHILD"):
        return None  # checked in its own process, with the older layoutja on its path
    module, attribute = PATHS[name][0].split(":")
    try:
        getattr(importlib.import_module(module), attribute)
    except Exception as e:  # ImportError, or a broken dependency (e.g. torchvision's C ops)
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return None


def window_key(ids, bbox) -> int:
    return hash(np.asarray(ids, np.int64).tobytes() + np.asarray(bbox, np.int64).tobytes())


def content_parts(parts: list[Path]) -> dict[int, int]:
    """A window's part from its tokens and boxes (for paths that do not give it)."""
    table: dict[int, int] = {}
    for part, _, _, ids, bbox in source_windows(parts):
        table.setdefault(window_key(*with_specials(ids, bbox)), part)
    return table


def as_is(window):  # pickled from workers as numpy: the default puts each array in shm
    return window


def run_one(args) -> None:
    """In a fresh process: time one (path, workers), write the result to `--result`."""
    files = [Path(f) for f in json.loads(args.files)]
    unavailable(args.one)  # imports the path's modules
    base = psutil.Process().memory_info().rss
    start, cpu = time.perf_counter(), sum(os.times()[:4])
    dataset = PATHS[args.one][2](files, args.seed, 0, 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=args.workers[0],
                                         collate_fn=as_is)  # fmt: skip
    parts = []
    for epoch in itertools.count():
        dataset.set_epoch(epoch)
        for item in itertools.islice(loader, args.windows - len(parts)):
            ids, bbox = item[0], item[1]
            assert ids.shape[0] <= MAX_TOKENS + 2 and bbox.shape == (ids.shape[0], 4)
            parts.append(int(item[2]) if len(item) > 2 else window_key(ids, bbox))
        if len(parts) == args.windows:
            break
    del loader  # workers joined: their CPU time is in os.times()' children's
    seconds, cpu = time.perf_counter() - start, sum(os.times()[:4]) - cpu
    if len(item) == 2 and args.workers[0] == 0:  # parts from content, out of the timing
        table = content_parts(sorted(Path(args.data).glob("part-*.parquet")))
        parts = [table.get(k, -1) for k in parts]
    result = {"windows": len(parts), "seconds": seconds, "cpu": cpu, "base": base, "parts": parts}
    Path(args.result).write_text(json.dumps(result))


def measure(name: str, files: list[Path], workers: int) -> tuple[dict, int]:
    """Run one (path, workers) in a fresh process (the same options, the last ones win)."""
    result = Path(tempfile.mkstemp(prefix="bench_data-", suffix=".json")[1])
    env = {**os.environ, "BENCH_DATA_CHILD": "1"}
    if name == "layoutja stream" and BASELINE:  # the older layoutja first on the path
        env["PYTHONPATH"] = os.pathsep.join([BASELINE, env.get("PYTHONPATH", "")])
    child = subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--one", name,
                              "--workers", str(workers), "--result", str(result),
                              "--files", json.dumps([str(f) for f in files])], env=env)  # fmt: skip
    peak = 0
    while child.poll() is None:
        try:
            tree = [psutil.Process(child.pid), *psutil.Process(child.pid).children(True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.02)
    if child.returncode:
        raise SystemExit(f"{name} with {workers} workers failed (exit {child.returncode})")
    out = json.loads(result.read_text())
    result.unlink()
    return out, peak


def parts_per_batch(parts: list[int]) -> float:
    batches = [parts[i : i + GLOBAL_BATCH] for i in range(0, BATCHES * GLOBAL_BATCH, GLOBAL_BATCH)]
    return float(np.mean([len(set(b)) for b in batches if len(b) == GLOBAL_BATCH]))


def main() -> None:
    global MAX_TOKENS, MARGIN, SHARD_BYTES, SHUFFLE_PARTS, BASELINE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a `layoutja localize` output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--margin", type=int, default=128)
    parser.add_argument("--windows", type=int, default=BATCHES * GLOBAL_BATCH, help="per run")
    parser.add_argument("--workers", default="0,1,2", type=lambda s: [int(w) for w in s.split(",")])
    parser.add_argument("--paths", default=",".join(PATHS), help="of: " + ", ".join(PATHS))
    parser.add_argument("--rounds", type=int, default=1, help="the fastest (least CPU) shown")
    parser.add_argument("--shuffle-parts", type=int, default=64, help="for layoutja order")
    parser.add_argument("--work", help="where conversions go (default: a temporary directory)")
    parser.add_argument(
        "--baseline",
        help="an older layoutja checkout (`git archive 145ae66`) "
        "whose WindowStream the 'layoutja stream' path runs, in the same run",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    MAX_TOKENS, MARGIN, SHUFFLE_PARTS = args.max_length - 2, args.margin, args.shuffle_parts
    if args.baseline:
        os.environ["BENCH_DATA_BASELINE"] = BASELINE = str(Path(args.baseline).resolve())
    if args.one:
        return run_one(args)
    parts = sorted(Path(args.data).glob("part-*.parquet"))
    if not parts:
        raise SystemExit(f"{args.data}: no Parquet parts (run `layoutja localize` first)")
    windows = list(source_windows(parts))
    tokens = sum(len(w[3]) for w in windows)
    SHARD_BYTES = max(1 << 16, tokens * 12 // len(parts))  # int32 id + 4 int16 per token
    pages = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    print(f"data: {pages} pages, {len(parts)} parts, {len(windows)} windows/epoch "
          f"({tokens} tokens in windows); {args.windows} windows a run, seed {args.seed}; "
          f"shards of {SHARD_BYTES // 1024} KiB; layoutja order: shuffle_parts {SHUFFLE_PARTS}; "
          f"best of {args.rounds} round(s); {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}", flush=True)  # fmt: skip
    names = [n.strip() for n in args.paths.split(",")]
    if set(names) - set(PATHS):
        raise SystemExit(f"unknown path in {args.paths!r}: of {', '.join(PATHS)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_data-"))
    (work / "tmp").mkdir(parents=True, exist_ok=True)  # the libraries' lock files and scratch
    os.environ["TMPDIR"] = tempfile.tempdir = str(work / "tmp")
    ready = {}  # name: (files, extra disk, conversion seconds)
    for name in names:
        reason = unavailable(name)
        if reason:
            print(f"{name:20s} skipped: {reason}", flush=True)
            continue
        convert, files, extra, seconds = PATHS[name][1], parts, 0, 0.0
        if convert:
            out = work / name
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            files = convert(parts, out)
            seconds = time.perf_counter() - start
            extra = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        ready[name] = files, extra, seconds
    runs: dict[tuple[str, int], list] = {}
    for _ in range(args.rounds):  # rounds interleaved: a load that comes and goes hits all alike
        for name, workers in itertools.product(ready, args.workers):
            runs.setdefault((name, workers), []).append(measure(name, ready[name][0], workers))
    print(f"{'path':20s} {'workers':>7s} {'windows/s':>10s} {'CPU us/window':>13s} "
          f"{'peak RSS MiB':>12s} {'(imports)':>9s} {'extra disk MiB':>14s} {'convert s':>9s} "
          f"{'parts/batch':>11s}")  # fmt: skip
    for (name, workers), results in runs.items():
        best = max(results, key=lambda r: r[0]["windows"] / r[0]["seconds"])[0]
        peak = max(r[1] for r in results)
        cpu = min(r[0]["cpu"] / r[0]["windows"] for r in results)
        mixing = f"{parts_per_batch(best['parts']):11.1f}" if workers == 0 else ""
        print(f"{name:20s} {workers:7d} {best['windows'] / best['seconds']:10.0f} "
              f"{cpu * 1e6:13.0f} {peak / 2**20:12.0f} {best['base'] / 2**20:9.0f} "
              f"{ready[name][1] / 2**20:14.1f} {ready[name][2]:9.1f} {mixing}")  # fmt: skip
    if "layoutja order" in ready:
        padding(parts)
        for workers in args.workers:
            masked_batches(parts, workers, args.windows)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def masked_batches(parts: list[Path], workers: int, windows: int) -> None:
    """What the trainer's data path delivers on one process: masked, collated micro-batches of
    32 windows (MVLM masking, global batch 256) from `MaskedBatches` through a DataLoader."""
    from layoutja.pretrain.order import Corpus, Order
    from layoutja.pretrain.windows import MVLM_MASKING, Batcher, MaskedBatches, SpecialIds

    order = Order(Corpus.index(parts, MAX_TOKENS, MARGIN), 0, SHUFFLE_PARTS)
    batcher = Batcher(SpecialIds(PAD, CLS, SEP, MASK), 8000, MVLM_MASKING, MAX_TOKENS + 2)
    dataset = MaskedBatches(order, batcher, rank=0, world=1, start_step=0, global_batch=256,
                            per_device=32)  # fmt: skip
    start, cpu = time.perf_counter(), sum(os.times()[:4])
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)
    batches = list(itertools.islice(loader, windows // 32))
    del loader  # workers joined: their CPU time is in os.times()' children's
    seconds, cpu = time.perf_counter() - start, sum(os.times()[:4]) - cpu
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    print(
        f"trainer batches (MaskedBatches, 32 × ≤512 masked), {workers} workers: "
        f"{len(batches) * 32 / seconds:,.0f} windows/s, {tokens / seconds:,.0f} tokens/s, "
        f"CPU {cpu / (len(batches) * 32) * 1e6:.0f} us/window"
    )


def padding(parts: list[Path]) -> None:
    """The padding share (padded positions / all positions) of one epoch's micro-batches in
    layoutja's order, shuffled and grouped by length (data.group_by_length)."""
    from layoutja.pretrain.order import Corpus, Order

    corpus = Corpus.index(parts, MAX_TOKENS, MARGIN)
    for per_device, batch in ((8, 64), (32, 256)):
        if len(corpus) < batch:
            print(
                f"padding share, {per_device} windows a micro-batch: fewer windows than a "
                f"global batch of {batch}"
            )
            continue
        shares = []
        for grouped in (0, batch):
            windows = corpus.windows[Order(corpus, 42, SHUFFLE_PARTS, grouped).epoch(1)]
            lengths = windows[:, 3] - windows[:, 2] + 2  # with [CLS] and [SEP]
            chunks = lengths[: len(lengths) // per_device * per_device].reshape(-1, per_device)
            padded = -(-chunks.max(1) // 8) * 8  # batches are padded to a multiple of 8
            shares.append(1 - chunks.sum() / (padded * per_device).sum())
        print(
            f"padding share, {per_device} windows a micro-batch (global {batch}): shuffled "
            f"{shares[0]:.1%}, grouped by length {shares[1]:.1%}"
        )


if __name__ == "__main__":
    main()
