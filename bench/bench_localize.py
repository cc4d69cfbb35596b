"""Localization speed: the full pipeline against a bare Chromium loop, in one run.

Pages are real Japanese HTML (Debian's Japanese documentation, installed by `make bench`, plus
the SHINRA sample when present). For 1 and N workers it times:

- full: `localize_corpus` from raw files to Parquet (read, decode, scan, tokenize, wrap, render,
  read boxes, normalize, journal, write parts), browser start-up included;
- bare: N processes that each start a browser, load the already-wrapped HTML and read the boxes
  with the same script (the floor of what the browser costs), start-up included.

It prints pages/s and tokens/s of each and the ratio full/bare (goal: at least 70%).

    python bench/bench_localize.py [--pages 150] [--tokenizer DIR] [--workers N]
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_tokenizer import DOC_GLOBS  # noqa: E402

SHINRA = Path(__file__).resolve().parents[2] / "shared" / "shinra-sample" / "Airport_HTML"


def real_pages(count: int) -> list[Path]:
    files = sorted(f for g in DOC_GLOBS for f in glob.glob(g, recursive=True) if os.path.isfile(f))
    files = [Path(f) for f in files] + sorted(SHINRA.glob("*.html"))
    if len(files) < count:
        raise SystemExit(f"found {len(files)} pages, need {count}: run `make bench`")
    step = len(files) / count  # spread over all documents, not the first manual only
    return [files[int(i * step)] for i in range(count)]


def _bare_worker(paths: list[str]) -> int:
    from layoutja.localize.browser import Browser

    with Browser() as browser:
        for path in paths:
            html, count = Path(path).read_text(encoding="utf-8").split("\0")
            browser.render(html, int(count))
    return len(paths)


def bare_loop(wrapped: list[Path], workers: int) -> float:
    """Seconds for `workers` browsers to load the pre-wrapped pages and read all boxes."""
    chunks = [[str(p) for p in wrapped[i::workers]] for i in range(workers)]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        assert sum(pool.map(_bare_worker, chunks)) == len(wrapped)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=150)
    parser.add_argument("--tokenizer", help="tokenizer directory (default: train one)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    from layoutja.localize.page import wrap_tokens
    from layoutja.localize.pool import localize_corpus
    from layoutja.text.htmlpage import decode_html, parse_html
    from layoutja.text.tokenizer import JapaneseTokenizer
    from layoutja.text.vocab import VocabConfig, train_vocab

    pages = real_pages(args.pages)
    work = Path(tempfile.mkdtemp(prefix="bench-localize-"))
    try:
        src = work / "html"
        src.mkdir()
        for i, page in enumerate(pages):
            shutil.copy(page, src / f"{i:05d}.html")
        tokenizer_dir = args.tokenizer
        if not tokenizer_dir:
            tokenizer_dir = str(work / "tokenizer")
            train_vocab([src], Path(tokenizer_dir), VocabConfig(vocab_size=32768, workers=2))
        tokenizer = JapaneseTokenizer.from_pretrained(tokenizer_dir)
        wrapped_dir = work / "wrapped"
        wrapped_dir.mkdir()
        tokens = 0
        for path in sorted(src.glob("*.html")):
            wrapped = wrap_tokens(parse_html(*decode_html(path.read_bytes())), tokenizer)
            tokens += len(wrapped.tokens)
            text = f"{wrapped.html}\0{len(wrapped.tokens)}"
            (wrapped_dir / path.name).write_text(text, encoding="utf-8")
        size = sum(p.stat().st_size for p in src.glob("*.html")) / 1e6
        print(f"{len(pages)} pages, {size:.1f} MB of HTML, {tokens} tokens\n")
        print(f"{'workers':>7} {'bare p/s':>9} {'full p/s':>9} {'full tok/s':>11} {'full/bare':>9}")
        for workers in sorted({1, args.workers}):
            bare = bare_loop(sorted(wrapped_dir.glob("*.html")), workers)
            out = work / f"out-{workers}"
            start = time.perf_counter()
            summary = localize_corpus(str(src), tokenizer_dir, out, workers=workers, progress=False)
            full = time.perf_counter() - start
            assert summary["ok"] == len(pages), summary
            n = len(pages)
            print(
                f"{workers:>7} {n / bare:>9.2f} {n / full:>9.2f} "
                f"{summary['tokens'] / full:>11.0f} {bare / full:>9.0%}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
