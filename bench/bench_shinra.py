"""SHINRA fine-tuning data preparation and prediction at full size: bytes per token and pages/s.

A synthetic SHINRA 2022 set of the real shape is generated: 178 categories, each with its own
attributes plus a few shared ones (thousands of labels), pages of a few thousand tokens
(html/<ENE>/<page_id>.html, plain/, annotation/<ENE>_dist.jsonl, an ENE definition JSONL), and
its localized Parquet written directly through the localization store (no browser). Then:

- finetune: `FinetuneTask` is built as `layoutja finetune` builds it (pages read as arrays,
  labeled, split per category, cut into windows) with a tiny LayoutLM;
- the same pages held as Python lists, as fine-tuning held them before (ids, boxes, spans,
  labels and windows of lists), for comparison;
- predict: `layoutja predict`'s `predict()` on every page (a tiny LayoutLM; pages streamed,
  windows batched across pages, records with html_offset and text_offset), and on half of
  them, to show that its memory does not grow with the number of pages.

Each is run twice: timed (pages/s, RSS growth), then under tracemalloc (peak and held Python/numpy
bytes per token; torch's and Arrow's own allocations are not traced, the model's weights are not
per token).

    python bench/bench_shinra.py [--pages-per-category 4] [--tokens 3000]
    python bench/bench_shinra.py --layouts --tokens 600   # dev F1: id-named vs downloaded layout
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import re
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from layoutja.shinra.data import read_parts

CATEGORIES = 178
OWN_ATTRIBUTES = 20  # per category
SHARED_ATTRIBUTES = ["名前", "別名", "国", "所在地", "設立年"]
TOKENS_PER_LINE = 50
VOCAB = 2000
# the tiny models' vocabulary (the synthetic ids' tokens), as vocab.txt holds it
VOCAB_TXT = "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                      + [f"t{i}" for i in range(5, VOCAB)]) + "\n"  # fmt: skip


def make_set(root: Path, pages_per_category: int, tokens: int, seed: int = 0,
             downloaded: bool = False) -> dict:  # fmt: skip
    """The synthetic SHINRA directory and its localized Parquet; returns the counts and the ENE
    definitions file. `downloaded`: laid out as SHINRA 2022 is downloaded (categories named in
    English, html/Category_007/, annotation/Category_007_dist.jsonl; the definitions, with
    their name.en, in another directory), else by ENE id (html/1.0.7/, definitions inside)."""
    from layoutja.localize.store import Store, record_batch

    rng = np.random.default_rng(seed)
    (root / "annotation").mkdir(parents=True)
    definitions, pages, total = [], 0, 0
    vocab_hash = hashlib.sha256(VOCAB_TXT.encode()).hexdigest()  # as the models' tokenizer's
    store = Store(root / "localized", (0, 1), {"tokenizer_vocab_sha256": vocab_hash})
    for c in range(CATEGORIES):
        ene = f"1.{c // 10}.{c % 10}"
        name = f"Category_{c:03d}" if downloaded else ene  # the category's directory
        attributes = SHARED_ATTRIBUTES + [f"属性{c:03d}_{j:02d}" for j in range(OWN_ATTRIBUTES)]
        definitions.append({"ENE_id": ene, "name": {"en": f"Category_{c:03d}"}, "attributes": [
            {"name": a, "extraction_task": True} for a in attributes]})  # fmt: skip
        records = []
        for k in range(pages_per_category):
            page_id = str(10_000 * c + k)
            n = int(rng.integers(tokens // 2, tokens * 3 // 2))
            pages, total = pages + 1, total + n
            ids = rng.integers(5, VOCAB, n)
            words = [chr(0x4E00 + i) + chr(0x4E00 + i + 1) for i in ids]  # two characters each
            lines = [f"<html><head><title>頁{page_id} - Wikipedia</title></head><body>"]
            lines += ["<p>" + "".join(words[i : i + TOKENS_PER_LINE]) + "</p>"
                      for i in range(0, n, TOKENS_PER_LINE)]  # fmt: skip
            lines.append("</body></html>")
            html = "\n".join(lines)
            plain = re.sub(r"<[^>]*>", "", html)  # SHINRA's plain text: tags removed
            for path, text in ((root / "html" / name / f"{page_id}.html", html),
                               (root / "plain" / name / f"{page_id}.txt", plain)):  # fmt: skip
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            t = np.arange(n)
            line, column = 1 + t // TOKENS_PER_LINE, 3 + 2 * (t % TOKENS_PER_LINE)
            span = np.stack([line, column, line, column + 2], 1)
            x0, y0 = (t % TOKENS_PER_LINE) * 19 + 20, (t // TOKENS_PER_LINE) * 9 % 990
            box = np.stack([x0, y0, x0 + 18, y0 + 8], 1)
            store.add(record_batch({
                "page_id": page_id, "category": name, "source": f"{name}/{page_id}.html",
                "encoding": "utf-8", "tokens": words, "input_ids": ids, "bbox": box, "px": box,
                "html_span": span, "dropped": 0, "viewport_width": 1280, "page_width": 1280.0,
                "page_height": 10_000.0, "body": [0.0, 0.0, 1280.0, 10_000.0]}))  # fmt: skip
            for start in rng.choice(n // 8, size=min(20, n // 8), replace=False) * 8:
                length = int(rng.integers(1, 7))
                l0, c0 = int(span[start][0]), int(span[start][1])
                if span[start + length - 1][0] != l0:
                    continue  # values on one line
                c1 = int(span[start + length - 1][3])
                value = lines[l0][c0:c1]
                offset = {"start": {"line_id": l0, "offset": c0},
                          "end": {"line_id": l0, "offset": c1}, "text": value}  # fmt: skip
                records.append({"page_id": page_id, "title": f"頁{page_id}", "ENE": ene,
                                "attribute": str(rng.choice(attributes)),
                                "html_offset": offset})  # fmt: skip
        with open(root / "annotation" / f"{name}_dist.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    store.close()
    path = root / "ENE_definition.jsonl"
    if downloaded:
        path = root.parent / "attribute_extraction" / "Shinra2022_ENE_Definition.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in definitions)
    labels = 1 + 2 * (CATEGORIES * OWN_ATTRIBUTES + len(SHARED_ATTRIBUTES))
    return {"pages": pages, "tokens": total, "labels": labels, "definitions": path}


def tiny_layoutlm(out: Path, labels: int, classifier: bool) -> Path:
    """A tiny LayoutLM (token classifier when `classifier`, else masked LM) with a hand-written
    MeCab tokenizer directory of VOCAB tokens (the synthetic ids)."""
    from transformers import LayoutLMConfig, LayoutLMForMaskedLM, LayoutLMForTokenClassification

    names = {i: "O" if i == 0 else f"{'BI'[(i - 1) % 2]}-a{(i - 1) // 2}" for i in range(labels)}
    config = LayoutLMConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=128,
                            max_position_embeddings=512, num_labels=labels, id2label=names,
                            label2id={v: k for k, v in names.items()})  # fmt: skip
    model = (LayoutLMForTokenClassification if classifier else LayoutLMForMaskedLM)(config)
    model.save_pretrained(out)
    (out / "vocab.txt").write_text(VOCAB_TXT, encoding="utf-8")
    tokenizer = {"tokenizer_class": "BertJapaneseTokenizer", "word_tokenizer_type": "mecab",
                 "subword_tokenizer_type": "wordpiece",
                 "mecab_kwargs": {"mecab_dic": "unidic_lite"}}  # fmt: skip
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return out


def finetune_data(root: Path, model: Path, out: Path, definitions: Path | None = None):
    """FinetuneTask as `layoutja finetune` builds it with the published recipe's windows."""
    from layoutja.shinra.finetune import FinetuneTask
    from layoutja.training.config import load_config
    from layoutja.training.trainer import Trainer

    recipe = load_config(Path(__file__).parents[1] / "train" / "finetune-shinra.yaml", {})
    trainer = Trainer(recipe, out)
    return FinetuneTask(recipe, trainer, root, str(model), root / "localized", out,
                        definitions=definitions)  # fmt: skip


def as_lists(root: Path):
    """The pages held as fine-tuning held them before: rows of Python lists, labels as a list,
    and every window as a dict of lists (510 + 2 tokens, margin 128)."""
    import pyarrow.parquet as pq

    from layoutja.pretrain.order import window_spans
    from layoutja.shinra.data import load_pages

    labels = {
        p.page_id: p.labels.tolist()
        for p in load_pages(root, root / "localized", overlaps="first").pages
    }
    parts = sorted((root / "localized").glob("part-*.parquet"))
    columns = ["page_id", "category", "input_ids", "bbox", "html_span"]
    rows = pq.read_table(parts, columns=columns).to_pylist()
    windows = []
    for row in rows:
        row["labels"] = labels[row["page_id"]]
        for start, end in window_spans(len(row["input_ids"]), 510, 128):
            windows.append({"input_ids": [2, *row["input_ids"][start:end], 3],
                            "bbox": [[0] * 4, *row["bbox"][start:end], [1000] * 4],
                            "labels": [-100, *row["labels"][start:end], -100],
                            "span": (start, end)})  # fmt: skip
    return rows, windows


def predict_all(root: Path, model: Path, out: Path, pages: list[str] | None = None) -> dict:
    """`predict()` on the set, or (with `pages`) on those pages through a leaderboard input."""
    from layoutja.shinra.predict import predict

    leaderboard = None
    if pages is not None:
        ene = {p.name[:-5]: p.parent.name for p in (root / "html").glob("*/*.html")}
        leaderboard = out.with_suffix(".pages.jsonl")
        leaderboard.write_text("".join(json.dumps({"page_id": p, "title": "", "ENEs": {
            "bench": [{"prob": 1.0, "ENE": ene[p]}]}}) + "\n" for p in pages))  # fmt: skip
    return predict(model, root, root / "localized", out, leaderboard=leaderboard)


def dev_f1_by_layout(work: Path, pages_per_category: int, tokens: int) -> dict:
    """The dev F1 of the gold labels, given as a model's predictions, on one synthetic set laid
    out by ENE id and as SHINRA 2022 is downloaded: the way from labels to records and their
    scoring, which must not depend on how the category directories are named."""
    from layoutja.shinra.classifier import TokenClassifier

    class GoldLabels(TokenClassifier):
        def top_labels(self, batch: dict, k: int):
            return batch["labels"].clamp(min=0).unsqueeze(-1)

    scores = {}
    for layout in ("id", "downloaded"):
        root = work / layout / "shinra"
        counts = make_set(root, pages_per_category, tokens, downloaded=layout == "downloaded")
        base = tiny_layoutlm(work / layout / "base", counts["labels"], classifier=False)
        task = finetune_data(root, base, work / layout / "ft", counts["definitions"])
        result = task.evaluate(GoldLabels(task.model.model, text_only=False), task.max_steps)
        scores[layout] = {"dev_pages": len(task.dev), "dev_macro_f1": result["dev_macro_f1"],
                          "dev_micro_f1": result["dev_micro_f1"]}  # fmt: skip
        first = next((root / "html").iterdir()).name
        print(f"layout {layout:<10} (html/{first}/ ...): {len(task.dev)} dev pages, gold labels "
              f"as predictions: dev macro F1 {result['dev_macro_f1']}, micro F1 "
              f"{result['dev_micro_f1']}", flush=True)  # fmt: skip
    return scores


def rss() -> int:
    """The process's peak resident memory so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(name: str, run, tokens: int, pages: int) -> dict:
    """Run twice: timed (pages/s, peak RSS growth), then traced (peak and held bytes)."""
    gc.collect()
    before = rss()
    clock = time.perf_counter()
    kept = run()
    seconds = time.perf_counter() - clock
    grown = rss() - before
    del kept
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    kept = run()
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    row = {
        "what": name,
        "pages": pages,
        "tokens": tokens,
        "pages_per_s": pages / seconds,
        "held_bytes_per_token": (held - start) / tokens,
        "peak_bytes_per_token": (peak - start) / tokens,
        "rss_growth_bytes_per_token": grown / tokens,
        "peak_mib": (peak - start) / 2**20,
    }
    print(f"{name:<30} {pages:>6} {tokens:>9} {row['pages_per_s']:>8.1f}"
          f" {row['held_bytes_per_token']:>7.1f} {row['peak_bytes_per_token']:>7.1f}"
          f" {row['rss_growth_bytes_per_token']:>7.1f} {row['peak_mib']:>9.1f}",
          flush=True)  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages-per-category", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=3000, help="mean tokens a page")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument(
        "--layouts",
        action="store_true",
        help="only the dev F1 of the set laid out by ENE id and as downloaded (English category "
        "names, the definitions elsewhere), 10 pages a category",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-shinra-"))
    if args.layouts:
        scores = dev_f1_by_layout(work, max(args.pages_per_category, 10), args.tokens)
        if args.json:
            Path(args.json).write_text(json.dumps(scores, indent=1))
        return
    counts = make_set(work / "shinra", args.pages_per_category, args.tokens)
    print(f"synthetic SHINRA set: {CATEGORIES} categories, {counts['pages']} pages, "
          f"{counts['tokens']} tokens, {counts['labels']} labels ({work})",
          file=sys.stderr)  # fmt: skip
    root, pages, tokens = work / "shinra", counts["pages"], counts["tokens"]
    base = tiny_layoutlm(work / "base", counts["labels"], classifier=False)
    fine = tiny_layoutlm(work / "fine", counts["labels"], classifier=True)
    print(
        f"{'':30} {'pages':>6} {'tokens':>9} {'pages/s':>8} {'held':>7} {'peak':>7} "
        f"{'RSS+':>7} {'peak MiB':>9}   (held, peak, RSS+: bytes a token)"
    )
    rows = [
        measure("finetune data (arrays)", lambda: finetune_data(root, base, work / "ft"),
                tokens, pages),
        measure("finetune data (lists, before)", lambda: as_lists(root), tokens, pages),
        measure("predict (all pages)", lambda: predict_all(root, fine, work / "p.jsonl"),
                tokens, pages),
    ]  # fmt: skip
    lengths = {p.page_id: len(p.input_ids) for part in read_parts(root / "localized", root)
               for p in part}  # fmt: skip
    ids = sorted(lengths)[::2]
    rows.append(measure("predict (half of the pages)",
                        lambda: predict_all(root, fine, work / "h.jsonl", ids),
                        sum(lengths[i] for i in ids), len(ids)))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"set": counts, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
