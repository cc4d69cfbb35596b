"""Training jobs that fail fast and clearly: an error in a DataLoader worker or on one rank ends
the whole job at once with its message.

Jobs that could hang run as subprocesses under a timeout: a hang fails the test, it does not
stall the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import TRAIN
from .slurm_cluster import free_port

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
HANG = 120  # seconds: far above what any of these jobs takes to fail (about 10)


def run_args(data: Path, tokenizer: Path, out: Path, steps: int, **settings) -> list[str]:
    """`pretrain` of the tiny MVLM recipe; `settings`: more `--section.key value`s."""
    args = ["pretrain", "--config", TRAIN / "mvlm-tiny.yaml", "--data", data, "--tokenizer",
            tokenizer, "--out", out, "--schedule.max_steps", steps, "--data.eval_pages", 0,
            "--quiet"]  # fmt: skip
    for key, value in settings.items():
        args += [f"--{key.replace('__', '.')}", value]
    return [str(a) for a in args]


def job(args: list[str], nproc: int = 0) -> subprocess.CompletedProcess:
    """The command, under torchrun with `nproc` processes; a job that hangs fails the test
    after HANG seconds."""
    launch = [sys.executable, "-m", "layoutja"]
    if nproc:
        launch = [TORCHRUN, "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                  "--master_port", str(free_port()), "-m", "layoutja"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*launch, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        # Every process it started too (torchrun gives each rank a session of its own): they
        # hold its output open.
        for each in [*psutil.Process(process.pid).children(recursive=True), process]:
            each.kill()
        stderr = process.communicate()[1]
        pytest.fail(f"still running after {HANG} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def corrupt_dir(localized_dir, tmp_path_factory) -> Path:
    """The localized pages with one part whose every page has a box with x1 > 1000."""
    out = tmp_path_factory.mktemp("corrupt")
    for path in localized_dir.iterdir():
        shutil.copy(path, out / path.name)
    part = sorted(out.glob("part-*.parquet"))[1]
    table = pq.read_table(part)
    rows = table.to_pylist()
    for row in rows:
        row["bbox"][-1] = [5, 5, 1003, 9]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), part)
    return out


INVALID_BOX = "has an invalid box [5, 5, 1003, 9]"


def test_an_error_in_a_dataloader_worker_ends_the_run_at_once_in_one_line(
    corrupt_dir, unidic_dir, tmp_path
):
    done = job(run_args(corrupt_dir, unidic_dir, tmp_path / "run", 40, data__data_workers=2))
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1, done.stderr[-3000:]
    assert last.startswith("layoutja pretrain: error: part-") and last.endswith(INVALID_BOX)
    assert "Traceback" not in done.stderr


def test_an_error_on_one_rank_ends_every_rank_and_the_launcher_names_it(
    corrupt_dir, unidic_dir, tmp_path
):
    args = run_args(corrupt_dir, unidic_dir, tmp_path / "run", 40, data__data_workers=2,
                    schedule__per_device_batch_size=2)  # fmt: skip
    done = job(args, nproc=2)
    assert done.returncode != 0
    # torchrun's summary ends with the failing rank's message as the root cause.
    root = done.stderr.split("Root Cause (first observed failure):")[-1]
    assert "traceback : layoutja pretrain: error: part-" in root and INVALID_BOX in root, (
        done.stderr[-3000:]
    )
