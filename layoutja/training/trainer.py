"""One trainer for every task: build → batches → step → log → checkpoint → export.

A task (MVLM, ELECTRA, SHINRA fine-tuning) supplies what differs: its model, whose forward
returns the loss (or a dict with "loss" and parts to log), its batches for a step, its exports,
and optionally an evaluation. Everything else is here, once, so every guarantee holds for every
task:

- one CPU or GPU, or a data-parallel job of any size (`torchrun`, `accelerate launch`, several
  nodes, SLURM; see `layoutja.training.job`);
- the recipe's global batch on any number of processes: a step's windows depend on the step
  alone, and its loss is normalized by the global batch's token counts (all-reduced before the
  first micro-batch), so 1, 2 or 3 processes, with or without accumulation, take the same steps
  and a checkpoint made on W processes goes on on W';
- Adam(W) with linear warmup and decay, stepped once per optimizer step and checkpointed; on
  resume the rate follows this run's schedule (more max_steps: the decay is re-stretched to the
  new end); a NaN/inf loss stops the run before it changes the model; fp16 overflow steps are
  counted and hold the schedule back (`layoutja.training.step`);
- checkpoints with everything `--resume` needs, verified before a resume trusts one; on
  SIGTERM/SIGUSR1 one more at the next step boundary, then EXIT_PREEMPTED;
- a full disk named as such (OUT, its free space, what a checkpoint needs), checked at start;
- model initialization, dropout and masking seeded from the recipe;
- on CUDA: fused AdamW and TF32 matmuls (the models use PyTorch's SDPA attention by default);
- metrics.jsonl and TensorBoard: loss (and parts), learning rate, tokens/s, MFU on known GPUs,
  peak GPU memory, evaluations; a progress bar on a terminal, plain lines in logs.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import torch
from transformers import PreTrainedModel

from layoutja.common import Preempted, Progress, UserError
from layoutja.training.card import ModelCard
from layoutja.training.checkpoint import (
    check_space,
    checkpoint_bytes,
    disk_full_named,
    export,
    load_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
)
from layoutja.training.config import Recipe
from layoutja.training.job import StopSignals, check_shared_output, main_first, make_accelerator
from layoutja.training.log import MetricsLog, peak_flops
from layoutja.training.step import build_optimizer, follow_schedule, optimizer_step


class Task(Protocol):
    """What a training task gives the trainer."""

    # forward(**batch, denominators=...) → {"loss": ..., parts to log}: each a sum over the
    # micro-batch's tokens divided by the global batch's count (`denominators`, by the names
    # token_counts(batch) gives); token_counts counts a micro-batch's tokens on the host.
    model: torch.nn.Module
    max_steps: int
    tokenizer_dir: Path  # copied beside every export
    card: ModelCard | None  # the model card (README.md) written beside every export
    fingerprint: str  # of the data: a resume on other data warns

    def batches(self, step: int) -> Iterator[list[dict]]:
        """This rank's micro-batches of each step from `step` on."""

    def epoch(self, step: int) -> float:
        """How many epochs of the data the steps up to `step` cover."""

    def exports(self, model: torch.nn.Module) -> dict[str, PreTrainedModel]:
        """The Hugging Face models to save, by subdirectory ("" for the run directory)."""

    def flops_per_token(self) -> float:
        """Training FLOPs per token, for MFU (0: not reported)."""

    def evaluates(self, step: int) -> bool:
        """Whether to evaluate (and checkpoint) after `step`: the same answer on every rank."""

    def evaluate(self, model: torch.nn.Module, step: int) -> dict:
        """Evaluation metrics after `step`, called on every rank (each takes a share of the
        work); the main process's answer is logged."""


class _TiedWeightsNote(logging.Filter):
    """accelerate warns that it saves a tensor shared by two modules once (ELECTRA's embeddings,
    tied LM heads); that is intended, and loading the checkpoint restores the sharing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())


def accumulation_steps(recipe: Recipe, world: int) -> int:
    """Micro-batches per optimizer step so that the global batch is the recipe's."""
    schedule = recipe.schedule
    per_step = schedule.per_device_batch_size * world
    if schedule.global_batch_size % per_step:
        fits = [d for d in range(1, schedule.global_batch_size // world + 1)
                if schedule.global_batch_size % (d * world) == 0]  # fmt: skip
        raise UserError(
            f"schedule.global_batch_size {schedule.global_batch_size} is not a multiple of "
            f"per_device_batch_size {schedule.per_device_batch_size} × {world} process(es): "
            f"set --schedule.per_device_batch_size to one of {fits[-4:] or 'none'} (the global "
            "batch stays the recipe's)"
        )
    return schedule.global_batch_size // per_step


class Trainer:
    """Trains a task as the recipe says; the accelerator exists first, so a task can be built
    for this process's rank (and seeded: model initialization follows the recipe's seed)."""

    def __init__(self, recipe: Recipe, out: str | Path, *, resume: bool = False,
                 progress: bool = True):  # fmt: skip
        self.recipe, self.out = recipe, Path(out)
        self.wants_resume, self.progress = resume, progress
        self.accelerator = make_accelerator(recipe)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.accumulation = accumulation_steps(recipe, self.world)
        if not self.is_main:  # reports and load messages once, from the main process
            from transformers.utils import logging as transformers_logging

            transformers_logging.set_verbosity_error()
            transformers_logging.disable_progress_bar()
        if self.is_main:  # first: on a full disk, a killed save's leftovers hold the space
            remove_partial_checkpoints(self.out)
        check_shared_output(self.accelerator, self.out)
        torch.manual_seed(recipe.schedule.seed)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def main_first(self, fetch: Callable[[], object]):
        """`fetch()` on the main process first (a hub download), then on the others."""
        return main_first(self.accelerator, fetch)

    def fit(self, task: Task) -> dict:
        """Train `task` to its last step (or continue a run), export it; returns the last
        logged metrics (main process). A SIGTERM/SIGUSR1 ends it with a checkpoint and
        Preempted."""
        needed = checkpoint_bytes(task.model)
        with StopSignals() as signals, disk_full_named(self.out, needed):
            check_space(self.out, needed)  # on every rank: none waits for one that stopped
            return self._fit(task, signals)

    def _fit(self, task: Task, signals: StopSignals) -> dict:
        recipe, accelerator, out = self.recipe, self.accelerator, self.out
        # --- build ---------------------------------------------------------------------------
        task.model.to(accelerator.device)  # before the optimizer: fused AdamW needs it there
        if recipe.schedule.compile:
            compile_encoders(task.model)
        optimizer, scheduler = build_optimizer(task.model, recipe, task.max_steps)
        model, optimizer = accelerator.prepare(task.model, optimizer)
        accelerator.register_for_checkpointing(scheduler)  # ours: stepped once per step
        state = self._resume(task, scheduler)
        if state["step"] >= task.max_steps and self.is_main:
            print(f"{out}: already at step {state['step']} of {task.max_steps}: nothing to "
                  "train (raise schedule.max_steps to go on: the learning rate's decay is "
                  "then re-stretched to the new end)", file=sys.stderr)  # fmt: skip
        if self.is_main:
            (out / "recipe.yaml").write_text(recipe.dump(), encoding="utf-8")

        # --- batches, steps, logs, checkpoints -------------------------------------------------
        batches = task.batches(state["step"])
        log = MetricsLog(out, enabled=self.is_main, resume_step=state["step"])
        bar = Progress(task.max_steps, "step", "training", self.progress and self.is_main,
                       initial=state["step"])  # fmt: skip
        peak = peak_flops(accelerator.device) * self.world
        flops_per_token = task.flops_per_token()
        every = recipe.checkpoint
        model.train()
        tokens, clock, last, stop = 0, time.perf_counter(), {}, False
        while state["step"] < task.max_steps and not stop:
            step = state["step"]
            torch.manual_seed(step_seed(recipe.schedule.seed, step, self.rank))  # dropout
            micro_batches = next(batches)
            tokens += sum(int(b["attention_mask"].sum()) for b in micro_batches) * self.world
            learning_rate = optimizer.param_groups[0]["lr"]  # the rate this step uses
            losses, skipped, stop = optimizer_step(
                accelerator, model, optimizer, scheduler, micro_batches, task.model.token_counts,
                recipe.optimizer.max_grad_norm, out, step + 1, signals.requested)  # fmt: skip
            state["step"], state["skipped"] = step + 1, state["skipped"] + skipped
            done = state["step"] == task.max_steps
            bar.update()
            metrics = {}
            if state["step"] % every.log_every == 0 or done or stop:
                tokens_per_s = tokens / (time.perf_counter() - clock)
                metrics = {"step": state["step"],
                           **{name: round(value, 5) for name, value in losses.items()},
                           "learning_rate": learning_rate, "tokens_per_s": round(tokens_per_s, 1),
                           "skipped_steps": state["skipped"],
                           "epoch": round(task.epoch(state["step"]), 4)}  # fmt: skip
                if peak and flops_per_token:
                    metrics["mfu"] = round(tokens_per_s * flops_per_token / peak, 4)
                if accelerator.device.type == "cuda":  # the peak so far, this process
                    metrics["max_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                bar.set_postfix(loss=f"{losses['loss']:.4f}")
                tokens, clock = 0, time.perf_counter()
            evaluates = task.evaluates(state["step"])
            if evaluates:
                evaluation = task.evaluate(accelerator.unwrap_model(model), state["step"])
                if self.is_main:
                    metrics = {"step": state["step"], "loss": round(losses["loss"], 5),
                               **metrics, **evaluation}  # fmt: skip
                    bar.set_postfix(**{k: v for k, v in evaluation.items() if k != "epoch"})
            if metrics:
                log.write(metrics)
                last = metrics
            if state["step"] % every.save_every == 0 or done or evaluates or stop:
                models = task.exports(accelerator.unwrap_model(model))
                saved = save_checkpoint(accelerator, out, dict(state), every.keep_checkpoints,
                                        models, task.tokenizer_dir, task.card)  # fmt: skip
        batches.close()  # its DataLoader workers stop now, not at interpreter exit
        bar.close()
        log.close()
        if stop:
            accelerator.end_training()
            raise Preempted(
                f"stopped by a signal at step {state['step']} of {task.max_steps}, after "
                f"writing {saved}; run again with --resume to continue"
            )
        accelerator.wait_for_everyone()
        if self.is_main:
            models = task.exports(accelerator.unwrap_model(model))
            export(models, task.tokenizer_dir, out, task.card, state["step"])
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return last if self.is_main else {}

    def _resume(self, task: Task, scheduler: torch.optim.lr_scheduler.LambdaLR) -> dict:
        """The run's state: fresh, or the newest intact checkpoint's after loading it (with its
        checks), the learning rate then set by this run's schedule at the saved position."""
        batch = self.recipe.schedule.global_batch_size
        state = {"step": 0, "skipped": 0, "global_batch_size": batch, "data": task.fingerprint,
                 "world": self.world, "max_steps": task.max_steps}  # fmt: skip
        saved = load_checkpoint(self.accelerator, self.out, self.wants_resume)
        if saved and saved.get("global_batch_size", batch) != batch:
            raise UserError(
                f"{self.out}: the checkpoint was made with schedule.global_batch_size "
                f"{saved['global_batch_size']}, this run has {batch}: resume with the same "
                "global batch (any number of processes, any per_device_batch_size)"
            )
        warnings = []
        if saved and "global_batch_size" not in saved:
            warnings.append("the checkpoint was made by an earlier layoutja, whose data order "
                            "differs: training goes on from its step in today's order")  # fmt: skip
        elif saved.get("data", state["data"]) != state["data"]:
            warnings.append("the data changed since the checkpoint (parts added, removed or "
                            "rewritten): training goes on from the saved step in the new data, "
                            "which is not where the interrupted run would have gone")  # fmt: skip
        if saved:
            learning_rate = follow_schedule(scheduler)
            before = saved.get("max_steps", task.max_steps)
            if before != task.max_steps and saved["step"] < task.max_steps and self.is_main:
                print(f"note: schedule.max_steps is {task.max_steps}, the checkpoint's run had "
                      f"{before}: the learning rate's linear decay is re-stretched to end at "
                      f"step {task.max_steps}; step {saved['step'] + 1} trains at "
                      f"{learning_rate:.3g}", file=sys.stderr)  # fmt: skip
        for warning in warnings if self.is_main else []:
            print(f"warning: {warning}", file=sys.stderr)
        return {**state, **{k: saved[k] for k in ("step", "skipped") if k in saved}}


def compile_encoders(model: torch.nn.Module) -> None:
    """torch.compile every transformer encoder stack of `model` (submodules named `encoder`:
    nearly all of a step's FLOPs) in place, so the state dict keeps its names. The heads stay
    eager: the masked-only LM head gathers a data-dependent number of tokens. Shapes are
    dynamic from the start: batches are padded to their longest window."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "encoder":
            module.compile(dynamic=True)


def step_seed(seed: int, step: int, rank: int) -> int:
    """A seed per (run, step, rank): dropout repeats exactly after a resume."""
    return (seed * 1_000_003 + step) * 4099 + rank
