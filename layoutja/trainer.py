"""Pretraining loop: build → batches → step → log → checkpoint → export, with `accelerate`.

Runs as it is on one CPU or GPU, or under `accelerate launch` on many GPUs and nodes. The global
batch (`global_batch_size`) is the same on any setup: per-device batch × devices × gradient
accumulation. A step is exactly reproducible: the masking generator and the dropout RNG are
seeded from (seed, step, rank), and the data position is (epoch, windows taken), so a run that
is stopped and resumed from a checkpoint takes the same steps as one that was not.

Output directory:
    config.json, model.safetensors, vocab.txt, ...  the exported Hugging Face model (at the end)
    checkpoints/step-000100/    model, optimizer, scheduler, scaler, RNG (accelerate) + position
    metrics.jsonl, tensorboard/, recipe.yaml
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator

from layoutja.config import TrainConfig
from layoutja.data import SpecialIds, WindowStream, collate, localized_files, mvlm_mask
from layoutja.errors import UserError
from layoutja.init_model import TOKENIZER_FILES
from layoutja.mvlm import MVLMModel, load_layoutlm, new_layoutlm
from layoutja.tokenizer import load_vocab, resolve_tokenizer_dir
from layoutja.trainlog import MetricsLog, model_flops_per_token, peak_flops

STATE = "trainer_state.json"


class TrainingStopped(UserError):
    """The loss became NaN/inf: stopped before the bad step changed anything."""


def _tokenizer_dir(data: Path, init: str | None, tokenizer: str | None) -> Path:
    """The tokenizer the data was made with; the model's vocabulary must be the same."""
    manifests = sorted(data.glob("manifest*.json")) if data.is_dir() else []
    manifest = json.loads(manifests[0].read_text(encoding="utf-8")) if manifests else {}
    candidates = [tokenizer, init, manifest.get("tokenizer")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "vocab.txt").exists():
            path = Path(candidate)
            break
    else:
        path = resolve_tokenizer_dir(next(c for c in candidates if c) if any(candidates) else "")
    expected = manifest.get("tokenizer_vocab_sha256")
    if expected:
        actual = hashlib.sha256((path / "vocab.txt").read_bytes()).hexdigest()
        if actual != expected:
            raise UserError(
                f"{path}: not the vocabulary {data} was localized with (vocab.txt hashes differ)"
            )
    return path


def _step_seed(config: TrainConfig, step: int, rank: int) -> int:
    return (config.seed * 1_000_003 + step) * 4099 + rank


def _checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in (out / "checkpoints").glob("step-*") if (p / STATE).exists())


def pretrain(
    config: TrainConfig,
    data: str | Path,
    out: str | Path,
    *,
    init: str | None = None,
    tokenizer: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train MVLM on localized pages; returns the last logged metrics (main process)."""
    from tqdm import tqdm

    data, out = Path(data), Path(out)
    precision = config.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        precision = "no"  # fp16 autocast needs a GPU; CPU runs train in fp32
    # cpu=True without a GPU: otherwise ranks launched by torchrun/accelerate on CPUs would each
    # train alone instead of as one data-parallel job.
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    per_step = config.per_device_batch_size * world
    if config.global_batch_size % per_step:
        raise UserError(
            f"global_batch_size {config.global_batch_size} is not a multiple of "
            f"per_device_batch_size {config.per_device_batch_size} × {world} device(s)"
        )
    accumulation = config.global_batch_size // per_step

    # --- build ---------------------------------------------------------------------------
    tokenizer_dir = _tokenizer_dir(data, init, tokenizer)
    vocab = load_vocab(tokenizer_dir / "vocab.txt")
    specials = SpecialIds(*(vocab[t] for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")))
    if init:
        mlm = load_layoutlm(init)
    elif config.model:
        mlm = new_layoutlm(len(vocab), config.model)
    else:
        raise UserError("give --init MODEL (a BERT or LayoutLM), or a recipe with a model section")
    if mlm.config.vocab_size != len(vocab):
        raise UserError(
            f"{tokenizer_dir}: {len(vocab)} tokens, the model has {mlm.config.vocab_size}"
        )
    if config.max_length > mlm.config.max_position_embeddings:
        raise UserError(
            f"max_length {config.max_length} > the model's {mlm.config.max_position_embeddings}"
        )
    model = MVLMModel(mlm)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )

    def schedule(step: int) -> float:  # linear warmup, then linear decay to 0 at max_steps
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        return max(0.0, (config.max_steps - step) / max(1, config.max_steps - config.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    # The scheduler is stepped here once per optimizer step (accelerate's wrapper would step it
    # once per process) and saved with the checkpoints.
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    step, epoch, taken, skipped = 0, 0, 0, 0
    checkpoints = _checkpoints(out)
    if resume and checkpoints:
        accelerator.load_state(str(checkpoints[-1]))
        state = json.loads((checkpoints[-1] / STATE).read_text())
        step, epoch, taken, skipped = (state[k] for k in ("step", "epoch", "taken", "skipped"))
    elif checkpoints and not resume:
        raise UserError(f"{out} holds checkpoints: pass --resume to continue, or a new --out")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        recipe = yaml.safe_dump(dataclasses.asdict(config), allow_unicode=True)
        (out / "recipe.yaml").write_text(recipe, encoding="utf-8")

    stream = WindowStream(
        localized_files(data),
        specials,
        seed=config.seed,
        rank=rank,
        world=world,
        max_length=config.max_length,
        margin=config.margin,
    ).windows(epoch, taken)
    log = MetricsLog(out, enabled=accelerator.is_main_process, resume_step=step)
    flops_per_token = model_flops_per_token(mlm.config, config.max_length)
    peak = peak_flops(accelerator.device) * world
    bar = tqdm(
        total=config.max_steps,
        initial=step,
        unit="step",
        disable=not (progress and accelerator.is_main_process),
        dynamic_ncols=True,
    )
    model.train()
    window_tokens, clock, last = 0, time.perf_counter(), {}
    while step < config.max_steps:
        # --- batches and one optimizer step -----------------------------------------------
        torch.manual_seed(_step_seed(config, step, rank))  # dropout: same on resume
        generator = torch.Generator().manual_seed(_step_seed(config, step, rank))
        loss_sum = torch.zeros((), device=accelerator.device)
        for micro in range(accumulation):
            windows = []
            for _ in range(config.per_device_batch_size):
                window, epoch, taken = next(stream)
                windows.append(window)
            batch = collate(windows, specials.pad)
            input_ids, labels = mvlm_mask(
                batch["input_ids"], specials, len(vocab), generator, config.mask_probability
            )
            window_tokens += int(batch["attention_mask"].sum()) * world
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            sync = micro == accumulation - 1 or world == 1
            with nullcontext() if sync else accelerator.no_sync(model):
                loss = model(
                    input_ids.to(accelerator.device),
                    batch["bbox"],
                    batch["attention_mask"],
                    labels.to(accelerator.device),
                )
                accelerator.backward(loss / accumulation)
            loss_sum += loss.detach()
        step_loss = accelerator.reduce(loss_sum / accumulation, "mean").item()
        if not math.isfinite(step_loss):
            last_good = _checkpoints(out)
            raise TrainingStopped(
                f"loss became {step_loss} at step {step + 1}; stopped before updating the model. "
                + (
                    f"Last good checkpoint: {last_good[-1]} (--resume continues from it; "
                    "a lower learning_rate may help)"
                    if last_good
                    else "No checkpoint was saved yet."
                )
            )
        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if accelerator.optimizer_step_was_skipped:
            skipped += 1  # an fp16 overflow: the scaler lowers its scale; normal, only counted
        else:
            scheduler.step()
        step += 1
        bar.update()

        # --- log ------------------------------------------------------------------------
        if step % config.log_every == 0 or step == config.max_steps:
            elapsed = time.perf_counter() - clock
            tokens_per_s = window_tokens / elapsed
            last = {
                "step": step,
                "loss": round(step_loss, 5),
                "learning_rate": scheduler.get_last_lr()[0],
                "tokens_per_s": round(tokens_per_s, 1),
                "skipped_steps": skipped,
                "epoch": epoch,
            }
            if peak:
                last["mfu"] = round(tokens_per_s * flops_per_token / peak, 4)
            log.write(last)
            bar.set_postfix(loss=f"{step_loss:.4f}", refresh=False)
            window_tokens, clock = 0, time.perf_counter()

        # --- checkpoint -----------------------------------------------------------------
        if step % config.save_every == 0 or step == config.max_steps:
            _save_checkpoint(accelerator, out, step, epoch, taken, skipped, config)
    bar.close()
    log.close()

    # --- export ---------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).mlm.save_pretrained(out)
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).exists():
                shutil.copy(tokenizer_dir / name, out / name)
    accelerator.end_training()
    return last if accelerator.is_main_process else {}


def _save_checkpoint(
    accelerator: Accelerator,
    out: Path,
    step: int,
    epoch: int,
    taken: int,
    skipped: int,
    config: TrainConfig,
) -> None:
    """Save under a temporary name and rename, so a kill mid-save leaves the last one intact."""
    final = out / "checkpoints" / f"step-{step:07d}"
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)  # before any rank writes its RNG state into it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {"step": step, "epoch": epoch, "taken": taken, "skipped": skipped}
        (tmp / STATE).write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in _checkpoints(out)[: -config.keep_checkpoints]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
