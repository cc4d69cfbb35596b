"""`layoutja` command line: a thin layer over the package's functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from layoutja.errors import UserError


def _input_lines(path: str | None) -> Iterator[str]:
    """Lines of FILE (or stdin) without their newline; undecodable bytes are a UserError."""
    name = path or "<stdin>"
    try:
        stream = open(path, "rb") if path else sys.stdin.buffer  # noqa: SIM115
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    with stream:
        for number, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{name}: line {number}: not UTF-8 (byte {e.start} of the line: {e.reason})"
                ) from None
            yield line[:-1] if line.endswith("\n") else line


def cmd_tokenize(args: argparse.Namespace) -> None:
    from layoutja.tokenizer import JapaneseTokenizer

    tokenizer = JapaneseTokenizer.from_pretrained(args.tokenizer)
    out = sys.stdout
    for enc in tokenizer.encode_batch(_input_lines(args.file), workers=args.workers):
        record = {"tokens": enc.tokens, "ids": enc.ids, "offsets": enc.offsets}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")


def cmd_vocab(args: argparse.Namespace) -> None:
    from layoutja.vocab import VocabConfig, train_vocab

    config = VocabConfig(
        vocab_size=args.vocab_size,
        dic=args.dic,
        do_lower_case=args.lower_case,
        alphabet=args.alphabet,
        num_unused=args.unused,
        min_frequency=args.min_frequency,
        workers=args.workers,
    )
    summary = train_vocab(args.inputs, Path(args.out), config)
    skipped = len(summary["skipped"])
    if summary["vocab_size"] < args.vocab_size:
        print(
            f"note: the input allowed only {summary['vocab_size']} entries "
            f"(--vocab-size {args.vocab_size}); more text gives more merges",
            file=sys.stderr,
        )
    print(
        f"wrote {summary['out']}: {summary['vocab_size']} tokens from {summary['files']} file(s)"
        + (f", {skipped} skipped (see messages above)" if skipped else ""),
        file=sys.stderr,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layoutja",
        description="Pretrain Japanese layout-aware language models on web pages.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cores = os.cpu_count() or 1

    p = sub.add_parser(
        "tokenize",
        help="tokenize text: one JSON line of tokens, ids and source offsets per input line",
        description="Tokenize each input line exactly as transformers' BertJapaneseTokenizer "
        'would, printing {"tokens": [...], "ids": [...], "offsets": [[start, end], ...]} '
        "per line; offsets are character positions in the input line.",
    )
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (or hub name)")
    p.add_argument("file", nargs="?", help="UTF-8 text file (default: standard input)")
    p.add_argument(
        "--workers", type=int, default=cores, help=f"processes to use (default: {cores})"
    )
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser(
        "vocab",
        help="train a WordPiece vocabulary on MeCab-split text",
        description="Train a MeCab + WordPiece vocabulary on text files and/or HTML pages "
        "(files or directories; the visible text of HTML is used) and write a tokenizer "
        "directory that AutoTokenizer loads as BertJapaneseTokenizer.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".txt/.html files or directories")
    p.add_argument("--out", required=True, help="output tokenizer directory")
    p.add_argument(
        "--dic",
        default="unidic-lite",
        choices=["unidic-lite", "unidic_lite", "ipadic"],
        help="MeCab dictionary (default: unidic-lite, as cl-tohoku v2; ELECTRA uses ipadic)",
    )
    p.add_argument("--vocab-size", type=int, default=32768, help="default: 32768")
    p.add_argument(
        "--alphabet",
        choices=["jis", "corpus"],
        default="jis",
        help="jis (default): kana and JIS level-1 kanji are always in the vocabulary; "
        "corpus: only characters seen in the input (for tiny vocabularies)",
    )
    p.add_argument("--lower-case", action="store_true", help="lower-case words (default: off)")
    p.add_argument("--unused", type=int, default=10, help="[unusedN] slots (default: 10)")
    p.add_argument(
        "--min-frequency", type=int, default=2, help="minimum pair count to merge (default: 2)"
    )
    p.add_argument("--workers", type=int, default=cores, help=f"MeCab processes (default: {cores})")
    p.set_defaults(func=cmd_vocab)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"layoutja {args.command}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `layoutja tokenize ... | head`
        sys.stderr.close()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
