"""Tokenizer speed: layoutja's JapaneseTokenizer against transformers' BertJapaneseTokenizer.

Both tokenize the same real Japanese text (the visible text of Debian's Japanese documentation,
installed by `make bench`) line by line with the same tokenizer directory, in one run; the script
also checks that both give the same tokens on every line. Prints MB/s (UTF-8 input bytes) and
ratios. Without --tokenizer it first trains a 32,768-entry unidic-lite vocabulary on the text.

    python bench/bench_tokenizer.py [--mb 4] [--tokenizer DIR] [--workers N]
"""

from __future__ import annotations

import argparse
import gc
import glob
import os
import tempfile
import time
from pathlib import Path

DOC_GLOBS = [
    "/usr/share/debian-reference/*.ja.html",
    "/usr/share/developers-reference/ja/*.html",
    "/usr/share/doc/debian/FAQ/ja/*.html",
    "/usr/share/doc/debian-policy/ja/**/*.html",
    "/usr/share/doc/maint-guide-ja/html/*.html",
    "/usr/share/gimp/2.0/help/ja/**/*.html",
]


def corpus_lines(megabytes: float) -> list[str]:
    from layoutja.text.pagetext import file_texts

    files = sorted(f for g in DOC_GLOBS for f in glob.glob(g, recursive=True) if os.path.isfile(f))
    if not files:
        raise SystemExit("no Japanese documentation found: run `make bench` (installs it)")
    lines: list[str] = []
    size = 0
    for f in files:  # distinct text only: repeating it would flatter a tokenizer with a cache
        if size >= megabytes * 1e6:
            break
        for line in file_texts(Path(f)):
            lines.append(line)
            size += len(line.encode("utf-8"))
    return lines


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds


def best_time(run, repeat: int, setup=lambda: None) -> float:
    """Best of `repeat` runs of `run(setup())`, each after a full collection; results are
    discarded as they come, so no run pays for another's garbage. `setup` is not timed."""
    times = []
    for _ in range(repeat):
        arg = setup()
        gc.collect()
        t = time.perf_counter()
        run(arg)
        times.append(time.perf_counter() - t)
    return min(times)


def consume(iterable) -> None:
    for _ in iterable:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=4.0, help="megabytes of text (default 4)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: train one)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3, help="report the best of N runs")
    args = parser.parse_args()

    from transformers import BertJapaneseTokenizer

    from layoutja.text.mecab import MecabWords
    from layoutja.text.tokenizer import JapaneseTokenizer
    from layoutja.text.vocab import VocabConfig, train_vocab

    lines = corpus_lines(args.mb)
    nbytes = sum(len(line.encode("utf-8")) for line in lines)
    print(f"text: {len(lines):,} lines, {nbytes / 1e6:.2f} MB; cores: {os.cpu_count()}")

    tok_dir = args.tokenizer
    if tok_dir is None:
        tok_dir = tempfile.mkdtemp(prefix="bench-tok-")
        corpus = Path(tok_dir) / "corpus.txt"
        corpus.write_text("\n".join(lines), encoding="utf-8")
        train_vocab([corpus], Path(tok_dir), VocabConfig(workers=args.workers))
        corpus.unlink()

    reference = BertJapaneseTokenizer.from_pretrained(tok_dir)
    ours = JapaneseTokenizer.from_pretrained(tok_dir)
    mismatches = sum(reference.tokenize(line) != ours.encode(line).tokens for line in lines)
    batch = ours.encode_batch(lines, workers=args.workers)
    mismatches += sum(ref != enc.tokens for ref, enc in zip(map(reference.tokenize, lines), batch))

    # Every run of ours starts from a fresh tokenizer: its per-word cache starts empty.
    def fresh() -> JapaneseTokenizer:
        return JapaneseTokenizer.from_pretrained(tok_dir)

    words = MecabWords("unidic_lite", normalize_text=False)
    t_mecab = best_time(lambda _: consume(map(words.split, lines)), args.repeat)
    t_ref = best_time(lambda _: consume(map(reference.tokenize, lines)), args.repeat)
    t_ours = best_time(lambda tok: consume(map(tok.encode, lines)), args.repeat, fresh)
    t_batch = best_time(  # the worker pool's start is timed: it is part of the work
        lambda tok: consume(tok.encode_batch(lines, workers=args.workers)), args.repeat, fresh
    )

    print(f"lines where the tokens differ: {mismatches}")
    print(f"best of {args.repeat} runs; layoutja starts each run with an empty word cache")
    print(f"MeCab alone (wakati, no NFKC, no WordPiece): {rate(nbytes, t_mecab):6.2f} MB/s")
    print(f"transformers BertJapaneseTokenizer:          {rate(nbytes, t_ref):6.2f} MB/s")
    print(
        f"layoutja, 1 process, with offsets:           {rate(nbytes, t_ours):6.2f} MB/s"
        f"  ({t_ref / t_ours:.1f}x)"
    )
    print(
        f"layoutja, {args.workers} processes, with offsets:         "
        f"{rate(nbytes, t_batch):6.2f} MB/s  ({t_ref / t_batch:.1f}x)"
    )


if __name__ == "__main__":
    main()
