"""Data-parallel training as properties, with several processes (`torchrun`, gloo, CPU): the same
global batches and losses on 1, 2 and 3 processes for every task, elastic resume, preemption,
several nodes, evaluation that cannot kill a job, fp16 overflow with a fused optimizer, seeds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from transformers import BertForMaskedLM

from layoutja.cli.main import main as layoutja
from layoutja.common import EXIT_PREEMPTED
from layoutja.pretrain.task import PretrainTask
from layoutja.training.config import load_config
from layoutja.training.step import optimizer_step
from layoutja.training.trainer import Trainer

from .conftest import TRAIN, tiny_bert
from .slurm_cluster import free_port
from .test_finetune import bert, localized, shinra  # noqa: F401 - fixtures

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
NO_DROPOUT = ["--model.hidden_dropout_prob", "0", "--model.attention_probs_dropout_prob", "0"]


def torchrun(nproc: int, args: list, *, cwd: Path | None = None, nodes: tuple[int, int] = (1, 0),
             port: int | None = None, wait: bool = True):  # fmt: skip
    """`torchrun -m layoutja ARGS` with `nproc` processes (as node `nodes[1]` of `nodes[0]`):
    its CompletedProcess, or with `wait=False` its Popen."""
    launch = [TORCHRUN, "--nproc_per_node", str(nproc), "--nnodes", str(nodes[0]),
              "--node_rank", str(nodes[1]), "--master_addr", "127.0.0.1", "--master_port",
              str(port or free_port()), "-m", "layoutja", *map(str, args)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(launch, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    return subprocess.run(launch, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def in_process(args: list) -> None:
    assert layoutja([str(a) for a in args]) == 0


def losses(out: Path, keys: tuple = ("loss",)) -> dict[int, tuple]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: tuple(m[k] for k in keys) for m in lines if keys[0] in m}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[s] == pytest.approx(b[s], rel=2e-4) for s in a)


def mvlm_args(localized_dir, unidic_dir, out, steps, per_device, workers) -> list:
    return ["pretrain", "--config", TRAIN / "mvlm-tiny.yaml", "--data", localized_dir,
            "--tokenizer", unidic_dir, "--out", out, "--schedule.max_steps", steps,
            "--schedule.global_batch_size", 6, "--schedule.per_device_batch_size", per_device,
            "--schedule.warmup_steps", 2, "--data.data_workers", workers,
            "--checkpoint.log_every", 1, "--checkpoint.save_every", 4,
            "--checkpoint.keep_checkpoints", 10, *NO_DROPOUT, "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def one_process(localized_dir, unidic_dir, tmp_path_factory) -> dict:
    """MVLM on one process, 8 steps of a global batch of 6: the reference."""
    out = tmp_path_factory.mktemp("one")
    in_process(mvlm_args(localized_dir, unidic_dir, out, 8, 6, 0))
    return losses(out)


def test_mvlm_same_losses_on_2_and_3_processes_and_elastic_resume(
    one_process, localized_dir, unidic_dir, tmp_path
):
    two = tmp_path / "two"  # 2 processes × 1 window × 3 micro-batches, 2 workers each
    result = torchrun(2, mvlm_args(localized_dir, unidic_dir, two, 8, 1, 2))
    assert result.returncode == 0, result.stderr[-3000:]
    assert same(losses(two), one_process)
    # Elastic: the 2-process checkpoint of step 4 goes on on 3 processes, and on 1.
    for name, nproc, per_device, workers in [("three", 3, 2, 1), ("back-to-one", 1, 3, 0)]:
        out = tmp_path / name
        shutil.copytree(two / "checkpoints" / "step-0000004", out / "checkpoints" / "step-0000004")
        args = [*mvlm_args(localized_dir, unidic_dir, out, 8, per_device, workers), "--resume"]
        if nproc == 1:
            in_process(args)
        else:
            result = torchrun(nproc, args)
            assert result.returncode == 0, result.stderr[-3000:]
        assert same(losses(out), {s: v for s, v in one_process.items() if s > 4}), name


def test_electra_same_losses_on_3_processes(localized_dir, unidic_dir, tmp_path):
    def args(out, per_device):
        return ["pretrain", "--config", TRAIN / "electra-tiny.yaml", "--data", localized_dir,
                "--tokenizer", unidic_dir, "--out", out, "--schedule.max_steps", 4,
                "--schedule.global_batch_size", 6, "--schedule.per_device_batch_size", per_device,
                "--data.data_workers", 0, "--checkpoint.log_every", 1, *NO_DROPOUT,
                "--quiet"]  # fmt: skip

    keys = ("loss", "generator_loss", "discriminator_loss")
    in_process(args(tmp_path / "one", 6))
    result = torchrun(3, args(tmp_path / "three", 1))  # 2 micro-batches each
    assert result.returncode == 0, result.stderr[-3000:]
    assert same(losses(tmp_path / "three", keys), losses(tmp_path / "one", keys))


def test_finetune_on_2_processes_matches_one_in_losses_and_dev_f1(
    shinra,  # noqa: F811
    localized,  # noqa: F811
    unidic_dir,
    tmp_path,
):
    """A LayoutLM token classifier (its pooler unused) under DDP, the dev F1 spread over ranks."""
    model = tiny_bert(BertForMaskedLM, unidic_dir, tmp_path / "bert", hidden=64,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip

    def args(out, per_device):
        return ["finetune", "--config", TRAIN / "finetune-tiny.yaml", "--data", shinra,
                "--model", model, "--localized", localized, "--out", out,
                "--schedule.epochs", 2, "--schedule.per_device_batch_size", per_device,
                "--checkpoint.log_every", 1, "--quiet"]  # fmt: skip

    in_process(args(tmp_path / "one", 4))
    result = torchrun(2, args(tmp_path / "two", 1))
    assert result.returncode == 0, result.stderr[-3000:]
    assert same(losses(tmp_path / "two"), losses(tmp_path / "one"))
    f1 = ("dev_macro_f1", "epoch")
    assert losses(tmp_path / "two", f1) == losses(tmp_path / "one", f1)


def worker_pids(parent: int) -> list[int]:
    """The processes started by `parent` (torchrun's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return sorted(found)


def test_a_signal_to_any_rank_checkpoints_and_resume_continues_exactly(
    localized_dir, unidic_dir, tmp_path
):
    reference, out = tmp_path / "reference", tmp_path / "run"
    args = mvlm_args(localized_dir, unidic_dir, out, 24, 3, 1)
    args[args.index("--checkpoint.save_every") + 1] = 1000  # the only checkpoint: the signal's
    at = args.index("--out") + 1
    in_process([*args[:at], reference, *args[at + 1 :]])
    job = torchrun(2, args, wait=False)
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").exists() or len(losses(out)) < 3:
        assert job.poll() is None and time.time() < deadline, job.communicate()[1][-3000:]
        time.sleep(0.2)
    workers = worker_pids(job.pid)
    assert len(workers) == 2
    # One rank only, with its DataLoader worker: SLURM and torchrun signal process groups.
    os.killpg(workers[-1], signal.SIGUSR1)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode != 0 and f"exitcode  : {EXIT_PREEMPTED}" in stderr, stderr[-3000:]
    assert "stopped by a signal at step" in stderr
    saved = sorted((out / "checkpoints").glob("step-*"))
    assert len(saved) == 1 and 3 <= int(saved[0].name[5:]) < 24
    result = torchrun(2, [*args, "--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert same(losses(out), losses(reference))


def test_two_nodes_train_as_one_job_and_need_a_shared_output(
    one_process, localized_dir, unidic_dir, tmp_path
):
    port = free_port()
    out = tmp_path / "shared"
    nodes = [torchrun(1, mvlm_args(localized_dir, unidic_dir, out, 8, 3, 0), nodes=(2, i),
                      port=port, wait=False) for i in range(2)]  # fmt: skip
    for node in nodes:
        _, stderr = node.communicate(timeout=600)
        assert node.returncode == 0, stderr[-3000:]
    assert same(losses(out), one_process)
    # Each "node" sees its own OUT (a relative path from another directory): a clear error.
    port = free_port()
    homes = [tmp_path / "node0", tmp_path / "node1"]
    nodes = []
    for i, home in enumerate(homes):
        home.mkdir()
        args = mvlm_args(localized_dir, unidic_dir, "run", 8, 3, 0)
        nodes.append(torchrun(1, args, nodes=(2, i), port=port, cwd=home, wait=False))
    for node in nodes:
        _, stderr = node.communicate(timeout=600)
        assert node.returncode != 0
        assert "rank 1 on" in stderr and "OUT must be on a filesystem that every node shares" in (
            stderr
        ), stderr[-3000:]


def test_an_evaluation_longer_than_the_timeout_is_spread_over_the_ranks(tmp_path):
    """Each rank evaluates its share: a 5 s evaluation on every rank passes a 3 s process-group
    timeout; the same evaluation on rank 0 alone (others waiting) fails within it."""
    toy = str(Path(__file__).with_name("toy_job.py"))
    base = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port()), toy]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    every = subprocess.run([*base, tmp_path / "every", "--eval-seconds", "5", "--slow-ranks",
                            "0,1", "--timeout-minutes", "0.05"], capture_output=True, text=True,
                           env=env, timeout=300)  # fmt: skip
    assert every.returncode == 0, every.stderr[-3000:]
    first, second = (json.loads((tmp_path / "every" / f"fetched-{r}.json").read_text())
                     for r in (0, 1))  # fmt: skip
    assert first[1] <= second[0]  # the main process fetched (downloaded) first
    base[4] = str(free_port())
    alone = subprocess.run([*base, tmp_path / "alone", "--eval-seconds", "8", "--slow-ranks",
                            "0", "--timeout-minutes", "0.05"], capture_output=True, text=True,
                           env=env, timeout=300)  # fmt: skip
    assert alone.returncode != 0 and "Timed out" in alone.stderr


def test_fp16_overflow_with_a_fused_optimizer_is_counted_and_holds_the_schedule(tmp_path):
    accelerator = Accelerator(cpu=True)
    # What fp16 on a GPU does, on the CPU: a loss scaler in front of a fused AdamW.
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step + 1)
    model, optimizer = accelerator.prepare(model, optimizer)

    class Loss(torch.nn.Module):
        def __init__(self, scale: float):
            super().__init__()
            self.model, self.scale = model, scale

        def forward(self, x, denominators):
            return {"loss": self.model(x).sum() * self.scale / denominators["rows"]}

    before = model.weight.detach().clone()
    batch = [{"x": torch.ones(2, 4)}]
    counts = lambda b: {"rows": len(b["x"])}  # noqa: E731
    _, skipped, _ = optimizer_step(accelerator, Loss(1e36), optimizer, scheduler, batch, counts,
                                   0.0, tmp_path, 1)  # fmt: skip
    assert skipped and scheduler.last_epoch == 0 and torch.equal(model.weight, before)
    _, skipped, _ = optimizer_step(accelerator, Loss(1.0), optimizer, scheduler, batch, counts,
                                   0.0, tmp_path, 2)  # fmt: skip
    assert not skipped and scheduler.last_epoch == 1 and not torch.equal(model.weight, before)


def test_model_initialization_is_seeded_from_the_recipe(localized_dir, unidic_dir, tmp_path):
    def weights(seed: int, name: str) -> dict:
        recipe = load_config(TRAIN / "mvlm-tiny.yaml", {"schedule.seed": str(seed)})
        trainer = Trainer(recipe, tmp_path / name, progress=False)
        task = PretrainTask(recipe, trainer, localized_dir, tmp_path / name,
                            tokenizer=str(unidic_dir))  # fmt: skip
        return task.model.state_dict()

    a, b, c = weights(1, "a"), weights(1, "b"), weights(2, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
