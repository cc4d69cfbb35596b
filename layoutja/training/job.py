"""The job around a training run: its processes, their output directory, hub downloads, signals.

A run is one process, or a data-parallel job of many (`torchrun`, `accelerate launch`, one or
several nodes, under SLURM or not). What the job needs beyond the training loop is here:

- the accelerator, with the process group's timeout from the recipe (an evaluation or a
  checkpoint of one rank must not outlast it);
- one output directory for the whole job: the main process writes it, every rank reads it, and
  every rank checks at start that it sees what the main process wrote;
- hub models downloaded once: the main process first, then each node's first process, then
  the others, each from the cache the earlier ones filled;
- preemption: SIGTERM or SIGUSR1 to any rank asks the job to stop; the ranks agree at the next
  step boundary (`StopSignals`), write a checkpoint and exit with EXIT_PREEMPTED; a rank's
  background data processes outlive such signals but obey their rank (`WorkerSignals`), so an
  error ends the rank at once instead of leaving it waiting for them;
- no leftovers: a run refused or crashed before it logged or saved anything leaves no output
  directory behind (`removed_unless_trained`).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import Accelerator, InitProcessGroupKwargs
from accelerate.utils import broadcast_object_list, gather_object

from layoutja.common import UserError, allow_tf32
from layoutja.training.config import Recipe

MARKER = ".layoutja-job"  # written by the main process into OUT, read back by every rank
T = TypeVar("T")


def make_accelerator(recipe: Recipe) -> Accelerator:
    precision = recipe.schedule.mixed_precision
    if precision == "fp16" and not torch.cuda.is_available():
        precision = "no"  # fp16 autocast needs a GPU; CPU runs train in fp32
    if torch.cuda.is_available():
        allow_tf32()
    timeout = timedelta(minutes=recipe.schedule.timeout_minutes)
    # cpu=True without a GPU: otherwise ranks launched by torchrun/accelerate on CPUs would each
    # train alone instead of as one data-parallel job.
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])  # fmt: skip


def check_shared_output(accelerator: Accelerator, out: Path) -> None:
    """The main process creates `out` and writes a new token into it; every rank must read that
    token back, else (on every rank, so that none waits forever) a UserError."""
    token = [uuid.uuid4().hex if accelerator.is_main_process else None]
    if accelerator.is_main_process:
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / MARKER).write_text(token[0])
        except OSError as e:  # a full disk, a read-only one: said in one line, on this rank
            raise UserError(f"{out}: cannot write there: {e.strerror or e}") from None
    if accelerator.num_processes > 1:
        token = broadcast_object_list(token)
    accelerator.wait_for_everyone()
    try:
        seen = (out / MARKER).read_text() == token[0]
    except OSError:
        seen = False
    where = [(seen, accelerator.process_index, socket.gethostname())]
    views = gather_object(where) if accelerator.num_processes > 1 else where
    blind = [f"rank {rank} on {host}" for ok, rank, host in views if not ok]
    if blind:
        raise UserError(
            f"{out}: {', '.join(blind)} cannot see what the main process wrote there: OUT must "
            "be on a filesystem that every node shares"
        )


@contextmanager
def removed_unless_trained(out: Path) -> Iterator[None]:
    """Around a run: where `out` was new (or an empty directory) and the run stops with an error
    before it wrote a metrics line or a checkpoint, the job's main process removes what the run
    wrote there (nothing of it can be resumed or read) and says so; a directory that existed
    stays, emptied (it may have been set up beforehand: striping, permissions)."""
    main = os.environ.get("RANK", "0") == "0"  # before the accelerator exists
    existed = out.exists()
    fresh = not existed or (out.is_dir() and not any(out.iterdir()))
    try:
        yield
    except BaseException:
        metrics = out / "metrics.jsonl"
        trained = (out / "checkpoints").exists() or (metrics.exists() and metrics.stat().st_size)
        if main and fresh and out.is_dir() and not trained:
            for item in out.iterdir() if existed else [out]:
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)
            if not out.exists() or (existed and not any(out.iterdir())):
                print(f"{out}: {'emptied' if existed else 'removed'}: the run stopped before "
                      "its first metrics line or checkpoint", file=sys.stderr)  # fmt: skip
        raise


def main_first(accelerator: Accelerator, fetch: Callable[[], T]) -> T:
    """`fetch()` (e.g. a hub download) on the job's main process first, then on the first
    process of each node, then on the others: one download per cache, shared or per node. An
    error is raised after the turns, so that no rank waits for one that failed."""
    turn = 0 if accelerator.is_main_process else 1 if accelerator.is_local_main_process else 2
    result, error = None, None
    for now in range(3):
        if now == turn:
            try:
                result = fetch()
            except Exception as e:  # re-raised below, once every rank had its turn
                error = e
        if now < 2:
            accelerator.wait_for_everyone()
    if error is not None:
        raise error
    return result


class StopSignals:
    """While active, SIGTERM and SIGUSR1 are recorded instead of ending the process: the
    trainer reads `requested` at each step boundary (all ranks agree on it) and stops there."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _record(self, signum: int, frame: object) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class WorkerSignals:
    """The `worker_init_fn` of a rank's DataLoader: its workers ignore SIGTERM and SIGUSR1.

    SLURM (every process of a job step) and torchrun signal every process of a job: the rank
    then stops at its next step boundary, needing its workers' batches until then, and shuts
    them down itself. (A mask that lets only the rank's own SIGTERM through is not enough: a
    process-directed signal reaches any thread of the worker that does not block it, and one
    did, under SLURM.) Workers that ignore SIGTERM would make the rank's exit after an error
    wait on them forever (Python's exit terminates its children with SIGTERM, then joins them),
    so the rank kills what is left of them as it exits."""

    def __init__(self) -> None:
        atexit.unregister(_kill_children)  # once, however many loaders
        atexit.register(_kill_children)  # runs before multiprocessing's own exit handler

    def __call__(self, worker: int) -> None:
        for sig in StopSignals.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def _kill_children() -> None:
    """SIGKILL to the child processes still alive at exit (after an error: DataLoader workers
    that ignore SIGTERM); none are left after a run that ends normally."""
    for child in multiprocessing.active_children():
        child.kill()
