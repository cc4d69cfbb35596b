"""Checkpoints of a run: everything `--resume` needs, written so that a kill never corrupts one.

    OUT/checkpoints/step-0000100/   model, optimizer, scheduler, scaler, RNG of every rank
                                    (accelerate's state), trainer_state.json (step, overflow
                                    steps, global batch size, data fingerprint), and hf/: the
                                    model(s) as Hugging Face directories with their tokenizer
                                    and model card

A checkpoint is written under a temporary name and renamed once complete; only complete ones
are listed. The main process of the job writes; every rank reads (OUT is on a filesystem that
every node shares, which the trainer checks at start).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from accelerate import Accelerator
from transformers import PreTrainedModel

from layoutja.common import UserError, copy_tokenizer
from layoutja.training.card import ModelCard

STATE = "trainer_state.json"


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in `out`, oldest first."""
    return sorted(p for p in (out / "checkpoints").glob("step-*") if (p / STATE).exists())


def latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1] if found else None


def load_checkpoint(accelerator: Accelerator, out: Path, wanted: bool) -> dict:
    """The trainer state of the last checkpoint (after loading it), or {} for a fresh run."""
    last = latest_checkpoint(out)
    if last and not wanted:
        raise UserError(f"{out} holds checkpoints: pass --resume to continue, or a new --out")
    if not (last and wanted):
        return {}
    accelerator.load_state(str(last))
    return json.loads((last / STATE).read_text())


def save_checkpoint(accelerator: Accelerator, out: Path, state: dict, keep: int,
                    models: dict[str, PreTrainedModel], tokenizer_dir: Path,
                    card: ModelCard | None = None) -> Path:  # fmt: skip
    """Save model, optimizer, scheduler, scaler, RNG and `state` as checkpoints/step-N, with
    `models` exported into its `hf/` (with their `card`), under a temporary name first so a
    kill mid-save loses nothing; returns its path. Called on every rank."""
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
        export(models, tokenizer_dir, tmp / "hf", card, state["step"], final / "hf")
        (tmp / STATE).write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoints(out)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def export(
    models: dict[str, PreTrainedModel],
    tokenizer_dir: Path,
    out: Path,
    card: ModelCard | None = None,
    step: int | None = None,
    location: Path | None = None,
) -> None:
    """Save each Hugging Face model (`{subdirectory: model}`, "" for `out` itself) with its
    tokenizer files beside it (AutoModel and AutoTokenizer load the directory) and, given a
    `card`, its model card (README.md) for the model at `step`, whose code loads `location`
    (where `out` is found once written; default `out`). Called by the main process."""
    from transformers.utils import logging as transformers_logging

    # A "Writing model shards" bar per save, every checkpoint, is noise in a training log.
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        for subdirectory, model in models.items():
            target = out / subdirectory
            model.save_pretrained(target)
            copy_tokenizer(tokenizer_dir, target)
            if card is not None:
                card.write(target, model, subdirectory, step, (location or out) / subdirectory)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
