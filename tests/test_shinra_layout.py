"""SHINRA 2022 exactly as it is downloaded: categories named in English (html/Airport/,
annotation/Airport_dist.jsonl beside its viewing copy), records carrying ENE ids, the ENE
definitions in another directory. Fine-tuning, its dev F1 and prediction must give what the
same data laid out by ENE id gives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForTokenClassification, BertForMaskedLM

from layoutja.common import UserError
from layoutja.shinra.categories import Categories, read_definitions
from layoutja.shinra.classifier import TokenClassifier
from layoutja.shinra.data import load_pages
from layoutja.shinra.finetune import finetune
from layoutja.shinra.labels import Annotation

from .conftest import SHINRA, SHINRA_MISSING, make_shinra, recipe, tiny_bert

ENE, NAME = "1.6.5.3", "Airport"
DEFINITIONS = "Shinra2022_ENE_Definition_v9.0.0-with-Attributes_20220714.jsonl"


def write_definitions(root: Path, attributes: set[str], dropped: str) -> Path:
    """The ENE definitions as SHINRA 2022 ships them (ENE_id, name.ja/en, attributes with
    extraction_task; an ENE without attributes too), `dropped` not extracted."""
    path = root / DEFINITIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    airport = {"ENE_id": ENE, "name": {"ja": "空港", "en": NAME}, "attributes": [
        {"name": a, "extraction_task": a != dropped} for a in sorted(attributes)]}  # fmt: skip
    other = {"ENE_id": "1.6.5", "name": {"ja": "施設名", "en": "Facility_Other"}}
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in (airport, other)),
                    "utf-8")  # fmt: skip
    return path


def as_downloaded(by_id: Path, root: Path) -> Path:
    """A SHINRA directory laid out by ENE id (html/1.6.5.3/) re-laid as SHINRA 2022 is
    downloaded: html/Airport/, plain/Airport/, annotation/Airport_dist.jsonl and its viewing
    copy Airport_dist_for_view.jsonl."""
    shutil.copytree(by_id / "html" / ENE, root / "html" / NAME)
    if (by_id / "plain" / ENE).is_dir():
        shutil.copytree(by_id / "plain" / ENE, root / "plain" / NAME)
    (root / "annotation").mkdir(parents=True)
    for suffix in ("_dist.jsonl", "_dist_for_view.jsonl"):
        shutil.copy(
            by_id / "annotation" / f"{ENE}_dist.jsonl", root / "annotation" / (NAME + suffix)
        )
    return root


def oracle(monkeypatch) -> None:
    """Every token's best label is its gold label: the dev F1 measures the data's way from
    labels to records and their scoring, whatever the model learned."""

    def top_labels(self, batch: dict, k: int) -> torch.Tensor:
        return batch["labels"].clamp(min=0).unsqueeze(-1)

    monkeypatch.setattr(TokenClassifier, "top_labels", top_labels)


def both_layouts(by_id: Path, tmp: Path, bert: Path, monkeypatch, **settings) -> dict:
    """Localize and fine-tune (gold labels as predictions) the id-named directory and its
    downloaded layout with one definitions file; the two runs' last metrics and directories."""
    from layoutja.localize.pool import localize_corpus

    gold = (by_id / "annotation" / f"{ENE}_dist.jsonl").read_text("utf-8").splitlines()
    attributes = {json.loads(x)["attribute"] for x in gold}
    definitions = write_definitions(tmp / "attribute_extraction", attributes, dropped="開港年")
    oracle(monkeypatch)
    runs = {}
    for layout, data in [("id", by_id), ("downloaded", as_downloaded(by_id, tmp / "ene-20221116"))]:
        localized, out = tmp / f"localized-{layout}", tmp / f"ft-{layout}"
        localize_corpus(str(data / "html"), str(bert), localized, workers=2, progress=False)
        last = finetune(recipe("finetune-tiny", **settings), data, bert, localized, out,
                        definitions=definitions, progress=False)  # fmt: skip
        runs[layout] = {"last": last, "out": out, "data": data, "localized": localized,
                        "definitions": definitions}  # fmt: skip
    return runs


@pytest.fixture(scope="module")
def bert(unidic_dir, tmp_path_factory) -> Path:
    return tiny_bert(BertForMaskedLM, unidic_dir, tmp_path_factory.mktemp("bert"), hidden=32)


def test_the_downloaded_layout_fine_tunes_and_predicts_as_the_id_named_one(
    bert, tmp_path, monkeypatch
):
    by_id = make_shinra(tmp_path / "by-id", pages=12)
    runs = both_layouts(by_id, tmp_path, bert, monkeypatch, epochs=1)
    scores = {k: (r["last"]["dev_macro_f1"], r["last"]["dev_micro_f1"]) for k, r in runs.items()}
    assert scores["downloaded"] == scores["id"] and scores["id"][0] > 0.9, scores
    for run in runs.values():
        labels = AutoModelForTokenClassification.from_pretrained(run["out"]).config.label2id
        assert "B-所在地" in labels and "B-開港年" not in labels  # extraction_task false: dropped
        summary = json.loads((run["out"] / "data.json").read_text())
        # the viewing copy is not read: each of the 12 pages' 開港年 skipped once
        assert summary["annotations_skipped"] == {"attribute not extracted": 12}
    # predict writes the ENE id, not the directory's name
    run = runs["downloaded"]
    pred = tmp_path / "pred.jsonl"
    command = [sys.executable, "-m", "layoutja", "predict", "--model", str(run["out"]),
               "--data", str(run["data"]), "--definitions", str(run["definitions"]),
               "--localized", str(run["localized"]), "--out", str(pred),
               "--max-length", "128", "--margin", "32"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads(x) for x in pred.read_text("utf-8").splitlines()]
    assert records and {r["ENE"] for r in records} == {ENE}


@pytest.mark.skipif(not (SHINRA / "Airport_Mini_Answer.json").exists(), reason=SHINRA_MISSING)
def test_the_real_sample_as_downloaded_scores_the_dev_f1_of_the_id_named_layout(
    bert, tmp_path, monkeypatch
):
    by_id = tmp_path / "by-id"
    shutil.copytree(SHINRA / "Airport_HTML", by_id / "html" / ENE)
    shutil.copytree(SHINRA / "Airport_TEXT", by_id / "plain" / ENE)
    (by_id / "annotation").mkdir()
    shutil.copy(SHINRA / "Airport_Mini_Answer.json", by_id / "annotation" / f"{ENE}_dist.jsonl")
    # 3 dev pages of 7, and windows of the tiny recipe; gold labels as predictions
    runs = both_layouts(by_id, tmp_path, bert, monkeypatch, epochs=0, max_steps=1, dev_fraction=0.5)
    scores = {k: (r["last"]["dev_macro_f1"], r["last"]["dev_micro_f1"]) for k, r in runs.items()}
    assert scores["downloaded"] == scores["id"] and scores["id"][1] > 0.9, scores


def annotation(ene: str, file: str) -> Annotation:
    return Annotation("1", ene, "所在地", (0, 0), (0, 1), "x", file)


def test_a_category_is_its_ene_id_by_the_definitions_or_by_its_annotation_file(tmp_path):
    definitions = read_definitions(write_definitions(tmp_path, {"所在地"}, dropped=""))
    assert definitions.ids == {NAME: ENE, "Facility_Other": "1.6.5"}
    assert definitions.attributes == {ENE: {"所在地"}, "1.6.5": set()}
    html = tmp_path / "html"
    from_definitions = Categories(html, definitions, {})
    assert from_definitions.ene_id(NAME) == ENE and from_definitions.ene_id(ENE) == ENE
    annotated = {"Station": {"1.6.5.1"}}  # annotation/Station_dist.jsonl gives the id
    assert Categories(html, None, annotated).ene_id("Station") == "1.6.5.1"
    assert Categories(html, None, {}).ene_id("1.4.2") == "1.4.2"  # a directory named by its id
    with pytest.raises(UserError, match=r"html/Museum: cannot tell the ENE id of category "
                       r"'Museum'.*name\.en 'Museum'.*--definitions FILE"):  # fmt: skip
        from_definitions.ene_id("Museum")
    with pytest.raises(UserError, match="html/Museum: .*no ENE definitions were given"):
        Categories(html, None, {}).ene_id("Museum")
    with pytest.raises(UserError, match=r"name 'Airport' 1\.6\.5\.3, its annotations .*say 1\.9"):
        Categories(html, definitions, {NAME: {"1.9"}}).ene_id(NAME)
    with pytest.raises(UserError, match=r"Station_dist\.jsonl: records of several ENEs \(1, 2\)"):
        Categories(html, None, {"Station": {"1", "2"}}).ene_id("Station")


def test_a_category_that_cannot_be_placed_is_refused_naming_the_fix(tmp_path, unidic_dir):
    """Fine-tuning on English-named categories without definitions or annotations to place
    them stops with the directory and the fix, before anything trains."""
    from layoutja.localize.pool import localize_corpus

    by_id = make_shinra(tmp_path / "by-id", pages=2)
    data = as_downloaded(by_id, tmp_path / "data")
    for path in (data / "annotation").iterdir():
        path.unlink()
    localize_corpus(str(data / "html"), str(unidic_dir), tmp_path / "loc", progress=False)
    with pytest.raises(UserError, match="html/Airport: cannot tell the ENE id.*--definitions"):
        load_pages(data, tmp_path / "loc", overlaps="first")


def test_score_and_compare_find_the_pages_of_english_named_categories(tmp_path):
    """Records name the ENE id; the page is html/Airport/<id>.html."""
    from layoutja.shinra.compare import attribute_locations
    from layoutja.shinra.score import html_mismatches, read_jsonl

    data = as_downloaded(make_shinra(tmp_path / "by-id", pages=3), tmp_path / "data")
    gold = read_jsonl(data / "annotation" / f"{NAME}_dist.jsonl")
    assert gold and {g["ENE"] for g in gold} == {ENE}
    assert html_mismatches(gold, data / "html") == []
    where = attribute_locations(gold, data / "html")
    assert where == {
        (ENE, "所在地"): "infobox",
        (ENE, "開港年"): "infobox",
        (ENE, "IATA"): "infobox",
    }
    missing = [{**gold[0], "page_id": "404"}]
    assert html_mismatches(missing, data / "html")[0]["problem"] == "no such page"
