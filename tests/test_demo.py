"""`make demo`'s steps, at a reduced size, so that CI keeps the newcomer's first command working."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from layoutja.shinra.score import read_jsonl

from .conftest import DATA

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "shinra"


def test_the_shipped_corpus_is_consistent():
    pages = sorted((DEMO / "html").glob("*/*.html"))
    assert len(pages) >= 20
    gold = read_jsonl(DEMO / "annotation" / "1.6.5.3_dist.jsonl")
    assert {g["page_id"] for g in gold} == {p.stem for p in pages}
    for g in gold:  # every annotation cuts its text out of its page
        lines = (DEMO / "html" / g["ENE"] / f"{g['page_id']}.html").read_text().splitlines()
        start, end = g["html_offset"]["start"], g["html_offset"]["end"]
        assert start["line_id"] == end["line_id"]
        line = lines[start["line_id"]]
        assert line[start["offset"] : end["offset"]] == g["html_offset"]["text"]


def test_make_demo_runs_every_step(tmp_path):
    assert DATA.exists()
    out = tmp_path / "demo"
    result = subprocess.run(
        ["make", "--no-print-directory", "demo", f"OUT={out}", "STEPS=4", "EPOCHS=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    artefacts = ["tokenizer/vocab.txt", "localized/manifest.json", "page.png",
                 "layoutlm-init/config.json", "mvlm/model.safetensors", "shinra/model.safetensors",
                 "electra/generator/model.safetensors", "electra/discriminator/config.json",
                 "predictions.jsonl", "score.json", "loss.png", "shinra/best.json",
                 "shinra/last/model.safetensors", "shinra-text/model.safetensors",
                 "compare.md", "compare.json"]  # fmt: skip
    for artefact in artefacts:
        assert (out / artefact).exists(), artefact
    score = json.loads((out / "score.json").read_text())
    assert {"macro", "micro", "per_ene"} <= set(score)
    assert score["html_mismatches"] == []
    assert result.stdout.count("[MASK] 1:") == 2 and "demo artefacts in" in result.stdout
    # layoutja's own lines only: no transformers bars, no load reports of expected differences
    for noise in ("Loading weights", "Writing model shards", "LOAD REPORT"):
        assert noise not in result.stderr, noise
    # the layout-aware run and the text-only one, side by side on the dev pages
    comparison = json.loads((out / "compare.json").read_text())
    assert comparison["systems"] == ["layout", "text-only"]
    assert {r["where"] for r in comparison["attributes"]} == {
        "infobox", "table", "list", "running text"
    }  # fmt: skip
    dev = (out / "shinra" / "dev_pages.txt").read_text().split()
    assert dev == (out / "shinra-text" / "dev_pages.txt").read_text().split() and len(dev) == 6
    assert "**overall** (macro)" in (out / "compare.md").read_text().splitlines()[-1]
    assert (out / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Run again, the vocabulary is kept and every page is already localized.
    again = subprocess.run(
        ["make", "--no-print-directory", "vocab", "localize", f"OUT={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "exists: keeping it" in again.stdout and "24 already done" in again.stderr


def test_setup_takes_pip_arguments_for_torch_and_a_new_torch_reinstalls_it():
    """`make setup TORCH="torch==X --index-url URL"` (a CUDA build): pip gets the arguments, not
    one quoted requirement, and a TORCH other than the installed one reinstalls torch."""
    cuda = "torch==2.13.0 --index-url http://127.0.0.1:9/simple"
    plan = subprocess.run(["make", "-n", ".venv/.layoutja-installed", f"TORCH={cuda}"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f"pip install -q {cuda}\n" in plan
    assert "pip uninstall -q -y torch" in plan.split(f"pip install -q {cuda}")[0]
    assert "pip install -q -e" in plan  # the package again, constrained to the new torch
    # The torch the suite runs on (installed by `make test`'s setup) needs nothing.
    plan = subprocess.run(["make", "-n", ".venv/.layoutja-installed"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "pip" not in plan


def test_localize_args_reach_every_localize_of_the_makefile():
    """LOCALIZE_ARGS (e.g. --retry-failed after a run that exited 3) reach every localize."""
    targets = ["localize", "finetune", "predict", "shinra2022-localize"]
    plan = subprocess.run(["make", "-n", *targets, "LOCALIZE_ARGS=--retry-failed",
                           "SHINRA2022=s", "LEADERBOARD=l", "RUN=r"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    commands = [c for c in plan.replace("\\\n", " ").splitlines() if " localize " in c]
    assert len(commands) == 5 and all("--retry-failed" in c for c in commands), commands


def test_make_shinra2022_gives_the_leaderboards_definitions_to_every_step(tmp_path):
    """SHINRA 2022 as downloaded: the ENE definitions ship with the leaderboard input, and
    fine-tuning (English category names → ENE ids, extraction_task), prediction and compare
    read them; the viewing copies of the annotations are not gold."""
    leaderboard, data = tmp_path / "attribute_extraction", tmp_path / "ene-20221116"
    definitions = leaderboard / "Shinra2022_ENE_Definition_v9.0.0-with-Attributes_20220714.jsonl"
    (data / "annotation").mkdir(parents=True)
    leaderboard.mkdir()
    for path in (definitions, leaderboard / "shinra2022_AttributeExtraction_leaderboard_x.jsonl",
                 data / "annotation" / "Airport_dist.jsonl",
                 data / "annotation" / "Airport_dist_for_view.jsonl"):  # fmt: skip
        path.write_text("")
    plan = subprocess.run(["make", "-n", "shinra2022", f"SHINRA2022={data}",
                           f"LEADERBOARD={leaderboard}", "RUN=r"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    commands = plan.replace("\\\n", " ").splitlines()
    steps = [c for c in commands if " finetune " in c or " predict " in c]
    assert len(steps) == 5, steps  # 2 fine-tunings, the leaderboard (a loop), 2 for compare
    assert all(f"--definitions {definitions}" in c for c in steps), steps
    (compare,) = [c for c in commands if "layoutja compare " in c]
    assert "Airport_dist.jsonl" in compare and "_for_view" not in compare


def test_the_device_check_runs_end_to_end_at_toy_size_on_the_cpu():
    """`SMOKE=1 bench/device_check.sh`: every step of the GPU check, at toy sizes, so that the
    script a GPU session runs once cannot rot (it measures nothing here)."""
    result = subprocess.run(["bench/device_check.sh"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "SMOKE": "1"}, timeout=1500)  # fmt: skip
    out = result.stdout
    assert result.returncode == 0 and "== 0 step(s) failed" in out, out[-5000:]
    for run in ("fp16, compile false", "bf16, compile true"):
        assert f"{run}: 4 steps" in out, out
    assert "without layout" in out and "tokens/s" in out
    assert "padding share, 8 windows a micro-batch" in out
    assert "fine-tuning (10 epochs):" in out and "layoutja" in out
