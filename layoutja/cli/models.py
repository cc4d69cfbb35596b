"""`layoutja` subcommands of the model stages: init-model, pretrain, finetune, predict,
fill-mask, plot, score and compare (the data stages are in layoutja.cli.main)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from layoutja.common import UserError
from layoutja.training.config import add_recipe_arguments


def without_bars(command: Callable[[argparse.Namespace], None]):
    """`command` with transformers' progress bars off: loading or writing a model's weights
    takes a second or two, and bars for it would bury layoutja's own lines (hub downloads keep
    their bars: they are huggingface_hub's)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> None:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        command(args)

    return run


def cmd_init_model(args: argparse.Namespace) -> None:
    from layoutja.pretrain.from_bert import init_model, print_report

    report = init_model(
        args.bert, Path(args.out), args.tokenizer, args.max_2d_positions, args.revision
    )
    print_report(report, args.bert)
    print(f"wrote LayoutLMForMaskedLM and its tokenizer to {args.out}", file=sys.stderr)


def add_definitions_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--definitions",
        metavar="FILE",
        help="the ENE definitions JSONL (ENE_id, name.en, attributes with extraction_task; "
        "SHINRA 2022: Shinra2022_ENE_Definition_*.jsonl of the leaderboard input); default: "
        "the *definition*.jsonl in --data, if any",
    )


def _recipe(args: argparse.Namespace):
    from layoutja.training.config import load_config, recipe_overrides

    return load_config(args.config, recipe_overrides(args, args.extra, args.command))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from layoutja.pretrain.task import pretrain

    last = pretrain(
        _recipe(args),
        args.data,
        args.out,
        init=args.init,
        init_generator=args.init_generator,
        tokenizer=args.tokenizer,
        revision=args.revision,
        resume=args.resume,
        progress=not args.quiet,
    )
    if last:
        print(f"step {last['step']}: loss {last['loss']}; model in {args.out}", file=sys.stderr)


def cmd_finetune(args: argparse.Namespace) -> None:
    from layoutja.shinra.finetune import finetune

    recipe = _recipe(args)
    last = finetune(
        recipe,
        args.data,
        args.model,
        args.localized,
        args.out,
        tokenizer=args.tokenizer,
        revision=args.revision,
        definitions=args.definitions,
        resume=args.resume,
        progress=not args.quiet,
    )
    best = last.get("best")
    if best:
        print(f"epoch {last['epoch']}: dev macro F1 {last['dev_macro_f1']}, micro F1 "
              f"{last['dev_micro_f1']}\nthe model in {args.out} is epoch {best['epoch']}'s, the "
              f"best on dev (macro F1 {best['dev_macro_f1']}, micro F1 {best['dev_micro_f1']}); "
              f"the last epoch's is in {Path(args.out) / 'last'}", file=sys.stderr)  # fmt: skip
    elif last:
        print(f"step {last['step']}: loss {last['loss']}; the model (no dev pages: the last) is "
              f"in {args.out}", file=sys.stderr)  # fmt: skip


def cmd_predict(args: argparse.Namespace) -> None:
    from layoutja.shinra.predict import predict
    from layoutja.shinra.score import read_targets

    counts = predict(
        args.model,
        args.data,
        args.localized,
        args.out,
        leaderboard=args.pages,
        system=args.system,
        targets=read_targets(args.target) if args.target else None,
        bridge=args.bridge_gaps,
        top_k=args.top_k,
        max_length=args.max_length,
        margin=args.margin,
        batch_size=args.batch_size,
        tokenizer=args.tokenizer,
        revision=args.revision,
        precision=args.precision,
        definitions=args.definitions,
    )
    print(f"wrote {counts['records']} records for {counts['pages']} pages to {args.out}",
          file=sys.stderr)  # fmt: skip
    undefined = counts["undefined_enes"]
    if undefined:
        listed = ", ".join(f"{ene} ({n})" for ene, n in sorted(undefined.items()))
        print(f"warning: {sum(undefined.values())} pages of {args.pages} are classified "
              f"(--system {args.system or 'the only one'}) as ENEs that the definitions "
              f"({args.definitions or args.data}) do not list, so no attribute is kept for "
              f"them: {listed}",
              file=sys.stderr)  # fmt: skip
    if counts["not_localized"]:
        print(f"warning: {counts['not_localized']} pages of {args.pages} are not localized in "
              f"{args.localized}: no predictions for them", file=sys.stderr)  # fmt: skip


def cmd_fill_mask(args: argparse.Namespace) -> None:
    from layoutja.pretrain.fillmask import fill_mask

    answers = fill_mask(
        args.model, args.text, args.top_k, tokenizer=args.tokenizer, revision=args.revision
    )
    for n, candidates in enumerate(answers, 1):
        print(f"[MASK] {n}:")
        for token, probability in candidates:
            print(f"  {probability:.4f}  {token}")


def cmd_plot(args: argparse.Namespace) -> None:
    from layoutja.training.plot import plot_runs

    plot_runs([Path(r) for r in args.runs], Path(args.out))
    print(f"wrote {args.out}", file=sys.stderr)


def cmd_score(args: argparse.Namespace) -> None:
    from layoutja.shinra.score import (
        format_table,
        html_mismatches,
        read_jsonl,
        read_targets,
        score,
        score_leaderboard,
    )

    gold = [record for path in args.gold for record in read_jsonl(path)]
    pred = read_jsonl(args.pred)
    if args.convention == "2019":
        result = score(gold, pred, read_targets(args.target) if args.target else None)
        # html_offset scores at the top (the leaderboard's), every kind's beside them
        report = {**result.get("html_offset", next(iter(result.values()))), **result}
    elif args.target:
        raise UserError("--target is for --convention 2019; leaderboard-2022 scores the gold pages")
    else:
        report = score_leaderboard(gold, pred)
        result = {args.convention: report}
    print(format_table(result))
    if args.html:
        bad = html_mismatches(pred, args.html)
        print(f"\npredictions whose html_offset does not cut out their text: {len(bad)}")
        for record in bad:
            print(f"  {record['page_id']} {record['attribute']}: {record['problem']}")
    if args.out:
        report = {"convention": args.convention, **report}
        if args.html:
            report["html_mismatches"] = bad
        Path(args.out).write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n")


def cmd_compare(args: argparse.Namespace) -> None:
    from layoutja.shinra.compare import compare, format_comparison
    from layoutja.shinra.score import read_jsonl, read_targets

    systems = {}
    for given in args.pred:
        name, sep, path = given.partition("=")
        if not sep or not name:
            raise UserError(f"--pred {given!r}: write NAME=PREDICTIONS.jsonl")
        systems[name] = read_jsonl(path)
    gold = [record for path in args.gold for record in read_jsonl(path)]
    pages = read_targets(args.target) if args.target else None
    result = compare(gold, systems, Path(args.html), pages)
    table = format_comparison(result)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")
        Path(args.out).with_suffix(".json").write_text(
            json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )


def add_revision_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--revision",
        help="the model's hub revision: a branch, tag or commit (NAME@REVISION works too)",
    )


def add_tokenizer_argument(p: argparse.ArgumentParser) -> None:
    """--tokenizer and --revision of a command that takes a model."""
    p.add_argument(
        "--tokenizer",
        help="the MeCab tokenizer (directory or hub name) when the model's own files are not "
        "a MeCab BertJapaneseTokenizer; its vocabulary must be the model's (for "
        "jri-advtechlab/layoutlm-wikipedia-ja: cl-tohoku/bert-base-japanese-v2)",
    )
    add_revision_argument(p)


def add_model_commands(sub: argparse._SubParsersAction, cores: int) -> None:
    """The model-stage subcommands: init-model, pretrain, finetune, predict, fill-mask, plot,
    score."""
    p = sub.add_parser(
        "init-model",
        help="make a LayoutLM (MVLM) from a BERT checkpoint, with fresh 2-D embeddings",
        description="Copy every weight of a BERT checkpoint (BertForPreTraining, "
        "BertForMaskedLM or BertModel; a directory or a hub name) into a LayoutLMForMaskedLM "
        "whose x, y, h and w position embeddings are new, and write it with its tokenizer.",
    )
    p.add_argument("--from", dest="bert", required=True, metavar="BERT", help="BERT dir or name")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--tokenizer", help="MeCab tokenizer to ship with it (default: the BERT's own)")
    add_revision_argument(p)
    p.add_argument(
        "--max-2d-positions", type=int, default=1024, help="2-D embedding rows (default: 1024)"
    )
    p.set_defaults(func=without_bars(cmd_init_model))

    p = sub.add_parser(
        "pretrain",
        allow_abbrev=False,
        help="pretrain LayoutLM (MVLM) or ELECTRA (1 CPU to many GPUs)",
        description="Train with a recipe from train/ (objective mvlm or electra) on the "
        "Parquet output of `layoutja localize`, or, for text-only ELECTRA, on a plain-text "
        "corpus (one sentence per line, a blank line between documents). Runs directly or under "
        "`accelerate launch`. Every recipe setting can be overridden as --section.key VALUE "
        "(e.g. --optimizer.learning_rate 1e-4 --schedule.mixed_precision bf16 "
        "--electra.layout false --model.hidden_size 128). The output directory gets "
        "checkpoints/, metrics.jsonl, tensorboard/ and, at the end, the Hugging Face model(s) "
        "with the tokenizer (ELECTRA: generator/ and discriminator/).",
    )
    p.add_argument(
        "--data", required=True, help="localized Parquet directory, or a text file/directory"
    )
    p.add_argument(
        "--init",
        help="MVLM: a BERT (converted on the fly) or a LayoutLM; ELECTRA: an export (generator/ "
        "and discriminator/), or with --init-generator a published discriminator; a directory "
        "or a hub name",
    )
    p.add_argument(
        "--init-generator",
        metavar="NAME",
        help="ELECTRA: the generator published beside the --init discriminator (e.g. "
        "izumi-lab/electra-base-japanese-generator); with electra.layout true both are made "
        "layout-aware (every weight copied, 2-D embeddings new); pin with NAME@REVISION",
    )
    p.add_argument(
        "--tokenizer",
        help="MeCab tokenizer, a directory or a hub name (default: the initial model's own, "
        "else the data's; required to train from scratch on text)",
    )
    add_revision_argument(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_recipe_arguments(p, "pretrain")
    p.set_defaults(func=without_bars(cmd_pretrain))

    p = sub.add_parser(
        "finetune",
        allow_abbrev=False,
        help="fine-tune for SHINRA attribute extraction (token classification)",
        description="Label the tokens of a SHINRA directory's pages "
        "(annotation/<category>_dist.jsonl, html/<category>/<page_id>.html, categories named by "
        "ENE id or in English as SHINRA 2022 is downloaded; optionally the ENE definitions), "
        "localized beforehand "
        "with `layoutja localize DATA/html --tokenizer MODEL --out LOCALIZED`, and train "
        "LayoutLMForTokenClassification (or, with finetune.text_only, a BERT or text-only "
        "ELECTRA token classifier: the baseline). The dev F1 (held-out pages, the SHINRA "
        "scorer) is logged after every epoch. Recipe settings: --section.key VALUE.",
    )
    p.add_argument("--data", required=True, help="SHINRA directory")
    add_definitions_argument(p)
    p.add_argument(
        "--model",
        required=True,
        help="LayoutLM (pretrained), BERT or ELECTRA discriminator: a directory or a hub name",
    )
    add_tokenizer_argument(p)
    p.add_argument(
        "--localized", required=True, help="the pages localized with the model's tokenizer"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_recipe_arguments(p, "finetune")
    p.set_defaults(func=without_bars(cmd_finetune))

    p = sub.add_parser(
        "predict",
        help="predict SHINRA attribute values with a fine-tuned model",
        description="Label the tokens of a SHINRA directory's pages, localized beforehand, "
        "with a fine-tuned model (windows merged, margin/2 tokens dropped at inner edges) and "
        "write SHINRA records (page_id, title, ENE, attribute, html_offset with the exact raw "
        "text, and text_offset where DATA/plain/ gives the page's plain text). Each page's ENE "
        "is its category directory's ENE id or, with --pages, the leaderboard input's "
        "highest-prob ENE; labels are chosen and gaps fixed as the published system did: per "
        "token the first of the top --top-k labels that is O or the ENE's, then --bridge-gaps.",
    )
    p.add_argument("--model", required=True, help="fine-tuned model: a directory or a hub name")
    add_tokenizer_argument(p)
    p.add_argument("--data", required=True, help="SHINRA directory (html/<category>/<id>.html)")
    add_definitions_argument(p)
    p.add_argument("--out", required=True, help="predictions JSONL")
    p.add_argument("--localized", required=True, help="the pages, localized beforehand")
    p.add_argument(
        "--pages",
        help="leaderboard input JSONL (page_id, title, ENEs): predict these pages, each as its "
        "highest-prob ENE (needs the ENE definitions)",
    )
    p.add_argument("--system", help="--pages: the system (key of ENEs) to take ENEs from")
    p.add_argument("--target", help="only these page ids (CSV/lines, e.g. OUT/dev_pages.txt)")
    p.add_argument(
        "--bridge-gaps",
        type=int,
        metavar="N",
        help="the published gap fixing over runs of up to N O tokens (default: the model's "
        "finetune.bridge_gaps, else 3 as published; 0: off)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="per token, the first of the model's top K labels that is O or the page ENE's "
        "(default: the model's finetune.top_k, else 5 as published)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="windows per batch (default: 16)")
    p.add_argument(
        "--precision",
        choices=["fp16", "bf16", "no"],
        help="autocast precision of the model (default: fp16 on a GPU, fp32 on the CPU)",
    )
    p.add_argument("--max-length", type=int, default=512, help="window length (default: 512)")
    p.add_argument("--margin", type=int, default=128, help="window overlap (default: 128)")
    p.set_defaults(func=without_bars(cmd_predict))

    p = sub.add_parser(
        "fill-mask",
        help="print the top candidates for each [MASK] in a text",
        description="Text-only masked LMs answer through transformers' fill-mask pipeline; "
        "a LayoutLM (e.g. an MVLM run) gets the text rendered and localized first.",
    )
    p.add_argument("--model", required=True, help="masked LM: a directory or a hub name")
    add_tokenizer_argument(p)
    p.add_argument("text", metavar="TEXT", help="text with one or more [MASK]")
    p.add_argument("--top-k", type=int, default=5, help="candidates per mask (default: 5)")
    p.set_defaults(func=without_bars(cmd_fill_mask))

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
        help="score SHINRA attribute-extraction output as the official scorer or the 2022 "
        "leaderboard does",
        description="Per ENE and attribute precision, recall and F1 on exact offset matches, "
        "macro and micro averages. --convention 2019 (default): the official SHINRA scorer's "
        "(html_offset and text_offset separately, attribute names ASCII to full width, overall "
        "macro = the mean over ENEs); leaderboard-2022: the SHINRA 2022 leaderboard's (both "
        "offset kinds together, macro = the mean over all gold (ENE, attribute) pairs). See "
        "layoutja/shinra/score.py.",
    )
    p.add_argument(
        "--gold", required=True, nargs="+", help="gold annotations (JSONL; one file per ENE)"
    )
    p.add_argument("--pred", required=True, help="system output (JSONL)")
    p.add_argument(
        "--convention",
        choices=["2019", "leaderboard-2022"],
        default="2019",
        help="2019 (default): the official scorer's; leaderboard-2022: the 2022 leaderboard's",
    )
    p.add_argument("--target", help="2019: page ids to score (CSV/lines; default: the gold pages)")
    p.add_argument("--out", help="write the scores as JSON here (macro, micro at the top)")
    p.add_argument("--html", help="HTML directory: check that offsets cut out each text")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "compare",
        help="score two systems side by side per attribute, by where the values sit",
        description="Score each system (e.g. the layout-aware model and the text-only baseline, "
        "fine-tuned on the same split) under both conventions (2019 html_offset F1 and the 2022 "
        "leaderboard's), per attribute, per location of its gold values in the raw HTML "
        "(infobox, table, list, running text) and overall, as one Markdown table; the "
        "difference is the first system's F1 minus the second's.",
    )
    p.add_argument("--gold", required=True, nargs="+", help="gold annotations (JSONL)")
    p.add_argument(
        "--pred", required=True, nargs="+", metavar="NAME=FILE", help="each system's output"
    )
    p.add_argument("--html", required=True, help="HTML directory of the pages")
    p.add_argument("--target", help="page ids to score (CSV/lines; default: the gold pages)")
    p.add_argument("--out", help="write the table here (and the scores as JSON beside it)")
    p.set_defaults(func=cmd_compare)
