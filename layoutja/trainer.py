"""The training machinery shared by pretraining (layoutja.pretrain) and fine-tuning.

Each training loop reads as build → batches → `optimizer_step` → log → `save_checkpoint`; this
module holds the parts that must behave the same in all of them:

- `make_accelerator`: one CPU or GPU, or a data-parallel job under `accelerate launch`/`torchrun`;
- `accumulation_steps`: the recipe's global batch on any number of devices;
- `build_optimizer`: Adam(W) and the linear warmup/decay schedule, stepped once per optimizer
  step (not once per process, as accelerate's scheduler wrapper would) and checkpointed;
- `optimizer_step`: gradient accumulation without needless all-reduces, a NaN/inf loss check
  before anything changes, clipping on unscaled gradients, fp16 overflow steps counted;
- `save_checkpoint`/`latest_checkpoint`: everything `--resume` needs, written under a temporary
  name and renamed, the last `keep_checkpoints` kept.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel

from layoutja.config import TrainConfig
from layoutja.errors import UserError

STATE = "trainer_state.json"


class _TiedWeightsNote(logging.Filter):
    """accelerate warns that it saves a tensor shared by two modules once (ELECTRA's embeddings,
    tied LM heads); that is intended, and loading the checkpoint restores the sharing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())


class TrainingStopped(UserError):
    """The loss became NaN/inf: stopped before the bad step changed anything."""


def make_accelerator(config: TrainConfig) -> Accelerator:
    precision = config.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        precision = "no"  # fp16 autocast needs a GPU; CPU runs train in fp32
    # cpu=True without a GPU: otherwise ranks launched by torchrun/accelerate on CPUs would each
    # train alone instead of as one data-parallel job.
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def accumulation_steps(config: TrainConfig, world: int) -> int:
    """Micro-batches per optimizer step so that the global batch is the recipe's."""
    per_step = config.per_device_batch_size * world
    if config.global_batch_size % per_step:
        raise UserError(
            f"global_batch_size {config.global_batch_size} is not a multiple of "
            f"per_device_batch_size {config.per_device_batch_size} × {world} device(s)"
        )
    return config.global_batch_size // per_step


def build_optimizer(
    model: torch.nn.Module, config: TrainConfig, max_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (Adam when weight_decay is 0) and a linear warmup, then linear decay to 0.

    Biases and LayerNorm weights (the 1-D parameters) are not decayed, as in BERT and ELECTRA.
    """
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in trained if p.ndim > 1]},
            {"params": [p for p in trained if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )
    warmup = config.warmup_steps

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def prepare(accelerator: Accelerator, model, optimizer, scheduler):
    """Wrap model and optimizer; the scheduler stays ours, registered for checkpoints."""
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return model, optimizer


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


def save_checkpoint(accelerator: Accelerator, out: Path, state: dict, keep: int) -> None:
    """Save model, optimizer, scheduler, scaler, RNG and `state` (the data position) as
    checkpoints/step-N, under a temporary name first so a kill mid-save loses nothing."""
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
        (tmp / STATE).write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoints(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def export(
    accelerator: Accelerator, models: dict[str, PreTrainedModel], tokenizer_dir: Path, out: Path
) -> None:
    """Save each trained Hugging Face model (`{subdirectory: model}`, "" for `out` itself) with
    its tokenizer files beside it (AutoModel and AutoTokenizer load the directory), from the
    main process; end the run."""
    from layoutja.init_model import TOKENIZER_FILES

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for subdirectory, model in models.items():
            target = out / subdirectory
            model.save_pretrained(target)
            for name in TOKENIZER_FILES:
                if (tokenizer_dir / name).exists():
                    shutil.copy(tokenizer_dir / name, target / name)
    accelerator.end_training()
