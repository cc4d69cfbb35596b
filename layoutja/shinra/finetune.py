"""The SHINRA fine-tuning task (token classification), trained by the one Trainer.

It trains `LayoutLMForTokenClassification` (or, `finetune.text_only`, a BERT's or a text-only
ELECTRA discriminator's token classifier on the same windows without boxes: the baseline) on
pages localized beforehand (`layoutja localize`), and reports the dev F1 (the SHINRA scorer on
held-out pages, gaps bridged as at prediction: `finetune.bridge_gaps`, which the exported
config records as `predict`'s default) after every epoch, each rank predicting a share of the dev
pages. Epoch e is a seeded permutation of the training windows; step s takes its s-th
global batch, cut into micro-batches as pretraining's (`micro_batch_slice`), so the windows of a
step depend on the step alone, on any number of processes.

The export in the run directory is the model with the best dev macro F1 (OUT/best.json says
which epoch); the model of the last step is beside it in OUT/last/. Without dev pages the last
model is the export.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from transformers import PreTrainedModel

from layoutja.common import UserError, model_type
from layoutja.hub import resolve, tokenizer_for
from layoutja.localize.manifest import check_vocabulary, manifest_facts
from layoutja.pretrain.order import micro_batch_slice, window_spans
from layoutja.pretrain.windows import SpecialIds
from layoutja.shinra.classifier import TokenClassifier, labeled_batch, load_classifier
from layoutja.shinra.data import dev_split, load_pages, window
from layoutja.shinra.predict import predict_pages
from layoutja.shinra.records import Decoder, gold_records, spelling_for
from layoutja.shinra.score import score
from layoutja.text.tokenizer import load_vocab
from layoutja.training.card import ModelCard
from layoutja.training.checkpoint import export
from layoutja.training.config import Recipe
from layoutja.training.job import removed_unless_trained
from layoutja.training.trainer import Trainer

BEST = "best.json"  # the dev scores and step of the model exported in the run directory


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
        definitions: Path | None = None,
    ):
        if recipe.objective != "token-classification":
            raise UserError(f"objective {recipe.objective!r}: finetune trains token-classification")
        model_dir = trainer.main_first(lambda: resolve(model, revision))
        self.recipe, self.trainer = recipe, trainer
        self.tokenizer_dir = tokenizer_for(model_dir, tokenizer, model)  # exported with it
        check_vocabulary(localized, self.tokenizer_dir, tokenizer or model)
        self.specials = SpecialIds.from_vocab(load_vocab(self.tokenizer_dir / "vocab.txt"))
        self.data = load_pages(shinra_dir, localized, overlaps=recipe.finetune.overlaps,
                               definitions=definitions)  # fmt: skip
        if self.data.dirs.definitions is None and trainer.is_main:
            print(f"{shinra_dir}: no ENE definitions (--definitions FILE): every annotated "
                  "attribute is a label, those with extraction_task false included (the "
                  "published system dropped them)", file=sys.stderr)  # fmt: skip
        dev = dev_split(self.data.pages, recipe.finetune.dev_fraction, recipe.schedule.seed)
        self.dev = [p for p in self.data.pages if p.page_id in dev]
        self.train = [p for p in self.data.pages if p.page_id not in dev]
        # Only dev pages are decoded: theirs get spans of their own, so that the spans of the
        # parts (arrays shared by all the pages of a part) are freed.
        for page in self.data.pages:
            page.html_span = page.html_span.copy() if page.page_id in dev else None
        length, margin = recipe.data.max_length, recipe.data.margin
        # A window is (training page, first token, end): three ints, its arrays cut when batched.
        self.items = np.array(
            [(k, *span) for k, page in enumerate(self.train)
             for span in window_spans(len(page.input_ids), length - 2, margin)],
            dtype=np.int64,
        ).reshape(-1, 3)  # fmt: skip
        batch = recipe.schedule.global_batch_size
        self.steps_per_epoch = len(self.items) // batch
        if not self.steps_per_epoch:
            raise UserError(
                f"{len(self.items)} training windows: fewer than one global batch ({batch})"
            )
        epochs = recipe.schedule.epochs
        self.max_steps = epochs * self.steps_per_epoch if epochs else recipe.schedule.max_steps
        if not recipe.finetune.text_only and model_type(model_dir) == "electra":
            # a text-only ELECTRA discriminator has no 2-D embeddings: its only fine-tuning is
            # the text-only one, recorded in the run's recipe.yaml and model card (a copy: the
            # caller's recipe may serve other models)
            text = dataclasses.replace(recipe.finetune, text_only=True)
            recipe = self.recipe = trainer.recipe = dataclasses.replace(recipe, finetune=text)
            if trainer.is_main:
                print(f"{model}: a text-only ELECTRA discriminator: fine-tuned without boxes "
                      "(finetune.text_only: true)", file=sys.stderr)  # fmt: skip
        text_only = recipe.finetune.text_only
        head = load_classifier(model_dir, self.data.names, text_only, self.specials.pad)
        # `predict`'s defaults: the post-processing the dev F1 was measured with
        head.config.label_top_k = recipe.finetune.top_k  # (`top_k` is a generation setting)
        head.config.bridge_gaps = recipe.finetune.bridge_gaps
        self.model = TokenClassifier(head, text_only)
        self.fingerprint = f"{len(self.train)}:{len(self.items)}:{len(self.data.names)}"
        self.out = out
        counts = {"train_pages": len(self.train), "dev_pages": len(self.dev),
                  "labels": len(self.data.names)}  # fmt: skip
        self.card = ModelCard(recipe, out, {"": model}, {**manifest_facts(localized), **counts})
        saved = out / BEST
        self.best = json.loads(saved.read_text()) if trainer.wants_resume and saved.exists() else {}
        if trainer.is_main:
            self._write_summary(out, len(self.train))

    def _write_summary(self, out: Path, train_pages: int) -> None:
        """OUT/data.json (counts), OUT/dev_pages.txt and OUT/skipped_annotations.jsonl (each with
        its reason)."""
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
        # the held-out pages, as `score --target` and `compare --target` read them
        (out / "dev_pages.txt").write_text("".join(f"{p.page_id}\n" for p in self.dev))
        with open(out / "skipped_annotations.jsonl", "w", encoding="utf-8") as f:
            for reason, a in self.data.skipped:
                record = {"reason": reason, **dataclasses.asdict(a)}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def batches(self, step: int) -> Iterator[list[dict]]:
        schedule, rank, world = self.recipe.schedule, self.trainer.rank, self.trainer.world
        size, batch = schedule.per_device_batch_size, schedule.global_batch_size
        order, epoch = None, -1
        while True:
            if step // self.steps_per_epoch != epoch:  # one permutation per epoch, not per step
                epoch = step // self.steps_per_epoch
                order = np.random.default_rng([schedule.seed, epoch]).permutation(len(self.items))
            index = step % self.steps_per_epoch
            chunk = order[index * batch : (index + 1) * batch]
            micro = []
            for j in range(self.trainer.accumulation):
                items = self.items[chunk[micro_batch_slice(rank, world, j, size)]]
                windows = [window(self.train[k], s, e, self.specials) for k, s, e in items]
                micro.append(labeled_batch(windows, self.specials.pad))
            step += 1
            yield micro

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch

    def exports(self, model: torch.nn.Module) -> dict[str, PreTrainedModel]:
        """The last model: in last/ when the best on dev is the run directory's export."""
        return {"last" if self.dev else "": model.model}

    def flops_per_token(self) -> float:
        return 0.0  # not reported for fine-tuning

    def evaluates(self, step: int) -> bool:
        """At the end of each epoch (and of the run), when there are dev pages."""
        return bool(self.dev) and (step % self.steps_per_epoch == 0 or step == self.max_steps)

    def evaluate(self, model: torch.nn.Module, step: int) -> dict:
        """Dev F1 (html_offset, the SHINRA scorer; labels chosen among the top `finetune.top_k`
        and gaps bridged as the recipe says), each rank
        predicting every world-th dev page; a model better on dev than every earlier one
        becomes the run directory's export. The main process gets the scores, the others {}."""
        data, names = self.recipe.data, self.data.names
        rank, world = self.trainer.rank, self.trainer.world
        decoder = Decoder(self.data.dirs, names, self.recipe.finetune.bridge_gaps)
        labeled = {n[2:] for n in names[1:]}
        records = []
        precision = self.trainer.accelerator.mixed_precision  # the training's
        for page, labels in predict_pages(model, self.dev[rank::world], self.specials,
                                          data.max_length, data.margin, precision=precision,
                                          top_k=self.recipe.finetune.top_k):  # fmt: skip
            spelling = spelling_for(self.data.attributes, page.ene, labeled)
            records += decoder.records(page, labels, page.ene, spelling)
        if world > 1:
            records = [r for share in gather_object([records]) for r in share]
        if not self.trainer.is_main:
            return {}
        pages = {p.page_id for p in self.dev}
        # the gold of the attributes to extract (those with extraction_task false are no task)
        attributes = self.data.attributes
        gold = [a for a in self.data.annotations if a.attribute in attributes.get(a.ene, ())]
        html = score(gold_records(gold, pages), records, pages)["html_offset"]
        result = {
            "epoch": -(-step // self.steps_per_epoch),
            "dev_macro_f1": round(html["macro"]["f1"], 4),
            "dev_micro_f1": round(html["micro"]["f1"], 4),
        }
        if result["dev_macro_f1"] > self.best.get("dev_macro_f1", -1.0):
            self.best = {**result, "step": step}
            held_out = {k: v for k, v in self.best.items() if k != "step"}
            card = dataclasses.replace(self.card, held_out=held_out)
            export({"": model.model}, self.tokenizer_dir, self.out, card, step)
            (self.out / BEST).write_text(json.dumps(self.best) + "\n")
        return result


def finetune(
    recipe: Recipe,
    shinra_dir: str | Path,
    model: str | Path,
    localized: str | Path,
    out: str | Path,
    *,
    tokenizer: str | None = None,
    revision: str | None = None,
    definitions: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune `model` (a directory or a hub name at `revision`; `tokenizer`: the MeCab
    tokenizer when the model's own is not one) on a SHINRA directory whose pages are localized
    in `localized` (`definitions`: its ENE definitions file, by default the one in it, if
    any); returns the last logged metrics with `best`, the dev scores, epoch and step
    of the model exported in `out` (main process)."""
    with removed_unless_trained(Path(out)):
        trainer = Trainer(recipe, out, resume=resume, progress=progress)
        task = FinetuneTask(recipe, trainer, Path(shinra_dir), str(model), Path(localized),
                            Path(out), tokenizer, revision,
                            Path(definitions) if definitions else None)  # fmt: skip
        last = trainer.fit(task)
    return {**last, "best": task.best} if last else last
