"""Prediction: a fine-tuned model's labels for localized pages, streamed, and SHINRA records.

Pages are read a Parquet part at a time and their windows batched across pages, so memory
does not grow with the number of pages and the accelerator gets full batches; each page is
decoded (its raw HTML read once) as soon as its last window is labeled, then dropped.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from layoutja.common import UserError, device, inference_precision
from layoutja.hub import resolve, tokenizer_for
from layoutja.localize.manifest import check_vocabulary
from layoutja.pretrain.order import window_spans
from layoutja.pretrain.windows import SpecialIds
from layoutja.shinra.classifier import TokenClassifier, labeled_batch
from layoutja.shinra.data import Page, ShinraDir, merge_windows, read_parts, window
from layoutja.shinra.labels import read_annotations
from layoutja.shinra.leaderboard import read_leaderboard
from layoutja.shinra.records import Decoder, spelling_for, write_jsonl
from layoutja.text.tokenizer import load_vocab
from layoutja.training.config import Finetune


@torch.no_grad()
def predict_pages(
    classifier: TokenClassifier, pages: Iterable[Page], specials: SpecialIds, max_length: int,
    margin: int, batch_size: int = 16, precision: str | None = None, top_k: int = 1,
) -> Iterator[tuple[Page, np.ndarray]]:  # fmt: skip
    """(page, its tokens' `top_k` best label ids, (tokens, top_k), best first) for each page in
    order, windows merged (inner edges lose margin // 2); batches of `batch_size` windows, from
    one page or several, go to the classifier's device and run in `precision`
    (`inference_precision`)."""
    device = next(classifier.parameters()).device
    top_k = min(top_k, classifier.num_labels)
    pending: deque = deque()  # [page, labels, windows not labeled yet], in page order
    batch: list = []  # (pending entry, window span, the range it decides)

    def run() -> None:
        items = [window(entry[0], *span, specials) for entry, span, _ in batch]
        tensors = {k: v.to(device) for k, v in labeled_batch(items, specials.pad).items()}
        with inference_precision(device, precision):
            predicted = classifier.top_labels(tensors, top_k).cpu().numpy()
        for (entry, (start, _), (first, last)), row in zip(batch, predicted):
            entry[1][first:last] = row[1 + first - start : 1 + last - start]
            entry[2] -= 1
        batch.clear()

    classifier.eval()
    try:
        for page in pages:
            spans = window_spans(len(page.input_ids), max_length - 2, margin)
            top = np.zeros((len(page.input_ids), top_k), dtype=np.int32)
            entry = [page, top, len(spans)]
            pending.append(entry)
            for span, decides in zip(spans, merge_windows(len(entry[1]), spans, margin)):
                batch.append((entry, span, decides))
                if len(batch) == batch_size:
                    run()
            while pending and pending[0][2] == 0:
                yield pending.popleft()[:2]
        if batch:
            run()
        while pending:
            yield pending.popleft()[:2]
    finally:
        classifier.train()


def predict(
    model: str | Path, shinra_dir: str | Path, localized: str | Path, out: str | Path, *,
    leaderboard: str | Path | None = None, system: str | None = None,
    targets: set[str] | None = None, bridge: int | None = None, top_k: int | None = None,
    max_length: int = 512, margin: int = 128, batch_size: int = 16,
    tokenizer: str | None = None, revision: str | None = None, precision: str | None = None,
    definitions: str | Path | None = None,
) -> dict:  # fmt: skip
    """Write SHINRA records predicted by a fine-tuned `model` (a directory or a hub name at
    `revision`) for the pages of `shinra_dir`, localized beforehand into `localized`, on the
    accelerator when there is one. Each page's ENE is its category directory's (its ENE id,
    `ShinraDir.categories`), or with a `leaderboard` input (system `system`) the one given
    there, and only the pages it lists are predicted; only that ENE's attributes are kept (the
    ENE definitions', of the file `definitions` or the one in `shinra_dir`, which a leaderboard
    input needs; without them, the annotated ones). `top_k` (labels chosen among the top k) and
    `bridge` (gap bridging) default to the model's fine-tuning recipe's. Returns the counts:
    records, pages, and leaderboard pages not localized, and the leaderboard's ENEs the
    definitions lack (ENE → pages; those pages get no records)."""
    from transformers import AutoModelForTokenClassification

    dirs = ShinraDir.of(Path(shinra_dir), definitions)
    model_dir = resolve(model, revision)
    tokenizer_dir = tokenizer_for(model_dir, tokenizer, str(model))
    check_vocabulary(Path(localized), tokenizer_dir, tokenizer or str(model))
    vocab = load_vocab(tokenizer_dir / "vocab.txt")
    specials = SpecialIds.from_vocab(vocab)
    try:
        classifier = AutoModelForTokenClassification.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"{model}: not a fine-tuned model: {e}") from None
    config = classifier.config
    names = [config.id2label[i] for i in range(config.num_labels)]
    # as the model was evaluated; the published rules for other models
    bridge = getattr(config, "bridge_gaps", Finetune().bridge_gaps) if bridge is None else bridge
    top_k = getattr(config, "label_top_k", Finetune().top_k) if top_k is None else top_k
    classifier = TokenClassifier(classifier, text_only=config.model_type != "layoutlm")
    classifier.to(device())
    annotations = read_annotations(dirs.annotations)
    attributes = dirs.attributes(annotations)
    given = read_leaderboard(leaderboard, system) if leaderboard else None
    if given is not None and dirs.definitions is None:
        raise UserError(f"{shinra_dir}: --pages needs the ENE definitions: give --definitions "
                        "FILE (or put the *definition*.jsonl in it)")  # fmt: skip
    ene_id = dirs.categories(annotations).ene_id if given is None else None
    labeled = {name[2:] for name in names[1:]}
    seen, undefined = set(), Counter()  # pages predicted; leaderboard ENEs not defined: pages

    def pages() -> Iterator[Page]:
        for part in read_parts(Path(localized), dirs.html, ene_id):
            for page in part:
                listed = given is None or page.page_id in given
                if listed and (targets is None or page.page_id in targets):
                    seen.add(page.page_id)
                    yield page

    def records() -> Iterator[dict]:
        decoder = Decoder(dirs, names, bridge)
        for page, labels in predict_pages(classifier, pages(), specials, max_length, margin,
                                          batch_size, precision, top_k):  # fmt: skip
            ene = page.ene
            if given is not None:
                page.title, ene = given[page.page_id]
            # A category that no attribute list names keeps every attribute, unless it is
            # the leaderboard's choice (the published system kept only the category's).
            known = given is not None or ene in attributes
            if given is not None and ene not in attributes:
                undefined[ene] += 1
            spelling = spelling_for(attributes, ene, labeled) if known else None
            yield from decoder.records(page, labels, ene, spelling)

    count = write_jsonl(records(), Path(out))
    missing = len(set(given) - seen) if given is not None else 0
    return {"records": count, "pages": len(seen), "not_localized": missing,
            "undefined_enes": dict(undefined)}  # fmt: skip
