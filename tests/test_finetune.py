"""Fine-tuning and prediction on a SHINRA-format data set built here (and window merging)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForTokenClassification, BertForMaskedLM

from layoutja.shinra.data import Page, decode, merge_windows
from layoutja.shinra.finetune import finetune
from layoutja.shinra.rawpage import RawPage
from layoutja.shinra.score import html_mismatches, read_jsonl, score

from .conftest import make_shinra, recipe, tiny_bert

TRAIN = Path(__file__).resolve().parents[1] / "train"


@pytest.fixture(scope="module")
def shinra(tmp_path_factory) -> Path:
    root = make_shinra(tmp_path_factory.mktemp("shinra"), pages=24)
    offset = {"start": {"line_id": 5, "offset": 30}, "end": {"line_id": 5, "offset": 33}}
    bad = [  # text that is not at its offsets, and a page missing from html/
        {"page_id": "2000", "ENE": "1.6.5.3", "attribute": "所在地",
         "html_offset": {**offset, "text": "大阪府"}},
        {"page_id": "9999", "ENE": "1.6.5.3", "attribute": "所在地",
         "html_offset": {**offset, "text": "大阪府"}},
    ]  # fmt: skip
    with open(root / "annotation" / "1.6.5.3_dist.jsonl", "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in bad)
    return root


@pytest.fixture(scope="module")
def bert(unidic_dir, tmp_path_factory) -> Path:
    return tiny_bert(BertForMaskedLM, unidic_dir, tmp_path_factory.mktemp("bert"), hidden=64)


@pytest.fixture(scope="module")
def localized(shinra, bert, tmp_path_factory) -> Path:
    """The pages localized beforehand, as `layoutja localize` does before fine-tuning."""
    from layoutja.localize.pool import localize_corpus

    out = tmp_path_factory.mktemp("localized")
    localize_corpus(str(shinra / "html"), str(bert), out, workers=2, progress=False)
    return out


def test_merge_windows_keeps_each_token_once_away_from_inner_edges():
    spans = [(0, 510), (382, 892), (764, 1000)]
    keep = merge_windows(1000, spans, 128)
    assert keep == [(0, 446), (446, 828), (828, 1000)]
    assert merge_windows(10, [(0, 10)], 128) == [(0, 10)]


def test_decode_b_i_runs_to_exact_records():
    raw = RawPage("<td>東京都大田区</td>\n<td>HND</td>")
    page = Page("1", "1.6.5.3", "t", Path("x"), [0] * 4, [[0] * 4] * 4,
                [[0, 4, 0, 7], [0, 7, 0, 10], [1, 4, 1, 7], [1, 4, 1, 7]])  # fmt: skip
    names = ["O", "B-所在地", "I-所在地", "B-IATA", "I-IATA"]
    records = decode(page, [1, 2, 4, 0], names, raw, "1.6.5.3", None)
    assert [(r["attribute"], r["html_offset"]["text"]) for r in records] == [
        ("所在地", "東京都大田区"),
        ("IATA", "HND"),  # an I- without its B- still starts a value
    ]
    assert decode(page, [1, 2, 4, 0], names, raw, "1.6.5.3", {"IATA"})[0]["attribute"] == "IATA"


def test_finetune_learns_the_attributes_and_predicts_exact_offsets(
    shinra, bert, localized, tmp_path
):
    out = tmp_path / "ft"
    last = finetune(recipe("finetune-tiny"), shinra, bert, localized, out, progress=False)
    assert last["dev_macro_f1"] >= 0.9, last
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if "dev_macro_f1" in m] == list(range(1, 31))
    assert json.loads((out / "data.json").read_text())["annotations_skipped"] == {
        "text does not match the offsets": 1,
        "page not localized": 1,
    }
    reported = [json.loads(x) for x in (out / "skipped_annotations.jsonl").read_text().splitlines()]
    assert sorted(r["page_id"] for r in reported) == ["2000", "9999"]
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.model_type == "layoutlm" and "B-所在地" in model.config.label2id
    predictions = tmp_path / "pred.jsonl"
    command = [sys.executable, "-m", "layoutja", "predict", "--model", str(out), "--data",
               str(shinra), "--out", str(predictions), "--localized", str(localized),
               "--max-length", "128", "--margin", "32"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    pred = read_jsonl(predictions)
    assert html_mismatches(pred, shinra / "html") == []  # text is exactly the raw HTML
    gold = [g for g in read_jsonl(shinra / "annotation" / "1.6.5.3_dist.jsonl")
            if g["html_offset"]["text"] != "大阪府"]  # fmt: skip
    assert score(gold, pred)["html_offset"]["micro"]["f1"] >= 0.9


def test_text_only_baseline_runs_the_same_pipeline(shinra, bert, localized, tmp_path):
    config = recipe("finetune-tiny", epochs=2, text_only="true")
    last = finetune(config, shinra, bert, localized, tmp_path / "bl", progress=False)
    assert {"epoch", "dev_macro_f1", "dev_micro_f1", "loss", "tokens_per_s"} <= set(last)
    assert last["epoch"] == 2
    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "bl")
    assert type(model).__name__ == "BertForTokenClassification"
