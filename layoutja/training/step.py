"""One optimizer step of the global batch, and the optimizer and schedule it steps.

- Adam(W) with a linear warmup and decay, stepped once per optimizer step; the schedule is a
  function of the step, so a resumed run follows its own recipe (`follow_schedule`);
- the loss normalized by the global batch's token counts, all-reduced before the first
  micro-batch, so any number of processes and micro-batches take the same steps;
- a NaN/inf loss or gradient stops the run before it changes the model; fp16 overflow steps
  (read from the loss scale, which also holds for fused optimizers) hold the schedule back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator

from layoutja.common import UserError
from layoutja.training.checkpoint import latest_checkpoint
from layoutja.training.config import Recipe


class TrainingStopped(UserError):
    """The loss became NaN/inf: stopped before the bad step changed anything."""


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


def follow_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR) -> float:
    """Set the learning rates of a scheduler loaded from a checkpoint by its schedule function
    (this run's: max_steps may have changed) at the loaded position; returns the first one.
    The checkpoint holds the rate its own schedule gave the next step: 0 after a finished run,
    so a run resumed for more steps would take its first new step at 0."""
    groups = scheduler.optimizer.param_groups
    for group, base, rate in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * rate(scheduler.last_epoch)
    return groups[0]["lr"]


def global_counts(accelerator: Accelerator, counts: list[dict[str, int]]) -> dict:
    """The token counts of the whole global batch (summed over micro-batches and ranks), as
    tensors on the device: the denominators of the step's losses."""
    names = sorted(counts[0])
    local = torch.tensor([[c[k] for k in names] for c in counts], dtype=torch.float32).sum(0)
    total = accelerator.reduce(local.to(accelerator.device), "sum")
    return dict(zip(names, total.clamp(min=1).unbind(), strict=True))


def optimizer_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    micro_batches: list[dict],
    token_counts: Callable[[dict], dict[str, int]],
    max_grad_norm: float,
    out: Path,
    step: int,
    stop: bool = False,
) -> tuple[dict[str, float], bool, bool]:
    """One optimizer step over this rank's micro-batches; returns (the global batch's losses,
    skipped, stop: whether any rank asked to stop).

    Gradients are all-reduced only on the last micro-batch; the losses and the stop requests of
    all ranks are reduced once per step. A NaN/inf loss (on any rank) raises TrainingStopped
    before the update.
    """
    device, world = accelerator.device, accelerator.num_processes
    denominators = global_counts(accelerator, [token_counts(b) for b in micro_batches])
    sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with nullcontext() if last else accelerator.no_sync(model):
            inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            losses = model(**inputs, denominators=denominators)
            # DDP averages gradients over the ranks; the losses are shares of the global one.
            accelerator.backward(losses["loss"] * world)
        for key, value in losses.items():
            sums[key] = sums.get(key, 0) + value.detach().float()
    names = list(sums)
    flag = torch.tensor(float(stop), device=device)
    reduced = accelerator.reduce(torch.stack([sums[k] for k in names] + [flag]), "sum").tolist()
    stop = reduced.pop() > 0
    metrics = dict(zip(names, reduced, strict=True))
    if not math.isfinite(metrics["loss"]):
        good = latest_checkpoint(out)
        raise TrainingStopped(
            f"loss became {metrics['loss']} at step {step}; stopped before updating the model. "
            + (
                f"Last good checkpoint: {good} (--resume continues from it; a lower "
                "learning_rate may help)"
                if good
                else "No checkpoint was saved yet."
            )
        )
    scaler = accelerator.scaler
    if max_grad_norm > 0:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)  # unscales fp16
        # With fp16 the scaler skips a step whose gradients overflowed; without it (bf16, fp32)
        # such gradients would write NaN into the weights.
        if scaler is None and not math.isfinite(float(norm)):
            raise TrainingStopped(
                f"gradients became {float(norm)} at step {step}; stopped before updating the "
                f"model. Last good checkpoint: {latest_checkpoint(out)}"
            )
    scale = scaler.get_scale() if scaler is not None else 0.0
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    # An fp16 overflow: the scaler skips the update and lowers its scale. A fused optimizer is
    # called all the same (its kernel skips the update), so the lowered scale is what tells.
    skipped = scaler is not None and scaler.get_scale() < scale
    if not skipped:
        scheduler.step()
    return metrics, skipped, stop
