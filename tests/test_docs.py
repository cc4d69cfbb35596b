"""The documentation against the files and code it describes: train/README.md's table of recipes,
the flags and Python names the docs mention, the README's Parquet snippet, and the variable that
points the tests at the real SHINRA sample."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from layoutja.cli.main import build_parser
from layoutja.localize.store import SCHEMA, record_batch
from layoutja.training.config import SECTIONS, Recipe, load_config, valid_keys

from .conftest import SHINRA, SHINRA_MISSING, SHINRA_VARIABLE, TRAIN, run_python, shinra_sample

ROOT = TRAIN.parent
DOCS = ["README.md", "train/README.md", "localize/README.md", "docs/benchmarks.md"]
RECIPES = [f"train/{path.name}" for path in sorted(TRAIN.glob("*.yaml"))]
LAUNCH = "accelerate-8gpu.yaml"  # a launch configuration, not a recipe


def text(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


# --- train/README.md's table ---------------------------------------------------------------------


def recipe_rows() -> dict[str, str]:
    """train/README.md's table: the file each row names → what the row says of it."""
    rows = re.findall(r"^\| `([^`]+)` \| (.+) \|$", text("train/README.md"), re.M)
    return dict(rows)


NUMBER = r"(\d[\d,]*(?:\.\d+)?(?:e-?\d+)?k?)"
# What a row may state of its recipe, and the setting that says it.
STATED = {
    rf"{NUMBER} steps": "schedule.max_steps",
    rf"{NUMBER} epochs": "schedule.epochs",
    rf"\bbatch {NUMBER}": "schedule.global_batch_size",
    rf"\blength {NUMBER}": "data.max_length",
    rf"\blr {NUMBER}": "optimizer.learning_rate",
    rf"\bwarmup {NUMBER}": "schedule.warmup_steps",
    rf"generator 1/{NUMBER} wide": "electra.generator_factor",
    r"of overlapping annotations the (\w+) kept": "finetune.overlaps",
    rf"gaps of up to {NUMBER} `O` bridged": "finetune.bridge_gaps",
    rf"the first of the top {NUMBER} labels": "finetune.top_k",
}
PRECISION = r"\b(fp16|bf16)\b"  # stated where the recipe has one, else it runs in fp32
STATED[PRECISION] = "schedule.mixed_precision"
OBJECTIVE_WORDS = {"mvlm": "MVLM", "electra": "ELECTRA", "token-classification": "fine-tun"}


def number(value: str) -> float:
    """A number as a row writes it: 766k, 1,000, 5e-5."""
    value = value.replace(",", "")
    return float(value[:-1]) * 1000 if value.endswith("k") else float(value)


def setting(recipe: Recipe, key: str) -> object:
    section, name = key.split(".")
    return getattr(getattr(recipe, section), name)


def test_every_file_in_train_has_a_row_and_every_row_a_file():
    files = {path.name for path in TRAIN.iterdir() if path.name != "README.md"}
    assert set(recipe_rows()) == files


def test_the_launch_configurations_row_states_what_it_holds():
    row = recipe_rows()[LAUNCH]
    launch = yaml.safe_load((TRAIN / LAUNCH).read_text(encoding="utf-8"))
    stated = re.fullmatch(r"`accelerate` launch configuration: one machine, (\d+) GPUs, (\w+)", row)
    assert stated, row
    assert (launch["num_machines"], launch["num_processes"], launch["mixed_precision"]) == (
        1, int(stated[1]), stated[2]
    )  # fmt: skip


@pytest.mark.parametrize("name", [n for n in recipe_rows() if n.endswith(".yaml") and n != LAUNCH])
def test_a_recipes_row_states_what_its_file_holds(name):
    """Every number and setting the row states is the file's: steps, epochs, batch, length, lr,
    warmup, generator width, overlaps, gap bridging, precision (fp16 stated iff the recipe uses
    it), objective, text-only or layout-aware; any other figure is in the file's own comments."""
    row, path = recipe_rows()[name], TRAIN / name
    recipe = load_config(path)
    rest = row
    for pattern, key in STATED.items():
        for value in re.findall(pattern, row):
            actual = setting(recipe, key)
            assert (number(value) if isinstance(actual, (int, float)) else value) == actual, (
                key, value, actual
            )  # fmt: skip
        rest = re.sub(pattern, " ", rest)
    if not re.search(PRECISION, row):
        assert recipe.schedule.mixed_precision == "no", "the row does not say its precision"
    words = {o for o, word in OBJECTIVE_WORDS.items() if word in row}
    assert words == {recipe.objective}, f"the row names the objectives {words}"
    text_only = (recipe.objective == "electra" and not recipe.electra.layout) or (
        recipe.objective == "token-classification" and recipe.finetune.text_only
    )
    says = "layout-aware" not in row and "text-only" in row
    assert says == text_only, "the row says text-only" if says else "the row omits text-only"
    if "AdamW" in row:
        assert recipe.optimizer.weight_decay > 0
    rest = re.sub(r"`--[\w.]+ \w+`", " ", rest)  # flags: test_every_recipe_flag_is_a_setting
    comments = path.read_text(encoding="utf-8")
    for figure in re.findall(r"[\w,/-]*\d[\w,/-]*", rest):
        assert figure.strip(",") in comments, f"{figure!r} is neither a setting nor in {name}"


# --- flags ---------------------------------------------------------------------------------------

FLAG = re.compile(r"(?<![\w-])(--[a-z][\w.-]*\w)(?:[ =]([\w.+-]*\w))?")
# Options of the other programs the docs show beside layoutja's.
OTHER_PROGRAMS = {
    "accelerate launch": {"--config_file"},
    "torchrun": {"--nnodes", "--node_rank", "--nproc_per_node", "--master_addr", "--master_port"},
    "sbatch": {"--nodes", "--requeue", "--signal", "--array"},
    "pip": {"--index-url"},
    "tensorboard": {"--logdir"},
    "chromium": {"--host-resolver-rules", "--hide-scrollbars", "--headless", "--window-size"},
}


def layoutja_options() -> set[str]:
    """Every option of every `layoutja` command."""
    options, parsers = set(), [build_parser()]
    while parsers:
        for action in parsers.pop()._actions:
            options.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                parsers += action.choices.values()
    return options


def recipe_flags(name: str) -> Iterator[tuple[str, str | None]]:
    """(flag, literal value or None) for every `--section.key` the file names."""
    sections = {*SECTIONS, "model"}
    for flag, value in FLAG.findall(text(name)):
        section, dot, _ = flag[2:].partition(".")
        if dot and section in sections and flag != "--section.key":
            yield flag, value or None


@pytest.mark.parametrize("name", [*DOCS, "Makefile", *RECIPES])
def test_every_recipe_flag_is_a_setting(name):
    """A `--section.key` flag in the docs is a setting, and the value shown beside it parses."""
    for flag, value in recipe_flags(name):
        key = flag[2:]
        if key.startswith("model."):
            load_config(None, {key: value or "1"})  # a LayoutLM or ELECTRA architecture setting
        else:
            assert key in valid_keys(), f"{name}: {flag} is not a recipe setting"
            if value:
                load_config(None, {key: value})


@pytest.mark.parametrize("name", [*DOCS[:3], *RECIPES])
def test_every_flag_shown_is_an_option(name):
    """Every `--flag` is an option of a layoutja command, a recipe setting, or an option of the
    launchers and tools shown beside them (train/electra-*.yaml said `--layout`)."""
    known = layoutja_options().union(*OTHER_PROGRAMS.values())
    settings = {flag for flag, _ in recipe_flags(name)} | {"--section.key"}
    unknown = {flag for flag, _ in FLAG.findall(text(name))} - known - settings
    assert not unknown, f"{name} shows options nothing has: {sorted(unknown)}"


# --- Python names --------------------------------------------------------------------------------


def resolve(dotted: str) -> object:
    """The object a dotted name names: the longest importable module, then its attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("name", DOCS)
def test_every_python_name_the_docs_mention_exists(name):
    """`layoutja.x.y` names and `from layoutja.x import y` lines import; `layoutja/...` paths
    exist; a backticked `section.key` is a recipe setting."""
    doc = text(name)
    dotted = set(re.findall(r"\blayoutja(?:\.[A-Za-z_]\w*)+", doc))
    for module, names in re.findall(r"from (layoutja[\w.]*) import ([\w, ]+)", doc):
        dotted.update(f"{module}.{n.strip()}" for n in names.split(","))
    for item in sorted(dotted):
        try:
            resolve(item)
        except (ImportError, AttributeError):
            pytest.fail(f"{name} names {item}, which does not exist")
    for path in re.findall(r"\blayoutja/[\w/.]*\w", doc):
        assert (ROOT / path).exists(), f"{name} names {path}, which does not exist"
    sections = "|".join(SECTIONS)
    for key in re.findall(rf"`((?:{sections})\.\w+)`", doc):
        assert key in valid_keys(), f"{name} names the setting {key}, which does not exist"


# --- the README's Parquet snippet ----------------------------------------------------------------


def page(page_id: str, tokens: list[str]) -> dict:
    """A localized page's record in the store's schema, boxes derived from the token index."""
    n = len(tokens)
    boxes = [[10 * i, 0, 10 * i + 9, 20] for i in range(n)]
    return {"page_id": page_id, "category": "Airport", "source": f"html/Airport/{page_id}.html",
            "encoding": "utf-8", "tokens": tokens, "input_ids": list(range(5, 5 + n)),
            "bbox": boxes, "px": boxes, "html_span": [[0, i, 0, i + 1] for i in range(n)],
            "dropped": 0, "viewport_width": 1280, "page_width": 1280.0, "page_height": 40.0,
            "body": [0.0, 0.0, 1280.0, 40.0]}  # fmt: skip


def test_the_readmes_parquet_snippet_reads_localized_parts(tmp_path):
    """The README's way to read the parts runs as shown, with what layoutja installs, on a
    localized directory: its parts in the store's schema, beside its manifest and failures."""
    blocks = re.findall(r"```python\n(.*?)```", text("README.md"), re.S)
    snippet = [b for b in blocks if "part-*.parquet" in b]
    assert len(snippet) == 1, "the README shows one Python snippet reading the parts"
    out = tmp_path / "localized"
    out.mkdir()
    parts = [[page("1001", ["東京", "国際", "空港", "は"]), page("1002", ["羽田"])],
             [page("1003", ["成田", "空港"])]]  # fmt: skip
    for i, pages in enumerate(parts):
        table = pa.Table.from_batches([record_batch(p) for p in pages], schema=SCHEMA)
        pq.write_table(table, out / f"part-00000-of-00001-{i:05d}.parquet")
    (out / "manifest.json").write_text("{}", encoding="utf-8")
    (out / "failures.jsonl").write_text("", encoding="utf-8")
    printed = run_python(snippet[0], cwd=tmp_path)
    first = parts[0][0]
    assert printed == f"3 {first['page_id']} {first['tokens'][:3]} {first['bbox'][:3]}\n"


# --- the real SHINRA sample's variable -----------------------------------------------------------


def test_the_sample_is_where_its_variable_points(monkeypatch, tmp_path):
    monkeypatch.setenv(SHINRA_VARIABLE, str(tmp_path))
    assert shinra_sample() == tmp_path
    monkeypatch.delenv(SHINRA_VARIABLE)
    assert shinra_sample() == ROOT.parent / "shared" / "shinra-sample"  # beside the clone


def run_sample_test(sample: Path) -> str:
    """The official figures' test in a fresh pytest, the variable set to `sample`; its output."""
    env = {**os.environ, SHINRA_VARIABLE: str(sample)}
    test = "tests/test_score.py::test_the_official_figures_on_the_sample"
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return result.stdout


def test_without_the_sample_its_tests_skip_naming_the_variable(tmp_path):
    printed = run_sample_test(tmp_path / "nowhere")
    assert "1 skipped" in printed, printed
    assert SHINRA_VARIABLE in printed and str(tmp_path / "nowhere") in printed


def test_the_variable_points_the_tests_at_the_sample(tmp_path):
    if not SHINRA.is_dir():
        pytest.skip(SHINRA_MISSING)
    (tmp_path / "sample").symlink_to(SHINRA)  # elsewhere, not copied
    printed = run_sample_test(tmp_path / "sample")
    assert "1 passed" in printed, printed
