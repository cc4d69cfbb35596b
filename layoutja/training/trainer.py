"""One trainer for every task: build → batches → step → log → checkpoint → export.

A task (MVLM, ELECTRA, SHINRA fine-tuning) supplies what differs: its model, whose forward
returns the loss (or a dict with "loss" and parts to log), its batches from a saved position,
its exports, and optionally an evaluation. Everything else is here, once, so every guarantee
holds for every task:

- one CPU or GPU, or a data-parallel job under `accelerate launch`/`torchrun`;
- the recipe's global batch on any number of devices (gradient accumulation);
- Adam(W) with linear warmup and decay, stepped once per optimizer step and checkpointed;
- a NaN/inf loss stops the run before it changes the model; fp16 overflow steps are counted;
- checkpoints with everything `--resume` needs (model, optimizer, scheduler, scaler, RNG, data
  position), written under a temporary name and renamed; a resume checks the world size, the
  batch size and the data fingerprint; each checkpoint also holds its models as Hugging Face
  directories with their tokenizer (`hf/`), so "the model at step 50k" loads with `Auto*`;
- on CUDA: fused AdamW and TF32 matmuls (the models use PyTorch's SDPA attention by default);
- metrics.jsonl and TensorBoard: loss (and parts), learning rate, tokens/s, MFU on known GPUs,
  evaluations; a progress bar on a terminal, plain lines in logs.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel

from layoutja.common import Progress, UserError, copy_tokenizer
from layoutja.training.config import Recipe
from layoutja.training.log import MetricsLog, peak_flops

STATE = "trainer_state.json"


class Task(Protocol):
    """What a training task gives the trainer."""

    model: torch.nn.Module  # forward(**batch) → loss, or {"loss": ..., parts to log}
    max_steps: int
    tokenizer_dir: Path  # copied beside every export
    fingerprint: str  # of the data: a resume on other data warns

    def batches(self, position: list[int], step: int) -> Iterator[tuple[list[dict], list[int]]]:
        """From a saved position (and the step it belongs to): each step's micro-batches and
        the position after them."""

    def exports(self, model: torch.nn.Module) -> dict[str, PreTrainedModel]:
        """The Hugging Face models to save, by subdirectory ("" for the run directory)."""

    def flops_per_token(self) -> float:
        """Training FLOPs per token, for MFU (0: not reported)."""

    def evaluates(self, step: int) -> bool:
        """Whether to evaluate (and checkpoint) after `step`: the same answer on every rank."""

    def evaluate(self, model: torch.nn.Module, step: int) -> dict:
        """Evaluation metrics after `step` (called on the main process only)."""


class _TiedWeightsNote(logging.Filter):
    """accelerate warns that it saves a tensor shared by two modules once (ELECTRA's embeddings,
    tied LM heads); that is intended, and loading the checkpoint restores the sharing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())


class TrainingStopped(UserError):
    """The loss became NaN/inf: stopped before the bad step changed anything."""


def make_accelerator(recipe: Recipe) -> Accelerator:
    precision = recipe.schedule.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        precision = "no"  # fp16 autocast needs a GPU; CPU runs train in fp32
    if torch.cuda.is_available():
        # What autocast leaves in fp32 (an fp32 run, the loss's logits) runs on tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # cpu=True without a GPU: otherwise ranks launched by torchrun/accelerate on CPUs would each
    # train alone instead of as one data-parallel job.
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def accumulation_steps(recipe: Recipe, world: int) -> int:
    """Micro-batches per optimizer step so that the global batch is the recipe's."""
    schedule = recipe.schedule
    per_step = schedule.per_device_batch_size * world
    if schedule.global_batch_size % per_step:
        raise UserError(
            f"schedule.global_batch_size {schedule.global_batch_size} is not a multiple of "
            f"per_device_batch_size {schedule.per_device_batch_size} × {world} device(s)"
        )
    return schedule.global_batch_size // per_step


def build_optimizer(
    model: torch.nn.Module, recipe: Recipe, max_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (Adam when weight_decay is 0) and a linear warmup, then linear decay to 0.

    Biases and LayerNorm weights (the 1-D parameters) are not decayed, as in BERT and ELECTRA.
    On CUDA the fused kernel updates every tensor in one launch (the model must be there
    already).
    """
    trained = [p for p in model.parameters() if p.requires_grad]
    fused = bool(trained) and trained[0].device.type == "cuda"
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in trained if p.ndim > 1]},
            {"params": [p for p in trained if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=recipe.optimizer.learning_rate,
        betas=(recipe.optimizer.adam_beta1, recipe.optimizer.adam_beta2),
        eps=recipe.optimizer.adam_epsilon,
        weight_decay=recipe.optimizer.weight_decay,
        fused=fused,
    )
    warmup = recipe.schedule.warmup_steps

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def optimizer_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    micro_batches: list[dict],
    max_grad_norm: float,
    out: Path,
    step: int,
) -> tuple[dict[str, float], bool]:
    """One optimizer step over the micro-batches; returns (losses averaged over micro-batches
    and ranks, skipped).

    `model(**batch)` returns the loss, or a dict of scalar tensors: "loss" to minimize and parts
    to log (e.g. an ELECTRA step's generator and discriminator losses). Gradients are
    all-reduced only on the last micro-batch. A NaN/inf loss (on any rank) raises
    TrainingStopped before the update.
    """
    sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with nullcontext() if last else accelerator.no_sync(model):
            losses = model(**{k: v.to(accelerator.device) for k, v in batch.items()})
            losses = losses if isinstance(losses, dict) else {"loss": losses}
            accelerator.backward(losses["loss"] / len(micro_batches))
        for key, value in losses.items():
            sums[key] = sums.get(key, 0) + value.detach().float()
    names = list(sums)
    means = accelerator.reduce(torch.stack([sums[k] for k in names]) / len(micro_batches), "mean")
    metrics = dict(zip(names, means.tolist()))
    step_loss = metrics["loss"]
    if not math.isfinite(step_loss):
        good = latest_checkpoint(out)
        raise TrainingStopped(
            f"loss became {step_loss} at step {step}; stopped before updating the model. "
            + (
                f"Last good checkpoint: {good} (--resume continues from it; a lower "
                "learning_rate may help)"
                if good
                else "No checkpoint was saved yet."
            )
        )
    if max_grad_norm > 0:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)  # unscales fp16
        # With fp16 the scaler skips a step whose gradients overflowed; without it (bf16, fp32)
        # such gradients would write NaN into the weights.
        if accelerator.scaler is None and not math.isfinite(float(norm)):
            raise TrainingStopped(
                f"gradients became {float(norm)} at step {step}; stopped before updating the "
                f"model. Last good checkpoint: {latest_checkpoint(out)}"
            )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    skipped = accelerator.optimizer_step_was_skipped  # an fp16 overflow: normal, only counted
    if not skipped:
        scheduler.step()
    return metrics, skipped


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in `out`, oldest first."""
    return sorted(p for p in (out / "checkpoints").glob("step-*") if (p / STATE).exists())


def latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1] if found else None


def resume(accelerator: Accelerator, out: Path, wanted: bool) -> dict:
    """The saved position of the last checkpoint (after loading it), or {} for a fresh run."""
    last = latest_checkpoint(out)
    if last and not wanted:
        raise UserError(f"{out} holds checkpoints: pass --resume to continue, or a new --out")
    if not (last and wanted):
        return {}
    accelerator.load_state(str(last))
    return json.loads((last / STATE).read_text())


def save_checkpoint(accelerator: Accelerator, out: Path, state: dict, keep: int,
                    models: dict[str, PreTrainedModel], tokenizer_dir: Path) -> None:  # fmt: skip
    """Save model, optimizer, scheduler, scaler, RNG and `state` (the data position) as
    checkpoints/step-N, with `models` exported into its `hf/`, under a temporary name first so
    a kill mid-save loses nothing."""
    final = out / "checkpoints" / f"step-{state['step']:07d}"
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)  # before any rank writes its RNG state into it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export(models, tokenizer_dir, tmp / "hf")
        (tmp / STATE).write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoints(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def export(models: dict[str, PreTrainedModel], tokenizer_dir: Path, out: Path) -> None:
    """Save each Hugging Face model (`{subdirectory: model}`, "" for `out` itself) with its
    tokenizer files beside it (AutoModel and AutoTokenizer load the directory); called by the
    main process."""
    from transformers.utils import logging as transformers_logging

    # A "Writing model shards" bar per save, every checkpoint, is noise in a training log.
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        for subdirectory, model in models.items():
            target = out / subdirectory
            model.save_pretrained(target)
            copy_tokenizer(tokenizer_dir, target)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()


class Trainer:
    """Trains a task as the recipe says; the accelerator exists first, so a task can be built
    for this process's rank."""

    def __init__(self, recipe: Recipe, out: str | Path, *, resume: bool = False,
                 progress: bool = True):  # fmt: skip
        self.recipe, self.out = recipe, Path(out)
        self.wants_resume, self.progress = resume, progress
        self.accelerator = make_accelerator(recipe)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.accumulation = accumulation_steps(recipe, self.world)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def fit(self, task: Task) -> dict:
        """Train `task` to its last step (or continue a run), export it; returns the last
        logged metrics (main process)."""
        recipe, accelerator, out = self.recipe, self.accelerator, self.out
        # --- build ---------------------------------------------------------------------------
        task.model.to(accelerator.device)  # before the optimizer: fused AdamW needs it there
        optimizer, scheduler = build_optimizer(task.model, recipe, task.max_steps)
        model, optimizer = accelerator.prepare(task.model, optimizer)
        accelerator.register_for_checkpointing(scheduler)  # ours: stepped once per step
        state = self._resume(task)
        if self.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "recipe.yaml").write_text(recipe.dump(), encoding="utf-8")

        # --- batches, steps, logs, checkpoints -------------------------------------------------
        position = state["positions"][self.rank]
        batches = task.batches(list(position), state["step"])
        log = MetricsLog(out, enabled=self.is_main, resume_step=state["step"])
        bar = Progress(task.max_steps, "step", "training", self.progress and self.is_main,
                       initial=state["step"])  # fmt: skip
        peak = peak_flops(accelerator.device) * self.world
        flops_per_token = task.flops_per_token()
        every = recipe.checkpoint
        model.train()
        tokens, clock, last = 0, time.perf_counter(), {}
        while state["step"] < task.max_steps:
            step = state["step"]
            torch.manual_seed(step_seed(recipe.schedule.seed, step, self.rank))  # dropout
            micro_batches, position = next(batches)
            tokens += sum(int(b["attention_mask"].sum()) for b in micro_batches) * self.world
            learning_rate = scheduler.get_last_lr()[0]  # the rate this step uses
            losses, skipped = optimizer_step(accelerator, model, optimizer, scheduler,
                                             micro_batches, recipe.optimizer.max_grad_norm, out,
                                             step + 1)  # fmt: skip
            state["step"], state["skipped"] = step + 1, state["skipped"] + skipped
            done = state["step"] == task.max_steps
            bar.update()
            metrics = {}
            if state["step"] % every.log_every == 0 or done:
                tokens_per_s = tokens / (time.perf_counter() - clock)
                metrics = {"step": state["step"],
                           **{name: round(value, 5) for name, value in losses.items()},
                           "learning_rate": learning_rate, "tokens_per_s": round(tokens_per_s, 1),
                           "skipped_steps": state["skipped"], "epoch": position[0]}  # fmt: skip
                if peak and flops_per_token:
                    metrics["mfu"] = round(tokens_per_s * flops_per_token / peak, 4)
                bar.set_postfix(loss=f"{losses['loss']:.4f}")
                tokens, clock = 0, time.perf_counter()
            evaluates = task.evaluates(state["step"])
            evaluation = None
            if evaluates and self.is_main:
                evaluation = task.evaluate(accelerator.unwrap_model(model), state["step"])
            if evaluation is not None:
                metrics = {"step": state["step"], "loss": round(losses["loss"], 5), **metrics,
                           **evaluation}  # fmt: skip
                bar.set_postfix(**{k: v for k, v in evaluation.items() if k != "epoch"})
            if metrics:
                log.write(metrics)
                last = metrics
            if state["step"] % every.save_every == 0 or done or evaluates:
                here = torch.tensor(position, device=accelerator.device)
                state["positions"] = accelerator.gather(here).view(self.world, -1).tolist()
                models = task.exports(accelerator.unwrap_model(model))
                save_checkpoint(accelerator, out, dict(state), every.keep_checkpoints, models,
                                task.tokenizer_dir)  # fmt: skip
        bar.close()
        log.close()
        accelerator.wait_for_everyone()
        if self.is_main:
            export(task.exports(accelerator.unwrap_model(model)), task.tokenizer_dir, out)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return last if self.is_main else {}

    def _resume(self, task: Task) -> dict:
        """The run's state: fresh, or the last checkpoint's after loading it (with its checks)."""
        state = {"step": 0, "skipped": 0, "positions": [[0, 0]] * self.world,
                 "world": self.world, "data": task.fingerprint,
                 "per_device_batch_size": self.recipe.schedule.per_device_batch_size}  # fmt: skip
        saved = resume(self.accelerator, self.out, self.wants_resume)
        for key in ("world", "per_device_batch_size"):
            if saved and saved.get(key) != state[key]:
                raise UserError(
                    f"{self.out}: the checkpoint was made with {key} {saved.get(key)}, this run "
                    f"has {state[key]}; resume with the same setup"
                )
        if saved.get("data", state["data"]) != state["data"] and self.is_main:
            print("warning: the data changed since the checkpoint (parts added, removed or "
                  "rewritten): training goes on from the saved position in the new data, "
                  "which is not where the interrupted run would have gone",
                  file=sys.stderr)  # fmt: skip
        return {**state, **saved, "data": state["data"]}


def step_seed(seed: int, step: int, rank: int) -> int:
    """A seed per (run, step, rank): dropout and masking repeat exactly after a resume."""
    return (seed * 1_000_003 + step) * 4099 + rank
