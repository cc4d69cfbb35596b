"""Prediction: a fine-tuned model's labels back into SHINRA records whose `html_offset.text` is
exactly the raw HTML between the offsets."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from layoutja.common import UserError
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
    margin: int, device: torch.device, batch_size: int = 16,
) -> list[list[int]]:  # fmt: skip
    """A label id per token of each page, windows merged (inner edges lose margin // 2)."""
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


def _specials(tokenizer_dir: Path) -> SpecialIds:
    return SpecialIds.from_vocab(load_vocab(tokenizer_dir / "vocab.txt"))


def predict(
    model_dir: str | Path, shinra_dir: str | Path, localized: str | Path, out: str | Path, *,
    leaderboard: str | Path | None = None, max_length: int = 512, margin: int = 128,
) -> int:  # fmt: skip
    """Write SHINRA records predicted for every page of `shinra_dir` (localized beforehand into
    `localized`); returns how many."""
    from transformers import AutoModelForTokenClassification

    model_dir, shinra_dir, out = Path(model_dir), Path(shinra_dir), Path(out)
    try:
        model = AutoModelForTokenClassification.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir}: not a fine-tuned model: {e}") from None
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    data = load_pages(shinra_dir, Path(localized), names)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classifier = TokenClassifier(model, text_only=model.config.model_type != "layoutlm")
    classifier.to(device)  # the model where its batches go
    specials = _specials(model_dir)
    predicted = predict_labels(classifier, data.pages, specials, max_length, margin, device)
    pages = read_leaderboard_pages(Path(leaderboard)) if leaderboard else None
    records = records_for(data, data.pages, predicted, pages)
    with open(out, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)
