"""Checkpoints of a run: everything `--resume` needs, written so that neither a kill nor a power
loss leaves a damaged checkpoint that looks complete, and verified before a resume trusts one.

    OUT/checkpoints/step-0000100/   model, optimizer, scheduler, scaler, RNG of every rank
                                    (accelerate's state), trainer_state.json (step, overflow
                                    steps, global batch size, max_steps, data fingerprint, and
                                    the size and SHA-256 of every state file), and hf/: the
                                    model(s) as Hugging Face directories with their tokenizer
                                    and model card

A checkpoint is written under a temporary name (`.tmp-step-…`), flushed to disk and renamed
once complete; trainer_state.json, written last, marks it complete. A save that fails removes
what it wrote, and the next run's start removes what a killed one left. At `--resume` the newest
checkpoint whose files match their record is loaded: a damaged newer one is set aside
(`damaged-step-…`) with a warning saying what was wrong. The main process of the job writes and
verifies; every rank reads (OUT is on a filesystem that every node shares, which the trainer
checks at start).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import PreTrainedModel

from layoutja.common import Preempted, UserError, copy_tokenizer, human_bytes
from layoutja.localize.store import atomic_write
from layoutja.training.card import ModelCard

STATE = "trainer_state.json"
PARTIAL = ".tmp-"  # a checkpoint being written
DAMAGED = "damaged-"  # a checkpoint that failed its verification, kept for inspection


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in `out`, oldest first."""
    return sorted(p for p in (out / "checkpoints").glob("step-*") if (p / STATE).exists())


def latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1] if found else None


def remove_partial_checkpoints(out: Path) -> None:
    """Remove what a killed save left (`.tmp-step-…`): it can never be resumed, and on a full
    disk it holds the space the next checkpoint needs. Called by the main process at start."""
    for partial in (out / "checkpoints").glob(f"{PARTIAL}step-*"):
        shutil.rmtree(partial, ignore_errors=True)


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About what a checkpoint of `model` takes on disk: its weights twice (the state and the
    hf/ export) and Adam's two moments of every trained weight."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return 2 * weights + 2 * trained


class DiskFull(UserError):
    """OUT has no room for what the run writes (checkpoints first)."""

    def __init__(self, out: Path, needed: int):
        free = shutil.disk_usage(out).free
        super().__init__(f"no space left on {out} ({human_bytes(free)} free, a checkpoint needs "
                         f"about {human_bytes(needed)}): free some space or give a larger --out, "
                         "then run again with --resume")  # fmt: skip


def check_space(out: Path, needed: int) -> None:
    """DiskFull unless `out` has room for one more checkpoint of `needed` bytes."""
    if shutil.disk_usage(out).free < needed:
        raise DiskFull(out, needed)


@contextmanager
def disk_full_named(out: Path, needed: int) -> Iterator[None]:
    """Around a run: an error while OUT has no room for a checkpoint of `needed` bytes (a save
    that failed, writing a log) is DiskFull, which says so; torch's own errors on a full disk
    ("unexpected pos", "iostream error") do not."""
    try:
        yield
    except (UserError, Preempted):  # a preempted run has saved: a nearly full disk is no error
        raise
    except Exception as e:
        no_space = isinstance(e, OSError) and e.errno == errno.ENOSPC
        if no_space or (out.exists() and shutil.disk_usage(out).free < needed):
            raise DiskFull(out, needed) from e
        raise


def _sync(path: Path) -> None:
    """fsync a file or a directory: what it holds (or lists) survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            _sync(Path(directory) / name)
        _sync(Path(directory))


def _record(path: Path) -> dict:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def damage(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint's state files (those `--resume` loads), naming the file,
    or None when each has the size and checksum recorded at save. Checkpoints of an earlier
    layoutja, without a record, are trusted as they are."""
    path = checkpoint / STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        return f"{path}: cannot be read ({e.strerror or e})"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{path}: {'empty' if not path.stat().st_size else f'not JSON ({e})'}"
    if not isinstance(state, dict) or "step" not in state:
        return f"{path}: no trainer state in it"
    for name, recorded in state.get("files", {}).items():
        path = checkpoint / name
        if not path.is_file():
            return f"{path}: missing"
        size = path.stat().st_size
        if size != recorded["bytes"]:
            return f"{path}: {size:,} bytes of the {recorded['bytes']:,} written"
        if _record(path)["sha256"] != recorded["sha256"]:
            return f"{path}: not what was written (its SHA-256 differs from the one recorded)"
    return None


def _choose(out: Path) -> tuple[Path, list[str]]:
    """The newest intact checkpoint (damaged newer ones set aside) and the warnings to print;
    a UserError naming what is wrong with each when none is intact."""
    damaged = []
    for checkpoint in reversed(checkpoints(out)):
        problem = damage(checkpoint)
        if problem is None:
            break
        damaged.append((checkpoint, problem))
    else:
        raise UserError(f"no intact checkpoint to resume from in {out / 'checkpoints'}: "
                        + "; ".join(problem for _, problem in damaged)
                        + " (restore one, or start again with a new --out)")  # fmt: skip
    warnings = []
    for bad, problem in damaged:
        aside = bad.with_name(DAMAGED + bad.name)
        shutil.rmtree(aside, ignore_errors=True)
        bad.rename(aside)
        warnings.append(f"checkpoint {bad.name} is damaged ({problem}): resuming from "
                        f"{checkpoint.name}; the damaged one is kept as {aside}")  # fmt: skip
    return checkpoint, warnings


def load_checkpoint(accelerator: Accelerator, out: Path, wanted: bool) -> dict:
    """The trainer state of the newest intact checkpoint (after loading it), or {} for a fresh
    run. The main process verifies and chooses; every rank loads the same one."""
    if checkpoints(out) and not wanted:
        raise UserError(f"{out} holds checkpoints: pass --resume to continue, or a new --out")
    if not wanted:
        return {}
    choice: list = [None]
    if accelerator.is_main_process:
        try:
            choice = [_choose(out) if checkpoints(out) else (None, [])]
        except UserError as e:
            choice = [str(e)]
    if accelerator.num_processes > 1:
        choice = broadcast_object_list(choice)
    if isinstance(choice[0], str):  # raised on every rank, so that none waits for another
        raise UserError(choice[0])
    checkpoint, warnings = choice[0]
    for warning in warnings if accelerator.is_main_process else []:
        print(f"warning: {warning}", file=sys.stderr)
    if checkpoint is None:
        return {}
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as e:  # a file of an earlier layoutja, without a record to check it by
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{checkpoint}: cannot load this checkpoint: {reason}") from e
    return json.loads((checkpoint / STATE).read_text(encoding="utf-8"))


def save_checkpoint(accelerator: Accelerator, out: Path, state: dict, keep: int,
                    models: dict[str, PreTrainedModel], tokenizer_dir: Path,
                    card: ModelCard | None = None) -> Path:  # fmt: skip
    """Save model, optimizer, scheduler, scaler, RNG and `state` as checkpoints/step-N, with
    `models` exported into its `hf/` (with their `card`), under a temporary name first and on
    disk before the rename that completes it; returns its path. A failed save removes what it
    wrote. Called on every rank."""
    final = out / "checkpoints" / f"step-{state['step']:07d}"
    tmp = final.with_name(PARTIAL + final.name)
    main = accelerator.is_main_process
    try:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)  # before any rank writes its RNG state into it
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # none writes now (a save makes temporary files)
        _sync_tree(tmp)  # on every rank: each flushes what it wrote, its RNG state at least
        accelerator.wait_for_everyone()
        if main:
            files = {p.name: _record(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            export(models, tokenizer_dir, tmp / "hf", card, state["step"], final / "hf")
            text = json.dumps({**state, "files": files})
            atomic_write(tmp / STATE, lambda path: path.write_text(text, encoding="utf-8"))
            _sync_tree(tmp / "hf")
            _sync(tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            _sync(final.parent)  # the rename itself
            for old in checkpoints(out)[:-keep]:
                shutil.rmtree(old)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
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
