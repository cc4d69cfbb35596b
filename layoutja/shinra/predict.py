"""Prediction: a fine-tuned model's labels back into SHINRA records whose `html_offset.text` is
exactly the raw HTML between the offsets."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from layoutja.common import UserError, device
from layoutja.hub import resolve, tokenizer_for
from layoutja.pretrain.windows import SpecialIds
from layoutja.shinra.classifier import TokenClassifier, labeled_batch
from layoutja.shinra.data import (
    Page,
    ShinraSet,
    decode,
    load_pages,
    merge_windows,
    read_leaderboard_pages,
    windows,
)
from layoutja.shinra.rawpage import RawPage
from layoutja.text.tokenizer import load_vocab


@torch.no_grad()
def predict_labels(
    classifier: TokenClassifier, pages: list[Page], specials: SpecialIds, max_length: int,
    margin: int, batch_size: int = 16,
) -> list[list[int]]:  # fmt: skip
    """A label id per token of each page, windows merged (inner edges lose margin // 2); the
    batches go to the classifier's device."""
    device = next(classifier.parameters()).device
    classifier.eval()
    out = []
    for page in pages:
        items = windows(page, specials, max_length, margin)
        labels = [0] * len(page.input_ids)
        keep = merge_windows(len(labels), [w["span"] for w in items], margin)
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            batch = {k: v.to(device) for k, v in labeled_batch(chunk, specials.pad).items()}
            predicted = classifier.labels(batch).tolist()
            for w, row, (first, last) in zip(chunk, predicted, keep[i : i + batch_size]):
                start = w["span"][0]
                labels[first:last] = row[1 + first - start : 1 + last - start]
        out.append(labels)
    classifier.train()
    return out


def records_for(
    data: ShinraSet, pages: list[Page], predicted: list[list[int]],
    leaderboard: dict[str, tuple[str, list[str]]] | None = None,
) -> list[dict]:  # fmt: skip
    """SHINRA records of the predicted labels, for each ENE of a page (its directory's, or
    those a leaderboard input gives), keeping the attributes of that ENE when known."""
    records = []
    for page, labels in zip(pages, predicted, strict=True):
        raw = RawPage.read(page.path)
        enes = [page.ene]
        if leaderboard and page.page_id in leaderboard:
            title, enes = leaderboard[page.page_id]
            page.title = title or page.title
        for ene in enes:
            allowed = data.attributes.get(ene)
            records += decode(page, labels, data.names, raw, ene, allowed)
    return records


def predict(
    model: str | Path, shinra_dir: str | Path, localized: str | Path, out: str | Path, *,
    leaderboard: str | Path | None = None, max_length: int = 512, margin: int = 128,
    tokenizer: str | None = None, revision: str | None = None,
) -> int:  # fmt: skip
    """Write SHINRA records predicted by a fine-tuned `model` (a directory or a hub name at
    `revision`) for every page of `shinra_dir`, localized beforehand into `localized`, on the
    accelerator when there is one; returns how many."""
    from transformers import AutoModelForTokenClassification

    shinra_dir, out = Path(shinra_dir), Path(out)
    model_dir = resolve(model, revision)
    specials = SpecialIds.from_vocab(load_vocab(tokenizer_for(model_dir, tokenizer, str(model))
                                                / "vocab.txt"))  # fmt: skip
    try:
        classifier = AutoModelForTokenClassification.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"{model}: not a fine-tuned model: {e}") from None
    config = classifier.config
    names = [config.id2label[i] for i in range(config.num_labels)]
    data = load_pages(shinra_dir, Path(localized), names)
    classifier = TokenClassifier(classifier, text_only=config.model_type != "layoutlm")
    classifier.to(device())
    predicted = predict_labels(classifier, data.pages, specials, max_length, margin)
    pages = read_leaderboard_pages(Path(leaderboard)) if leaderboard else None
    records = records_for(data, data.pages, predicted, pages)
    with open(out, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)
