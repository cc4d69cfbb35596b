"""The cluster scripts on a real SLURM (two nodes on this machine, see slurm_cluster.py):
localization as a job array, training on two nodes, and a job that is told to stop
(SIGUSR1), checkpoints, requeues itself and resumes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import SHINRA, TRAIN, make_corpus, tiny_bert
from .slurm_cluster import DONE, Cluster, free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtual environment's bin/
STEPS = 40


def pages(out: Path) -> dict[str, tuple]:
    """Each localized page's (page_id, input_ids, bbox), by source path."""
    table = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))
    return {r["source"]: (r["page_id"], r["input_ids"], r["bbox"]) for r in table.to_pylist()}


def logs(tmp_path: Path) -> str:
    """Every job log in tmp_path without traceback frames, its end, for failure messages."""
    out = []
    for path in sorted(tmp_path.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        kept = [x for x in lines if not re.match(r"(\[rank\d+\]: )?\s|frame #\d", x)]
        out.append(f"--- {path.name}\n" + "\n".join(kept)[-4000:])
    return "\n".join(out)


def test_localize_array_gives_the_pages_of_one_run(slurm: Cluster, unidic_dir, tmp_path):
    corpus = make_corpus(tmp_path / "shinra", pages=10)
    for page in sorted(SHINRA.glob("Airport_HTML/*.html"))[:2]:  # real pages when available
        shutil.copy(page, corpus / "html" / "Airport" / page.name)
    env = {"SRC": str(corpus), "TOKENIZER": str(unidic_dir), "OUT": str(tmp_path / "array"),
           "LAYOUTJA": str(BIN / "layoutja")}  # fmt: skip
    # The script asks for 16 CPUs and 32 GB a task: the test nodes have 2 CPUs and 8 GB.
    job = slurm.submit(["--array=0-2", "--cpus-per-task=1", "--mem=1G", "--time=10",
                        f"--output={tmp_path}/localize-%A_%a.log", "localize/slurm-array.sh"],
                       cwd=REPO, env_extra=env)  # fmt: skip
    one = subprocess.run([str(BIN / "layoutja"), "localize", str(corpus), "--tokenizer",
                          str(unidic_dir), "--out", str(tmp_path / "one"), "--config",
                          "localize/published.yaml", "--workers", "1", "--quiet"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    done = slurm.wait(job, timeout=600)
    assert done["states"] == {"0": "COMPLETED", "1": "COMPLETED", "2": "COMPLETED"}, logs(tmp_path)
    assert {p.name for p in (tmp_path / "array").glob("manifest-*.json")} == {
        f"manifest-0000{i}-of-00003.json" for i in range(3)
    }
    array, single = pages(tmp_path / "array"), pages(tmp_path / "one")
    given = len(list((corpus / "html").rglob("*.html")))  # 10, + 2 real pages where available
    assert len(single) == given and sorted(array) == sorted(single)
    # The tasks ran at once, and manifest.json counts every shard's pages, each finished.
    view = json.loads((tmp_path / "array" / "manifest.json").read_text())
    assert view["counts"]["pages"] == given and len(view["shards"]) == 3
    assert all(shard["finished"] for shard in view["shards"].values())
    for source, page in single.items():
        assert array[source] == page, source


def train_args(localized_dir: Path, init: Path) -> list[str]:
    """`layoutja pretrain` arguments for a short run that logs every step and saves no
    checkpoint of its own (nor evaluates, which saves one) before the end."""
    return ["pretrain", "--config", str(TRAIN / "mvlm-tiny.yaml"), "--data", str(localized_dir),
            "--init", str(init), "--schedule.max_steps", str(STEPS),
            "--schedule.per_device_batch_size", "2", "--checkpoint.log_every", "1",
            "--checkpoint.save_every", "1000", "--checkpoint.eval_every", "1000",
            "--quiet"]  # fmt: skip


def losses(out: Path) -> list[tuple[int, float]]:
    """(step, loss) of every line of OUT/metrics.jsonl that has a loss, in order."""
    path = out / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [(m["step"], m["loss"]) for m in rows if "loss" in m]


@pytest.fixture(scope="module")
def init_model(unidic_dir, tmp_path_factory) -> Path:
    from transformers import BertForPreTraining

    return tiny_bert(BertForPreTraining, unidic_dir, tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def reference(localized_dir, init_model, tmp_path_factory) -> dict[int, float]:
    """Loss by step of the run on one machine: `torchrun --nproc_per_node 2`, never stopped."""
    out = tmp_path_factory.mktemp("reference")
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "layoutja",
               *train_args(localized_dir, init_model), "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    by_step = dict(losses(out))
    assert sorted(by_step) == list(range(1, STEPS + 1))
    return by_step


def submit_training(slurm: Cluster, tmp_path: Path, args: list) -> str:
    """train/slurm-train.sh on both nodes, one process each, meeting on 127.0.0.1."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "PROCS_PER_NODE": "1",
           "VENV": str(BIN.parent)}  # fmt: skip
    # The script asks for 8 GPUs a node: the test nodes have none.
    options = ["--nodes=2", "--gpus-per-node=0", "--time=20", f"--output={tmp_path}/train-%j.log"]
    script = ["train/slurm-train.sh", *map(str, args)]
    return slurm.submit([*options, *script], cwd=REPO, env_extra=env)


def test_two_nodes_train_as_torchrun_on_one_machine(
    slurm: Cluster, localized_dir, init_model, reference, tmp_path
):
    out = tmp_path / "mvlm"
    job = submit_training(slurm, tmp_path, [*train_args(localized_dir, init_model), "--out", out])
    done = slurm.wait(job, timeout=900)
    assert done["states"] == {job: "COMPLETED"}, logs(tmp_path)
    assert done["restarts"] == 0 and done["records"][0]["NodeList"] == "n[1-2]"
    got = losses(out)
    assert [step for step, _ in got] == list(range(1, STEPS + 1))
    assert [loss for _, loss in got] == pytest.approx([reference[s] for s, _ in got], rel=1e-5)


def test_usr1_checkpoints_requeues_and_resumes_exactly(
    slurm: Cluster, localized_dir, init_model, reference, tmp_path
):
    out = tmp_path / "mvlm"
    job = submit_training(slurm, tmp_path, [*train_args(localized_dir, init_model), "--out", out])
    deadline = time.monotonic() + 600
    while len(losses(out)) < 3:  # a few steps in: SIGUSR1 to the batch shell, as SLURM sends it
        assert time.monotonic() < deadline, logs(tmp_path)
        assert slurm.jobs(job)[0]["JobState"] in ("PENDING", "RUNNING"), logs(tmp_path)
        time.sleep(0.2)
    slurm.signal_batch(job, "USR1")
    # The first run stops, then the job is requeued and waits (cred_expire, 10 s here) before it
    # runs again: what the first run left is looked at in between.
    while (record := slurm.jobs(job)[0])["Restarts"] == "0" and record["JobState"] not in DONE:
        assert time.monotonic() < deadline, logs(tmp_path)
        time.sleep(0.2)
    first = losses(out)
    names = [p.name for p in out.glob("checkpoints/step-*")]
    saved = sorted(int(name[5:]) for name in names if name[5:].isdigit())
    done = slurm.wait(job, timeout=900)
    log = logs(tmp_path)
    assert done["states"] == {job: "COMPLETED"}, log
    whole = "".join(p.read_text() for p in tmp_path.glob("train-*.log"))
    assert done["restarts"] >= 1 and "requeueing job" in whole, log
    # The signal's checkpoint (save_every is larger than the run): the only one, mid-run.
    why = f"checkpoints {saved}, the first run logged up to {first[-1:]}\n{log}"
    assert len(saved) == 1 and 3 <= saved[0] < STEPS and first[-1][0] >= saved[0], why
    # The requeued run resumed from it (metrics.jsonl is cut back to the checkpoint's step on
    # resume): every step logged, each loss the uninterrupted run's.
    got = losses(out)
    steps = [step for step, _ in got]
    assert sorted(set(steps)) == list(range(1, STEPS + 1)), steps
    assert [loss for _, loss in got] == pytest.approx([reference[s] for s in steps], rel=1e-5)
