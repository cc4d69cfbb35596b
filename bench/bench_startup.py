"""A pretraining job's start-up at 1.1 million pages: learning every page's length and building
the window index, per rank, before (every token read, a list of tuples) and now (the parts'
footers, array operations).

Synthetic parts: 1.1 M pages in parts of 500 pages, page lengths drawn log-normally like
Japanese Wikipedia's (median 1,200 tokens, mean about 2,450: 2.7 billion tokens in all), each
part an `input_ids` list column of ids drawn from a 32,768-token vocabulary, written the way the
localization store writes parts (zstd, no dictionary, the rows' token counts in the footer). A
job of WORLD ranks reads the lengths of every WORLD-th part on each rank and gathers them; here
rank 0's share is read and the rest taken from the generator. Each variant runs in a fresh
process, which reports its time, its RSS before the start-up and its peak RSS after.

    python bench/bench_startup.py [--pages 1100000] [--world 8] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PAGES_PER_PART = 500
MAX_TOKENS, MARGIN = 510, 128


def make_parts(work: Path, pages: int) -> list[Path]:
    """The synthetic parts (kept in `work` for the next run) and lengths.npy beside them."""
    from layoutja.localize.parts import with_page_lengths

    done = work / "lengths.npy"
    if done.exists():
        return sorted(work.glob("part-*.parquet"))
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(1200), 1.19, pages), 1, 200_000).astype(np.int64)
    work.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    for k, start in enumerate(range(0, pages, PAGES_PER_PART)):
        n = lengths[start : start + PAGES_PER_PART]
        ids = rng.integers(5, 32768, int(n.sum()), dtype=np.int32)
        offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))
        table = with_page_lengths(pa.table({"input_ids": column}))
        pq.write_table(table, work / f"part-{k:05d}.parquet", compression="zstd",
                       use_dictionary=False)  # fmt: skip
    np.save(done, lengths)
    print(f"wrote {k + 1} parts, {pages:,} pages, {int(lengths.sum()):,} tokens in "
          f"{time.perf_counter() - clock:.0f} s", file=sys.stderr)  # fmt: skip
    return sorted(work.glob("part-*.parquet"))


def index_before(per_part: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The window index as it was built before: a list of (part, page, start, end) tuples."""
    from layoutja.pretrain.order import window_spans

    rows, bounds = [], [0]
    for part, pages in enumerate(per_part):
        for page, length in enumerate(pages.tolist()):
            rows += [(part, page, s, e) for s, e in window_spans(length, MAX_TOKENS, MARGIN)]
        bounds.append(len(rows))
    return np.array(rows, dtype=np.int64), np.array(bounds, dtype=np.int64)


def measure(variant: str, work: Path, world: int) -> dict:
    """Rank 0's start-up: its share of the lengths read, the others' gathered, the index built."""
    from layoutja.localize.parts import page_lengths
    from layoutja.pretrain.order import Corpus

    files = sorted(work.glob("part-*.parquet"))
    generated = np.load(work / "lengths.npy")
    gathered = np.split(generated, np.arange(PAGES_PER_PART, len(generated), PAGES_PER_PART))

    def from_column(path: Path) -> np.ndarray:  # what page_lengths did before: every token
        column = pq.read_table(path, columns=["input_ids"]).column("input_ids").combine_chunks()
        return column.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)

    read = from_column if variant == "before" else page_lengths
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clock = time.perf_counter()
    mine = {i: read(f) for i, f in enumerate(files) if i % world == 0}
    lengths_s = time.perf_counter() - clock
    assert all(np.array_equal(mine[i], gathered[i]) for i in mine)
    per_part = [mine.get(i, gathered[i]) for i in range(len(files))]
    clock = time.perf_counter()
    if variant == "before":
        windows, _ = index_before(per_part)
    else:
        windows = Corpus.index(files, MAX_TOKENS, MARGIN, lambda fs: per_part).windows
    index_s = time.perf_counter() - clock
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"variant": variant, "parts_read": len(mine), "lengths_s": lengths_s,
            "index_s": index_s, "windows": len(windows), "kept_mib": windows.nbytes / 2**20,
            "base_rss_mib": base / 1024, "peak_rss_mib": peak / 1024}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=1_100_000)
    parser.add_argument("--world", type=int, default=8, help="ranks sharing the length reads")
    parser.add_argument("--work", type=Path, help="keep the parts here (reused when present)")
    parser.add_argument("--measure", choices=["before", "now"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.work, args.world)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-startup-"))
    files = make_parts(work, args.pages)
    print(f"{len(files)} parts in {work}; rank 0 of {args.world} reads every {args.world}-th")
    print(f"{'':8} {'parts read':>10} {'lengths s':>9} {'index s':>8} {'windows':>10} "
          f"{'kept MiB':>8} {'RSS MiB at start':>16} {'peak RSS MiB':>12}")  # fmt: skip
    for variant in ("before", "now"):
        command = [sys.executable, __file__, "--measure", variant, "--work", str(work),
                   "--world", str(args.world)]  # fmt: skip
        row = json.loads(subprocess.run(command, capture_output=True, text=True,
                                        check=True).stdout)  # fmt: skip
        print(f"{variant:8} {row['parts_read']:>10} {row['lengths_s']:>9.2f} "
              f"{row['index_s']:>8.2f} {row['windows']:>10,} {row['kept_mib']:>8.0f} "
              f"{row['base_rss_mib']:>16.0f} {row['peak_rss_mib']:>12.0f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
