"""The SHINRA fine-tuning task (token classification), trained by the one Trainer.

It trains `LayoutLMForTokenClassification` (or, `finetune.text_only`, a BERT's or a text-only
ELECTRA discriminator's token classifier on the same windows without boxes: the baseline) on
pages localized beforehand (`layoutja localize`), and reports the dev F1 (the SHINRA scorer on
held-out pages) after every epoch. Epoch e is a seeded permutation of the training windows;
step s takes its s-th global batch, so the position is a function of the step alone.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from layoutja.common import UserError
from layoutja.hub import resolve, tokenizer_for
from layoutja.pretrain.windows import SpecialIds
from layoutja.shinra.classifier import TokenClassifier, labeled_batch, load_classifier
from layoutja.shinra.data import gold_records, is_dev, load_pages, windows
from layoutja.shinra.predict import predict_labels, records_for
from layoutja.shinra.score import score
from layoutja.text.tokenizer import load_vocab
from layoutja.training.config import Recipe
from layoutja.training.trainer import Trainer


class FinetuneTask:
    """Labeled windows of the training pages; dev macro/micro F1 at the end of every epoch."""

    def __init__(
        self,
        recipe: Recipe,
        trainer: Trainer,
        shinra_dir: Path,
        model: str,
        localized: Path,
        out: Path,
        tokenizer: str | None = None,
        revision: str | None = None,
    ):
        if recipe.objective != "token-classification":
            raise UserError(f"objective {recipe.objective!r}: finetune trains token-classification")
        model_dir = resolve(model, revision)
        self.recipe, self.trainer = recipe, trainer
        self.tokenizer_dir = tokenizer_for(model_dir, tokenizer, model)  # exported with it
        self.specials = SpecialIds.from_vocab(load_vocab(self.tokenizer_dir / "vocab.txt"))
        self.data = load_pages(shinra_dir, localized)
        split, seed = recipe.finetune.dev_fraction, recipe.schedule.seed
        self.dev = [p for p in self.data.pages if is_dev(p.page_id, split, seed)]
        train = [p for p in self.data.pages if not is_dev(p.page_id, split, seed)]
        length, margin = recipe.data.max_length, recipe.data.margin
        self.items = [w for page in train for w in windows(page, self.specials, length, margin)]
        batch = recipe.schedule.global_batch_size
        self.steps_per_epoch = len(self.items) // batch
        if not self.steps_per_epoch:
            raise UserError(
                f"{len(self.items)} training windows: fewer than one global batch ({batch})"
            )
        epochs = recipe.schedule.epochs
        self.max_steps = epochs * self.steps_per_epoch if epochs else recipe.schedule.max_steps
        text_only = recipe.finetune.text_only
        head = load_classifier(model_dir, self.data.names, text_only, self.specials.pad)
        self.model = TokenClassifier(head, text_only)
        self.fingerprint = f"{len(train)}:{len(self.items)}:{len(self.data.names)}"
        if trainer.is_main:
            self._write_summary(out, len(train))

    def _write_summary(self, out: Path, train_pages: int) -> None:
        """OUT/data.json (counts) and OUT/skipped_annotations.jsonl (each with its reason)."""
        out.mkdir(parents=True, exist_ok=True)
        skipped = Counter(reason for reason, _ in self.data.skipped)
        summary = {
            "train_pages": train_pages,
            "dev_pages": len(self.dev),
            "train_windows": len(self.items),
            "labels": len(self.data.names),
            "annotations_skipped": skipped,
        }
        (out / "data.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1))
        with open(out / "skipped_annotations.jsonl", "w", encoding="utf-8") as f:
            for reason, a in self.data.skipped:
                record = {"reason": reason, **dataclasses.asdict(a)}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def batches(self, position: list[int], step: int) -> Iterator[tuple[list[dict], list[int]]]:
        schedule, rank, world = self.recipe.schedule, self.trainer.rank, self.trainer.world
        size, order, epoch = schedule.per_device_batch_size, None, -1
        while True:
            if step // self.steps_per_epoch != epoch:  # one permutation per epoch, not per step
                epoch = step // self.steps_per_epoch
                order = np.random.default_rng([schedule.seed, epoch]).permutation(len(self.items))
            index = step % self.steps_per_epoch
            chunk = order[
                index * schedule.global_batch_size : (index + 1) * schedule.global_batch_size
            ]
            mine = [self.items[k] for k in chunk[rank::world]]
            step += 1
            micro = [
                labeled_batch(mine[i : i + size], self.specials.pad)
                for i in range(0, len(mine), size)
            ]
            yield micro, [step // self.steps_per_epoch, step % self.steps_per_epoch]

    def exports(self, model: torch.nn.Module) -> dict[str, PreTrainedModel]:
        return {"": model.model}

    def flops_per_token(self) -> float:
        return 0.0  # not reported for fine-tuning

    def evaluates(self, step: int) -> bool:
        """At the end of each epoch (and of the run), when there are dev pages."""
        return bool(self.dev) and (step % self.steps_per_epoch == 0 or step == self.max_steps)

    def evaluate(self, model: torch.nn.Module, step: int) -> dict:
        """Dev F1 (html_offset, the SHINRA scorer)."""
        data = self.recipe.data
        predicted = predict_labels(model, self.dev, self.specials, data.max_length, data.margin)
        pages = {p.page_id for p in self.dev}
        result = score(
            gold_records(self.data.annotations, pages),
            records_for(self.data, self.dev, predicted),
            pages,
        )
        html = result["html_offset"]
        return {
            "epoch": -(-step // self.steps_per_epoch),
            "dev_macro_f1": round(html["macro"]["f1"], 4),
            "dev_micro_f1": round(html["micro"]["f1"], 4),
        }


def finetune(
    recipe: Recipe,
    shinra_dir: str | Path,
    model: str | Path,
    localized: str | Path,
    out: str | Path,
    *,
    tokenizer: str | None = None,
    revision: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune `model` (a directory or a hub name at `revision`; `tokenizer`: the MeCab
    tokenizer when the model's own is not one) on a SHINRA directory whose pages are localized
    in `localized`; returns the last logged metrics (main process)."""
    trainer = Trainer(recipe, out, resume=resume, progress=progress)
    task = FinetuneTask(recipe, trainer, Path(shinra_dir), str(model), Path(localized),
                        Path(out), tokenizer, revision)  # fmt: skip
    return trainer.fit(task)
