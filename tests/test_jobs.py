"""Training jobs that fail fast and clearly: an error in a DataLoader worker or on one rank ends
the whole job at once with its message, a full disk is named and cleaned up after, a damaged
checkpoint is not trusted, and a finished run goes on training when given more steps.

Jobs that could hang run as subprocesses under a timeout: a hang fails the test, it does not
stall the suite."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from layoutja.cli.main import main as layoutja

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


def checkpoint_size(out: Path, step: int) -> int:
    return sum(f.stat().st_size for f in (out / "checkpoints" / f"step-{step:07d}").rglob("*")
               if f.is_file())  # fmt: skip


@pytest.fixture
def small_disk(tmp_path, localized_dir, unidic_dir):
    """A tmpfs where one tiny MVLM checkpoint fits, not two (its size depends on the
    vocabulary, larger where the real SHINRA sample trains it: measured by a first run)."""
    probe = tmp_path / "probe"
    assert (
        job(run_args(localized_dir, unidic_dir, probe, 2, checkpoint__save_every=2)).returncode == 0
    )
    size = checkpoint_size(probe, 2)
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(1.55 * size)}", "tmpfs",
                           str(mount)], capture_output=True, text=True)  # fmt: skip
    if made.returncode:
        pytest.skip(f"a full disk is made with a small tmpfs, which needs root "
                    f"(CAP_SYS_ADMIN): {made.stderr.strip()}")  # fmt: skip
    yield mount, size
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_a_full_disk_is_named_and_what_a_failed_save_left_is_removed(
    small_disk, localized_dir, unidic_dir
):
    mount, size = small_disk
    out = mount / "run"
    args = run_args(localized_dir, unidic_dir, out, 6, data__data_workers=2,
                    checkpoint__save_every=2)  # fmt: skip
    done = job(args)  # the checkpoint of step 4 does not fit beside step 2's
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1, done.stderr[-3000:]
    assert last.startswith(f"layoutja pretrain: error: no space left on {out} (")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002"]
    # the estimate is what the checkpoint that fitted takes (its size depends on the vocabulary,
    # which is larger where the real SHINRA sample is there to train it)
    needed = re.search(r"MiB free, a checkpoint needs about ([\d.]+) MiB\)", last)
    written = checkpoint_size(out, 2) / 2**20
    assert needed and abs(float(needed[1]) - written) <= 0.1 * written, (last, written)
    # A save killed midway leaves its temporary directory: a rerun removes it first, then
    # finds the disk still too full and says so before writing anything.
    partial = out / "checkpoints" / ".tmp-step-0000004"
    partial.mkdir()
    (partial / "optimizer.bin").write_bytes(bytes(int(0.4 * size)))
    done = job([*args, "--resume"])
    assert done.returncode == 1 and "no space left on" in done.stderr.splitlines()[-1]
    assert not partial.exists() and "Traceback" not in done.stderr
    subprocess.run(["mount", "-o", f"remount,size={5 * size}", str(mount)], check=True)
    done = job([*args, "--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "checkpoints" / "step-0000006").is_dir()


def losses(out: Path) -> dict[int, float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m["loss"] for m in map(json.loads, lines)}


def test_a_damaged_checkpoint_is_set_aside_and_none_intact_is_refused_by_name(
    localized_dir, unidic_dir, tmp_path, capfd
):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = run_args(localized_dir, unidic_dir, whole, 5, data__data_workers=0,
                    checkpoint__save_every=1, checkpoint__keep_checkpoints=5,
                    checkpoint__log_every=1)  # fmt: skip
    assert layoutja(args) == 0
    shutil.copytree(whole / "checkpoints", cut / "checkpoints")
    # What a power loss or a copy cut short leaves: half a model, an optimizer state cut off,
    # an empty trainer state. The intact step 2 is where the run goes on from.
    five, four, three = (cut / "checkpoints" / f"step-000000{s}" for s in (5, 4, 3))
    with open(five / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    with open(four / "optimizer.bin", "r+b") as f:
        f.truncate(f.seek(0, 2) - 100)
    (three / "trainer_state.json").write_text("")
    capfd.readouterr()
    resume = [*args[: args.index("--out") + 1], str(cut), *args[args.index("--out") + 2 :]]
    assert layoutja([*resume, "--resume"]) == 0
    err = capfd.readouterr().err
    assert f"checkpoint step-0000005 is damaged ({five / 'model.safetensors'}: " in err
    assert f"{four / 'optimizer.bin'}: " in err and f"{three / 'trainer_state.json'}: empty" in err
    assert "resuming from step-0000002" in err
    again = {step: loss for step, loss in losses(whole).items() if step > 2}
    assert losses(cut) == pytest.approx(again, rel=1e-5)  # steps 3-5 again, the same
    assert (cut / "checkpoints" / "damaged-step-0000005" / "model.safetensors").exists()
    state = json.loads((cut / "checkpoints/step-0000004/trainer_state.json").read_text())
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= state["files"].keys()
    # Nothing intact: refused in one line that names the files.
    for checkpoint in (cut / "checkpoints").glob("step-*"):
        (checkpoint / "model.safetensors").write_bytes(b"")
    assert layoutja([*resume, "--resume"]) == 1
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("layoutja pretrain: error: no intact checkpoint to resume from in ")
    assert f"{five / 'model.safetensors'}: 0 bytes of the" in last


def test_more_steps_for_a_finished_run_re_stretch_the_decay_and_train_the_next_step(
    localized_dir, unidic_dir, tmp_path, capfd
):
    out = tmp_path / "run"
    args = run_args(localized_dir, unidic_dir, out, 4, data__data_workers=0,
                    checkpoint__save_every=1, checkpoint__keep_checkpoints=5,
                    checkpoint__log_every=1, schedule__warmup_steps=2)  # fmt: skip
    assert layoutja(args) == 0
    at = args.index("--schedule.max_steps") + 1
    capfd.readouterr()
    assert layoutja([*args[:at], "8", *args[at + 1 :], "--resume"]) == 0
    before = load_file(out / "checkpoints/step-0000004/model.safetensors")
    after = load_file(out / "checkpoints/step-0000005/model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before)
    rates = {m["step"]: m["learning_rate"] for m in map(json.loads, (out / "metrics.jsonl")
                                                          .read_text().splitlines())}  # fmt: skip
    assert rates[4] == pytest.approx(1e-3 * 1 / 2) and rates[5] == pytest.approx(1e-3 * 4 / 6)
    assert rates[8] == pytest.approx(1e-3 * 1 / 6)  # linear from the warmup's end to step 8
    assert (
        "the learning rate's linear decay is re-stretched to end at step 8"
        in capfd.readouterr().err
    )
