"""Fine-tuning for SHINRA attribute extraction (token classification), and prediction.

`finetune` trains `LayoutLMForTokenClassification` (or, `text_only`, a BERT's or a text-only
ELECTRA discriminator's token classifier on the same windows without boxes: the baseline) with
the pretraining machinery (layoutja.trainer: accelerate, mixed precision, checkpoints, exact
resume, metrics.jsonl) and logs the dev F1 (the SHINRA scorer on held-out pages) after every
epoch. `predict` turns a fine-tuned model's labels back into SHINRA records whose
`html_offset.text` is exactly the raw HTML between the offsets.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import Counter
from pathlib import Path

import torch
import yaml
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForTokenClassification,
    BertForTokenClassification,
    LayoutLMConfig,
    LayoutLMForTokenClassification,
)

from layoutja import trainer
from layoutja.config import TrainConfig
from layoutja.data import SpecialIds, collate, step_seed
from layoutja.errors import UserError
from layoutja.init_model import layoutlm_from_bert, quiet_loading
from layoutja.score import score
from layoutja.shinra import RawLines
from layoutja.shinra_data import (
    IGNORE,
    Page,
    ShinraSet,
    decode,
    gold_records,
    is_dev,
    layout,
    load_pages,
    merge_windows,
    read_leaderboard_pages,
    windows,
)
from layoutja.tokenizer import load_vocab
from layoutja.trainlog import MetricsLog


class TokenClassifier(nn.Module):
    """A token classification model whose forward returns the loss (one module for DDP)."""

    def __init__(self, model: nn.Module, text_only: bool):
        super().__init__()
        self.model, self.text_only = model, text_only

    def forward(self, input_ids, bbox, attention_mask, labels) -> torch.Tensor:
        boxes = {} if self.text_only else {"bbox": bbox}
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, **boxes
        ).loss

    def labels(self, batch: dict) -> torch.Tensor:
        boxes = {} if self.text_only else {"bbox": batch["bbox"]}
        logits = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **boxes
        ).logits
        return logits.argmax(-1)


def load_classifier(model_dir: str, names: list[str], text_only: bool) -> nn.Module:
    """A token classification head on a pretrained LayoutLM (a BERT is converted), or for
    `text_only` on a BERT or an ELECTRA discriminator."""
    labels = {"num_labels": len(names), "id2label": dict(enumerate(names)),
              "label2id": {n: i for i, n in enumerate(names)}}  # fmt: skip
    try:
        model_type = AutoConfig.from_pretrained(model_dir).model_type
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir}: cannot read a model config: {e}") from None
    # A new head on a pretrained body: transformers' "newly initialized" report is expected.
    with quiet_loading():
        if text_only:  # a BERT, or the discriminator of a text-only ELECTRA run
            model_class = (
                BertForTokenClassification
                if model_type == "layoutlm"
                else AutoModelForTokenClassification
            )
            return model_class.from_pretrained(model_dir, **labels, dtype=torch.float32)
        if model_type == "layoutlm":
            return LayoutLMForTokenClassification.from_pretrained(
                model_dir, **labels, dtype=torch.float32
            )
    if model_type == "bert":
        mlm, _ = layoutlm_from_bert(model_dir)
        config = LayoutLMConfig(**{**mlm.config.to_dict(), **labels})
        model = LayoutLMForTokenClassification(config)
        model.layoutlm.load_state_dict(mlm.layoutlm.state_dict())
        return model
    raise UserError(f"{model_dir}: a {model_type} model; fine-tuning takes LayoutLM or BERT")


def labeled_batch(items: list[dict], pad: int) -> dict:
    batch = collate([(w["input_ids"], w["bbox"]) for w in items], pad)
    labels = torch.full_like(batch["input_ids"], IGNORE)
    for row, w in enumerate(items):
        labels[row, : len(w["labels"])] = torch.tensor(w["labels"])
    return {**batch, "labels": labels}


@torch.no_grad()
def predict_labels(
    classifier: TokenClassifier, pages: list[Page], specials: SpecialIds, config: TrainConfig,
    device: torch.device, batch_size: int = 16,
) -> list[list[int]]:  # fmt: skip
    """A label id per token of each page, windows merged (inner edges lose margin // 2)."""
    classifier.eval()
    out = []
    for page in pages:
        items = windows(page, specials, config.max_length, config.margin)
        labels = [0] * len(page.input_ids)
        keep = merge_windows(len(labels), [w["span"] for w in items], config.margin)
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
        raw = RawLines(page.path.read_text(encoding="utf-8", errors="replace"))
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


def localize_shinra(shinra_dir: Path, tokenizer_dir: Path, localized: Path, workers: int,
                    progress: bool) -> None:  # fmt: skip
    """Localize the pages (a resumable run: pages already in `localized` are reused)."""
    from layoutja.batch import localize_corpus

    html_dir, _, _ = layout(shinra_dir)
    localize_corpus(str(html_dir), str(tokenizer_dir), localized, workers=workers,
                    progress=progress)  # fmt: skip


def finetune(
    config: TrainConfig, shinra_dir: str | Path, model_dir: str | Path, out: str | Path, *,
    text_only: bool = False, localized: str | Path | None = None, resume: bool = False,
    workers: int = 1, progress: bool = True,
) -> dict:  # fmt: skip
    """Fine-tune on a SHINRA directory; returns the last dev scores (main process)."""
    from tqdm import tqdm

    shinra_dir, model_dir, out = Path(shinra_dir), Path(model_dir), Path(out)
    accelerator = trainer.make_accelerator(config)
    rank, world = accelerator.process_index, accelerator.num_processes
    trainer.accumulation_steps(config, world)  # the global batch must split evenly

    # --- build ---------------------------------------------------------------------------
    if not (model_dir / "vocab.txt").exists():
        raise UserError(f"{model_dir}: no tokenizer beside the model (vocab.txt)")
    specials = _specials(model_dir)
    localized = Path(localized) if localized else out / "localized"
    if accelerator.is_main_process:
        localize_shinra(shinra_dir, model_dir, localized, workers, progress)
    accelerator.wait_for_everyone()
    data = load_pages(shinra_dir, localized)
    dev = [p for p in data.pages if is_dev(p.page_id, config.dev_fraction, config.seed)]
    train = [p for p in data.pages if p not in dev]
    items = [w for page in train for w in windows(page, specials, config.max_length, config.margin)]
    steps_per_epoch = len(items) // config.global_batch_size
    if not steps_per_epoch:
        raise UserError(
            f"{len(items)} training windows: fewer than one global batch "
            f"({config.global_batch_size})"
        )
    max_steps = config.epochs * steps_per_epoch if config.epochs else config.max_steps
    classifier = TokenClassifier(load_classifier(str(model_dir), data.names, text_only), text_only)
    optimizer, scheduler = trainer.build_optimizer(classifier, config, max_steps)
    model, optimizer = trainer.prepare(accelerator, classifier, optimizer, scheduler)
    state = {"step": 0, "skipped": 0}
    state.update(trainer.resume(accelerator, out, resume))
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        recipe = yaml.safe_dump(dataclasses.asdict(config), allow_unicode=True)
        (out / "recipe.yaml").write_text(recipe, encoding="utf-8")
        skipped = Counter(reason for reason, _ in data.skipped)
        summary = {"train_pages": len(train), "dev_pages": len(dev), "train_windows": len(items),
                   "labels": len(data.names), "annotations_skipped": skipped}  # fmt: skip
        (out / "data.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1))
        with open(out / "skipped_annotations.jsonl", "w", encoding="utf-8") as f:
            for reason, a in data.skipped:
                f.write(json.dumps({"reason": reason, **dataclasses.asdict(a)},
                                   ensure_ascii=False) + "\n")  # fmt: skip

    # --- batches: epoch e is a seeded permutation; step s takes its s-th global batch ---------
    def micro_batches(step: int) -> list[dict]:
        epoch, index = divmod(step, steps_per_epoch)
        order = list(range(len(items)))
        random.Random(config.seed * 1_000_003 + epoch).shuffle(order)
        chunk = order[index * config.global_batch_size : (index + 1) * config.global_batch_size]
        mine = [items[k] for k in chunk[rank::world]]
        size = config.per_device_batch_size
        return [labeled_batch(mine[i : i + size], specials.pad) for i in range(0, len(mine), size)]

    def evaluate(epoch: int) -> dict:
        unwrapped = accelerator.unwrap_model(model)
        predicted = predict_labels(unwrapped, dev, specials, config, accelerator.device)
        result = score(gold_records(data.annotations, {p.page_id for p in dev}),
                       records_for(data, dev, predicted), {p.page_id for p in dev})  # fmt: skip
        html = result["html_offset"]
        return {"epoch": epoch, "dev_macro_f1": round(html["macro"]["f1"], 4),
                "dev_micro_f1": round(html["micro"]["f1"], 4)}  # fmt: skip

    # --- steps, logs, evaluation, checkpoints ---------------------------------------------
    log = MetricsLog(out, enabled=accelerator.is_main_process, resume_step=state["step"])
    bar = tqdm(total=max_steps, initial=state["step"], unit="step", dynamic_ncols=True,
               disable=not (progress and accelerator.is_main_process))  # fmt: skip
    model.train()
    last, clock = {}, time.perf_counter()
    while state["step"] < max_steps:
        step = state["step"]
        torch.manual_seed(step_seed(config.seed, step, rank))
        losses, skipped = trainer.optimizer_step(accelerator, model, optimizer, scheduler,
                                               micro_batches(step), config.max_grad_norm, out,
                                               step + 1)  # fmt: skip
        state["step"], state["skipped"] = step + 1, state["skipped"] + skipped
        loss = losses["loss"]
        bar.update()
        metrics = {}
        if state["step"] % config.log_every == 0:
            metrics = {"step": state["step"], "loss": round(loss, 5),
                       "learning_rate": scheduler.get_last_lr()[0],
                       "steps_per_s": round(config.log_every / (time.perf_counter() - clock), 3),
                       "skipped_steps": state["skipped"]}  # fmt: skip
            clock = time.perf_counter()
        end_of_epoch = state["step"] % steps_per_epoch == 0 or state["step"] == max_steps
        if end_of_epoch and dev and accelerator.is_main_process:
            last = evaluate(state["step"] // steps_per_epoch)
            metrics = {"step": state["step"], "loss": round(loss, 5), **metrics, **last}
            bar.set_postfix(dev_f1=last["dev_macro_f1"], refresh=False)
        if metrics:
            log.write(metrics)
        if end_of_epoch or state["step"] % config.save_every == 0:
            trainer.save_checkpoint(accelerator, out, dict(state), config.keep_checkpoints)
    bar.close()
    log.close()

    trainer.export(accelerator, {"": accelerator.unwrap_model(model).model}, model_dir, out)
    return last if accelerator.is_main_process else {}


def predict(
    model_dir: str | Path, shinra_dir: str | Path, out: str | Path, *,
    localized: str | Path | None = None, leaderboard: str | Path | None = None,
    max_length: int = 512, margin: int = 128, workers: int = 1, progress: bool = True,
) -> int:  # fmt: skip
    """Write SHINRA records predicted for every page of `shinra_dir`; returns how many."""
    from transformers import AutoModelForTokenClassification

    model_dir, shinra_dir, out = Path(model_dir), Path(shinra_dir), Path(out)
    try:
        model = AutoModelForTokenClassification.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir}: not a fine-tuned model: {e}") from None
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    localized = Path(localized) if localized else out.with_suffix(".localized")
    localize_shinra(shinra_dir, model_dir, localized, workers, progress)
    data = load_pages(shinra_dir, localized, names)
    config = TrainConfig(max_length=max_length, margin=margin)
    classifier = TokenClassifier(model, text_only=model.config.model_type != "layoutlm")
    predicted = predict_labels(classifier, data.pages, _specials(model_dir), config,
                               torch.device("cpu") if not torch.cuda.is_available()
                               else torch.device("cuda"))  # fmt: skip
    pages = read_leaderboard_pages(Path(leaderboard)) if leaderboard else None
    records = records_for(data, data.pages, predicted, pages)
    with open(out, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)
