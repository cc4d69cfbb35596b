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


def cmd_localize(args: argparse.Namespace) -> None:
    from layoutja.batch import HTML_SUFFIXES, localize_corpus, parse_shard

    src = Path(args.src)
    if src.is_file() and src.suffix.lower() in HTML_SUFFIXES:
        _localize_one(src, args)
        return
    if not args.out:
        raise UserError("--out is required when SRC is a directory or a glob")
    summary = localize_corpus(
        args.src,
        args.tokenizer,
        Path(args.out),
        workers=args.workers,
        shard=parse_shard(args.shard),
        timeout_s=args.timeout,
        pages_per_part=args.pages_per_part,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
    )
    totals = summary["totals"]
    print(
        f"localized {summary['ok']} page(s), {summary['failed']} failed, "
        f"{summary['skipped']} already done; {summary['tokens']} tokens "
        f"({summary['dropped_tokens']} not rendered, dropped); {summary['pages_per_s']} pages/s\n"
        f"{summary['out']} now holds {totals['pages']} pages, {totals['tokens']} tokens"
        + (f"; failures: {summary['failures']}" if summary["failures"] else ""),
        file=sys.stderr,
    )


def _localize_one(src: Path, args: argparse.Namespace) -> None:
    from layoutja.browser import Browser
    from layoutja.localize import localize_file
    from layoutja.tokenizer import JapaneseTokenizer

    tokenizer = JapaneseTokenizer.from_pretrained(args.tokenizer)
    with Browser(args.timeout) as browser:
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
    from layoutja.localize import show_page
    from layoutja.tokenizer import JapaneseTokenizer

    tokenizer = JapaneseTokenizer.from_pretrained(args.tokenizer)
    record, paths = show_page(Path(args.page), tokenizer, Path(args.out), tiles=args.tiles)
    print(
        f"{args.page}: {len(record['tokens'])} token boxes drawn; wrote "
        + ", ".join(map(str, paths)),
        file=sys.stderr,
    )


def cmd_init_model(args: argparse.Namespace) -> None:
    from layoutja.init_model import init_model, print_report

    report = init_model(args.bert, Path(args.out), args.tokenizer, args.max_2d_positions)
    print_report(report, args.bert)
    print(f"wrote LayoutLMForMaskedLM and its tokenizer to {args.out}", file=sys.stderr)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from layoutja.config import load_config
    from layoutja.pretrain import pretrain

    overrides = dict(args.overrides)
    if args.max_steps is not None:
        overrides["max_steps"] = str(args.max_steps)
    config = load_config(args.config, overrides)
    last = pretrain(
        config,
        args.data,
        args.out,
        init=args.init,
        tokenizer=args.tokenizer,
        resume=args.resume,
        progress=not args.quiet,
    )
    if last:
        print(f"step {last['step']}: loss {last['loss']}; model in {args.out}", file=sys.stderr)


def _overrides(extra: list[str]) -> list[tuple[str, str]]:
    """`--key value` / `--key=value` pairs left over by argparse (recipe overrides)."""
    pairs, i = [], 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--") or item == "--":
            raise UserError(f"unexpected argument {item!r} (overrides are --key value)")
        if "=" in item:
            key, value = item[2:].split("=", 1)
            i += 1
        elif i + 1 < len(extra):
            key, value = item[2:], extra[i + 1]
            i += 2
        else:
            raise UserError(f"{item}: needs a value")
        pairs.append((key, value))
    return pairs


def cmd_finetune(args: argparse.Namespace) -> None:
    from layoutja.config import FINETUNE_DEFAULTS, load_config
    from layoutja.finetune import finetune

    config = load_config(args.config, dict(args.overrides), FINETUNE_DEFAULTS)
    last = finetune(
        config,
        args.data,
        args.model,
        args.out,
        text_only=args.text_only,
        localized=args.localized,
        resume=args.resume,
        workers=args.workers,
        progress=not args.quiet,
    )
    if last:
        print(
            f"epoch {last['epoch']}: dev macro F1 {last['dev_macro_f1']}, "
            f"micro F1 {last['dev_micro_f1']}; model in {args.out}",
            file=sys.stderr,
        )


def cmd_predict(args: argparse.Namespace) -> None:
    from layoutja.finetune import predict

    count = predict(
        args.model,
        args.data,
        args.out,
        localized=args.localized,
        leaderboard=args.pages,
        max_length=args.max_length,
        margin=args.margin,
        workers=args.workers,
        progress=not args.quiet,
    )
    print(f"wrote {count} records to {args.out}", file=sys.stderr)


def cmd_fill_mask(args: argparse.Namespace) -> None:
    from layoutja.fillmask import fill_mask

    for n, candidates in enumerate(fill_mask(args.model, args.text, args.top_k), 1):
        print(f"[MASK] {n}:")
        for token, probability in candidates:
            print(f"  {probability:.4f}  {token}")


def cmd_plot(args: argparse.Namespace) -> None:
    from layoutja.plot import plot_runs

    plot_runs([Path(r) for r in args.runs], Path(args.out))
    print(f"wrote {args.out}", file=sys.stderr)


def cmd_score(args: argparse.Namespace) -> None:
    from layoutja.score import format_table, html_mismatches, read_jsonl, read_targets, score

    gold = [record for path in args.gold for record in read_jsonl(path)]
    pred = read_jsonl(args.pred)
    targets = read_targets(args.target) if args.target else None
    result = score(gold, pred, targets)
    print(format_table(result))
    if args.html:
        bad = html_mismatches(pred, args.html)
        print(f"\npredictions whose html_offset does not cut out their text: {len(bad)}")
        for record in bad:
            print(f"  {record['page_id']} {record['attribute']}: {record['problem']}")
    if args.out:  # html_offset scores at the top (the leaderboard's), the others beside them
        report = {**result.get("html_offset", {}), **{k: v for k, v in result.items()}}
        if args.html:
            report["html_mismatches"] = bad
        Path(args.out).write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n")


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
        "span, render at 1280x854 in headless Chromium (page scripts off, network blocked) and "
        "record each token's box and raw-HTML position. SRC is one .html file (the record is "
        "printed as JSON, or written to --out), or a directory (SHINRA layout html/<category>/"
        "<page_id>.html, or any tree of .html files) or a quoted glob: Parquet parts, a "
        "manifest and failures.jsonl go to --out. Re-running the same command resumes.",
    )
    p.add_argument("src", metavar="SRC", help="an .html file, a directory or a quoted glob")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (or hub name)")
    p.add_argument("--out", help="output directory (a .json file for a single page)")
    p.add_argument(
        "--workers", type=int, default=cores, help=f"browser processes (default: {cores})"
    )
    p.add_argument(
        "--shard", default="0/1", help="I/N: do only shard I of N (default: 0/1, everything)"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per page load (default: 60)"
    )
    p.add_argument(
        "--pages-per-part", type=int, default=500, help="pages per Parquet part (default: 500)"
    )
    p.add_argument("--retry-failed", action="store_true", help="try pages listed in failures again")
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
    p.add_argument("--tiles", action="store_true", help="write 1280x854 tiles, not one image")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "init-model",
        help="make a LayoutLM (MVLM) from a BERT checkpoint, with fresh 2-D embeddings",
        description="Copy every weight of a BERT checkpoint (BertForPreTraining, "
        "BertForMaskedLM or BertModel; a directory or a hub name) into a LayoutLMForMaskedLM "
        "whose x, y, h and w position embeddings are new, and write it with its tokenizer.",
    )
    p.add_argument("--from", dest="bert", required=True, metavar="BERT", help="BERT dir or name")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--tokenizer", help="tokenizer to ship with it (default: the BERT's own)")
    p.add_argument(
        "--max-2d-positions", type=int, default=1024, help="2-D embedding rows (default: 1024)"
    )
    p.set_defaults(func=cmd_init_model)

    p = sub.add_parser(
        "pretrain",
        allow_abbrev=False,  # unknown --key value pairs are recipe overrides, never abbreviations
        help="pretrain LayoutLM with MVLM on localized pages (1 CPU to many GPUs)",
        description="Train with a recipe from train/ on the Parquet output of `layoutja "
        "localize`. Runs directly or under `accelerate launch`. Any recipe setting can be "
        "overridden with --key value (e.g. --learning_rate 1e-4 --mixed_precision bf16). The "
        "output directory gets checkpoints/, metrics.jsonl, tensorboard/ and, at the end, a "
        "Hugging Face model with its tokenizer.",
    )
    p.add_argument("--config", help="YAML recipe (e.g. train/mvlm-base.yaml)")
    p.add_argument("--data", required=True, help="localized Parquet directory")
    p.add_argument("--init", help="BERT (converted on the fly) or LayoutLM directory / hub name")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model's or the data's)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--max-steps", type=int, help="override max_steps")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain, overrides=[])

    p = sub.add_parser(
        "finetune",
        allow_abbrev=False,
        help="fine-tune for SHINRA attribute extraction (token classification)",
        description="Localize the pages of a SHINRA directory (annotation/<ENE>_dist.jsonl, "
        "html/<ENE>/<page_id>.html, optionally an ENE definition JSONL), label their tokens "
        "from the annotations, and train LayoutLMForTokenClassification (or, with --text-only, "
        "BertForTokenClassification: the text-only baseline). The dev F1 (held-out pages, the "
        "SHINRA scorer) is logged after every epoch. Recipe settings can be overridden with "
        "--key value.",
    )
    p.add_argument("--data", required=True, help="SHINRA directory")
    p.add_argument("--model", required=True, help="LayoutLM (pretrained) or BERT directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", help="YAML recipe (e.g. train/finetune-shinra.yaml)")
    p.add_argument("--text-only", action="store_true", help="BERT without boxes (baseline)")
    p.add_argument("--localized", help="localized pages to reuse (default: OUT/localized)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--workers", type=int, default=cores, help="browser processes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_finetune, overrides=[])

    p = sub.add_parser(
        "predict",
        help="predict SHINRA attribute values with a fine-tuned model",
        description="Localize the pages of a SHINRA directory, label their tokens with a "
        "fine-tuned model (windows merged, margin/2 tokens dropped at inner edges) and write "
        "SHINRA records (page_id, title, ENE, attribute, html_offset with the exact raw text).",
    )
    p.add_argument("--model", required=True, help="fine-tuned model directory")
    p.add_argument("--data", required=True, help="SHINRA directory (html/<ENE>/<id>.html)")
    p.add_argument("--out", required=True, help="predictions JSONL")
    p.add_argument("--localized", help="localized pages to reuse (default: OUT.localized)")
    p.add_argument(
        "--pages", help="leaderboard input JSONL (page_id, title, ENEs): records per given ENE"
    )
    p.add_argument("--max-length", type=int, default=512, help="window length (default: 512)")
    p.add_argument("--margin", type=int, default=128, help="window overlap (default: 128)")
    p.add_argument("--workers", type=int, default=cores, help="browser processes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "fill-mask",
        help="print the top candidates for each [MASK] in a text",
        description="Text-only masked LMs answer through transformers' fill-mask pipeline; "
        "a LayoutLM (e.g. an MVLM run) gets the text rendered and localized first.",
    )
    p.add_argument("--model", required=True, help="model directory (with its tokenizer)")
    p.add_argument("text", metavar="TEXT", help="text with one or more [MASK]")
    p.add_argument("--top-k", type=int, default=5, help="candidates per mask (default: 5)")
    p.set_defaults(func=cmd_fill_mask)

    p = sub.add_parser(
        "plot",
        help="plot the loss (and dev F1) of training runs as a PNG",
        description="Read each run's metrics.jsonl and draw its loss curve (and the dev "
        "macro F1 of fine-tuning runs) in one PNG.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or metrics.jsonl)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "score",
        help="score SHINRA attribute-extraction output as the official scorer does",
        description="Per ENE and attribute precision, recall and F1 on exact offset matches "
        "(html_offset and text_offset separately), macro and micro averages, and the mean over "
        "ENEs; the official SHINRA scorer's conventions (see layoutja/score.py).",
    )
    p.add_argument(
        "--gold", required=True, nargs="+", help="gold annotations (JSONL; one file per ENE)"
    )
    p.add_argument("--pred", required=True, help="system output (JSONL)")
    p.add_argument("--target", help="page ids to score (CSV/lines; default: the gold pages)")
    p.add_argument("--out", help="write the scores as JSON here")
    p.add_argument("--html", help="HTML directory: check that offsets cut out each text")
    p.set_defaults(func=cmd_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if extra and args.command not in ("pretrain", "finetune"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if extra:
            args.overrides = _overrides(extra)
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
