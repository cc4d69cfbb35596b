"""`layoutja` command line, a thin layer over the package's functions: the entry point and the
data-stage subcommands (tokenize, vocab, localize, show); the model stages are in
layoutja.cli.models."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from layoutja.cli.models import add_model_commands
from layoutja.common import EXIT_PREEMPTED, Preempted, UserError

if TYPE_CHECKING:
    from layoutja.localize.config import LocalizeConfig

# `localize` exits with EXIT_PAGES_FAILED (not 0) when more than this share of its pages failed.
MAX_FAILURES = 0.1
EXIT_PAGES_FAILED = 3


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
    from layoutja.text.tokenizer import JapaneseTokenizer

    tokenizer = JapaneseTokenizer.from_pretrained(args.tokenizer)
    out = sys.stdout
    for enc in tokenizer.encode_batch(_input_lines(args.file), workers=args.workers):
        record = {"tokens": enc.tokens, "ids": enc.ids, "offsets": enc.offsets}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")


def cmd_vocab(args: argparse.Namespace) -> None:
    from layoutja.text.vocab import VocabConfig, train_vocab

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


def _localize_config(args: argparse.Namespace) -> LocalizeConfig:
    """The --config file (default: the published setting) with the explicit flags on top."""
    from layoutja.localize.config import load_localize_config

    return load_localize_config(args.config).override(
        timeout_s=args.timeout,
        workers=getattr(args, "workers", None),
        pages_per_part=getattr(args, "pages_per_part", None),
    )


def cmd_localize(args: argparse.Namespace) -> int:
    from layoutja.localize.pool import localize_corpus
    from layoutja.localize.sources import parse_shard
    from layoutja.text.pagetext import HTML_SUFFIXES

    config = _localize_config(args)
    src = Path(args.src)
    if src.is_file() and src.suffix.lower() in HTML_SUFFIXES:
        _localize_one(src, args, config)
        return 0
    if not args.out:
        raise UserError("--out is required when SRC is a directory or a glob")
    if not 0 <= args.max_failures <= 1:
        raise UserError(f"--max-failures {args.max_failures}: a share, from 0 to 1")
    shard = parse_shard(args.shard)
    summary = localize_corpus(
        args.src,
        args.tokenizer,
        Path(args.out),
        config,
        shard=shard,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
    )
    totals, failures = summary["totals"], summary["failures"]
    sharded = f" (every shard's; {summary['shards_finished']} of {shard[1]} shards finished)"
    rendered = summary["ok"] + summary["failed"]  # a rate only where pages were rendered
    rate = f"; {summary['pages_per_s']} pages/s over the whole run, browser start included"
    empty = f" ({summary['empty']} empty: no text)" if summary["empty"] else ""
    print(
        f"localized {summary['ok']} page(s){empty}, {summary['failed']} failed, "
        f"{summary['skipped']} already done; {summary['tokens']} tokens "
        f"({summary['dropped_tokens']} not rendered, dropped)" + (rate if rendered else "") + "\n"
        f"{summary['out']} now holds {totals['pages']} pages, {totals['tokens']} tokens"
        + (sharded if shard[1] > 1 else "")
        + (f"; failures: {failures}" if failures else ""),
        file=sys.stderr,
    )
    if summary["failed_before"]:
        print(
            f"skipped {summary['failed_before']} page(s) that failed on an earlier run (listed "
            f"in {failures}); --retry-failed tries them again",
            file=sys.stderr,
        )
    failed, pages = summary["failed"] + summary["failed_before"], summary["pages"]
    if pages and (failed == pages or failed > args.max_failures * pages):
        print(
            f"layoutja localize: {failed} of {pages} pages failed"
            + (f" in shard {args.shard}" if shard[1] > 1 else "")
            + f", more than --max-failures {args.max_failures:g} allows (see {failures})",
            file=sys.stderr,
        )
        return EXIT_PAGES_FAILED
    return 0


def _localize_one(src: Path, args: argparse.Namespace, config: LocalizeConfig) -> None:
    from layoutja.localize.browser import Browser
    from layoutja.localize.page import localize_file
    from layoutja.text.tokenizer import JapaneseTokenizer

    tokenizer = JapaneseTokenizer.from_pretrained(args.tokenizer)
    with Browser(config) as browser:
        record = localize_file(src, tokenizer, browser)
    text = json.dumps(record, ensure_ascii=False) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    print(
        f"{src}: {len(record['tokens'])} tokens, {record['dropped']} not rendered (dropped)",
        file=sys.stderr,
    )


def cmd_show(args: argparse.Namespace) -> None:
    from layoutja.localize.page import show_page
    from layoutja.text.tokenizer import JapaneseTokenizer

    tokenizer = JapaneseTokenizer.from_pretrained(args.tokenizer)
    record, paths = show_page(
        Path(args.page), tokenizer, Path(args.out), tiles=args.tiles, config=_localize_config(args)
    )
    print(
        f"{args.page}: {len(record['tokens'])} token boxes drawn; wrote "
        + ", ".join(map(str, paths)),
        file=sys.stderr,
    )


def _config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="localization setting (YAML, e.g. localize/published.yaml; default: the published "
        "setting): viewport, device scale factor, Chromium flags, timeout, parts, workers",
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

    p = sub.add_parser(
        "localize",
        help="render HTML pages in Chromium and record the box of every subword",
        description="Tokenize the visible text of HTML pages, wrap every subword in a nowrap "
        "span, render in headless Chromium (page scripts off, network blocked; viewport, scale and "
        "flags from --config, by default the published 1280x854 at scale 1) and "
        "record each token's box and raw-HTML position. SRC is one .html file (the record is "
        "printed as JSON, or written to --out), or a directory (SHINRA layout html/<category>/"
        "<page_id>.html, or any tree of .html files) or a quoted glob: Parquet parts, a "
        "manifest and failures.jsonl go to --out. Re-running the same command resumes; it skips "
        "the pages that failed before unless --retry-failed. Exit status: 0 when at most "
        f"--max-failures of the pages failed, {EXIT_PAGES_FAILED} when more (or all) did, 1 on "
        "an error.",
    )
    p.add_argument("src", metavar="SRC", help="an .html file, a directory or a quoted glob")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (or hub name)")
    p.add_argument("--out", help="output directory (a .json file for a single page)")
    _config_argument(p)
    p.add_argument(
        "--workers",
        type=int,
        help=f"browser processes (overrides the config; 0: one per core, here {cores})",
    )
    p.add_argument(
        "--shard",
        default="0/1",
        help="I/N: do only shard I of N (default: 0/1, everything); shards share --out, whose "
        "manifest.json then counts them all",
    )
    p.add_argument(
        "--timeout", type=float, help="seconds to render a page (overrides the config; 60)"
    )
    p.add_argument(
        "--pages-per-part", type=int, help="pages per Parquet part (overrides the config; 500)"
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="try again the pages an earlier run listed in failures.jsonl (a rerun skips them)",
    )
    p.add_argument(
        "--max-failures",
        type=float,
        default=MAX_FAILURES,
        metavar="SHARE",
        help=f"exit with code {EXIT_PAGES_FAILED} when more than this share of the pages (of "
        f"the shard) has failed, or all have (default: {MAX_FAILURES}); else 0, failures listed",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_localize)

    p = sub.add_parser(
        "show",
        help="save a screenshot of a page with every token box drawn on it",
        description="Localize one page and save a PNG of it with every stored token box "
        "outlined: one tall image, or viewport-high tiles with --tiles (OUT-000.png, ...).",
    )
    p.add_argument("page", metavar="PAGE", help="an .html file")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (or hub name)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--tiles", action="store_true", help="write viewport-high tiles, not one image")
    _config_argument(p)
    p.add_argument(
        "--timeout", type=float, help="seconds to render the page (overrides the config; 60)"
    )
    p.set_defaults(func=cmd_show)

    add_model_commands(sub, cores)
    return parser


def _tell_the_launcher(message: str) -> None:
    """Under torchrun (or `accelerate launch`), write the error where the launcher's summary of a
    failed job takes its root cause from (TORCHELASTIC_ERROR_FILE, one per process; the earliest
    error is the root cause), so that the summary ends with this message instead of "To enable
    traceback see ..."."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with contextlib.suppress(OSError):  # a full disk: the message is on stderr already
            Path(path).write_text(json.dumps({"message": message, "timestamp": int(time.time())}))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    code = 0
    try:
        if extra and args.command not in ("pretrain", "finetune"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra  # --model.KEY VALUE: architecture settings of a recipe
        code = args.func(args) or 0  # localize returns its verdict on the pages
    except UserError as e:
        message = f"layoutja {args.command}: error: {e}"
        print(message, file=sys.stderr)
        _tell_the_launcher(message)
        return 1
    except Preempted as e:
        print(f"layoutja {args.command}: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except BrokenPipeError:  # `layoutja tokenize ... | head`
        sys.stderr.close()
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
