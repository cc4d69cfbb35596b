"""Fine-tuning and prediction on a SHINRA-format data set built here (and window merging)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForTokenClassification, BertForMaskedLM

from layoutja.shinra.data import Page, merge_windows
from layoutja.shinra.finetune import finetune
from layoutja.shinra.rawpage import RawPage
from layoutja.shinra.records import decode
from layoutja.shinra.score import html_mismatches, read_jsonl, score

from .conftest import make_shinra, model_card, recipe, run_python, tiny_bert

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
    spans = np.array([[0, 4, 0, 7], [0, 7, 0, 10], [1, 4, 1, 7], [1, 4, 1, 7]], dtype=np.int32)
    page = Page("1", "1.6.5.3", "t", Path("x"), np.zeros(4, np.int32), np.zeros((4, 4), np.int16),
                spans)  # fmt: skip
    names = ["O", "B-所在地", "I-所在地", "B-IATA", "I-IATA"]
    records = decode(page, [1, 2, 4, 0], names, raw, "1.6.5.3", None)
    assert [(r["attribute"], r["html_offset"]["text"]) for r in records] == [
        ("所在地", "東京都大田区"),
        ("IATA", "HND"),  # an I- without its B- still starts a value
    ]
    only = decode(page, [1, 2, 4, 0], names, raw, "1.6.5.3", {"IATA": "ＩＡＴＡ"})
    assert [r["attribute"] for r in only] == ["ＩＡＴＡ"]  # the ENE's spelling of the label


@pytest.fixture(scope="module")
def trained(shinra, bert, localized, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny recipe fine-tuned on the set, every epoch's checkpoint kept: (run, last metrics)."""
    out = tmp_path_factory.mktemp("ft")
    config = recipe("finetune-tiny", keep_checkpoints=30)
    return out, finetune(config, shinra, bert, localized, out, progress=False)


def test_finetune_learns_the_attributes_and_predicts_exact_offsets(
    shinra, localized, trained, tmp_path
):
    out, last = trained
    assert last["dev_macro_f1"] >= 0.9, last
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if "dev_macro_f1" in m] == list(range(1, 31))
    summary = json.loads((out / "data.json").read_text())
    assert summary["annotations_skipped"] == {
        "text does not match the offsets": 1,
        "page not localized": 1,
    }
    assert (summary["train_pages"], summary["dev_pages"]) == (18, 6)  # int(24 × 0.25) on dev
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
    # --target: only the pages listed (here, the dev pages)
    dev = (out / "dev_pages.txt").read_text().split()
    only = tmp_path / "dev.jsonl"
    command[command.index(str(predictions))] = str(only)
    result = subprocess.run([*command, "--target", str(out / "dev_pages.txt")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {r["page_id"] for r in read_jsonl(only)} == set(dev)
    assert f"for {len(dev)} pages" in result.stderr


def test_the_export_is_the_best_model_on_dev_and_the_last_is_beside_it(trained):
    out, _ = trained
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [m for m in metrics if "dev_macro_f1" in m]
    best = max(evaluations, key=lambda m: m["dev_macro_f1"])  # the first of equal ones
    saved = json.loads((out / "best.json").read_text())
    assert (saved["step"], saved["dev_macro_f1"]) == (best["step"], best["dev_macro_f1"])
    # Every evaluation is checkpointed with the model of its step (hf/last/).
    at_best = out / "checkpoints" / f"step-{best['step']:07d}" / "hf" / "last"
    final = out / "checkpoints" / f"step-{evaluations[-1]['step']:07d}" / "hf" / "last"
    weights = lambda d: load_file(d / "model.safetensors")  # noqa: E731
    exported, kept_last = weights(out), weights(out / "last")
    assert all(torch.equal(exported[k], v) for k, v in weights(at_best).items())
    assert all(torch.equal(kept_last[k], v) for k, v in weights(final).items())
    assert (out / "vocab.txt").exists() and (out / "last" / "vocab.txt").exists()
    if best["step"] != evaluations[-1]["step"]:  # the models differ, so the test tells them apart
        assert any(not torch.equal(exported[k], v) for k, v in kept_last.items())


def test_the_exports_model_cards_give_the_dev_scores_and_their_code_runs(trained, bert, tmp_path):
    out, _ = trained
    best = json.loads((out / "best.json").read_text())
    evaluations = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    final = [m for m in evaluations if "dev_macro_f1" in m][-1]
    codes = []
    for directory, scores in [(out, best), (out / "last", final)]:
        meta, text, code = model_card(directory)
        assert meta["pipeline_tag"] == "token-classification"
        assert {"layoutja", "layoutlm", "token-classification"} <= set(meta["tags"])
        held_out = f"dev_macro_f1 {scores['dev_macro_f1']}, dev_micro_f1 {scores['dev_micro_f1']}"
        assert held_out in text
        assert "- training pages: 18" in text and "- held-out (dev) pages: 6" in text
        assert f"It started from `{bert}`" in text and "bbox" in code
        codes.append(code)
    assert f"held out: epoch {best['epoch']}, dev_macro_f1" in model_card(out)[1]
    printed = run_python(*codes, cwd=tmp_path).splitlines()
    names = AutoModelForTokenClassification.from_pretrained(out).config.label2id
    assert len(printed) == 2
    for line in printed:  # a label for each token of こんにちは, [CLS] and [SEP] included
        labels = ast.literal_eval(line)  # the snippet prints a list of label names
        assert len(labels) >= 3 and set(labels) <= set(names)


def test_text_only_baseline_runs_the_same_pipeline(shinra, bert, localized, tmp_path):
    config = recipe("finetune-tiny", epochs=2, text_only="true")
    last = finetune(config, shinra, bert, localized, tmp_path / "bl", progress=False)
    assert {"epoch", "dev_macro_f1", "dev_micro_f1", "loss", "tokens_per_s"} <= set(last)
    assert last["epoch"] == 2
    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "bl")
    assert type(model).__name__ == "BertForTokenClassification"


def test_the_post_processing_is_the_recipes_for_the_dev_f1_and_predicts_default(
    shinra, bert, localized, tmp_path, monkeypatch
):
    from layoutja.shinra import records
    from layoutja.shinra.predict import predict

    used = []  # (top k, gap) each decoded page is post-processed with
    bridge, allowed = records.bridge_gaps, records.allowed_labels
    monkeypatch.setattr(records, "allowed_labels",
                        lambda top, ok: used.append(top.shape[1]) or allowed(top, ok))  # fmt: skip
    monkeypatch.setattr(records, "bridge_gaps",
                        lambda *args: used.append(args[2]) or bridge(*args))  # fmt: skip
    out = tmp_path / "ft"
    finetune(recipe("finetune-tiny", epochs=1, bridge_gaps=2, top_k=2), shinra, bert, localized,
             out, progress=False)  # fmt: skip
    assert used and set(zip(used[::2], used[1::2])) == {(2, 2)}  # the dev evaluation
    settings = {"max_length": 128, "margin": 32}
    for given, expected in [((None, None), (2, 2)), ((1, 0), (1, 0))]:  # unless told otherwise
        used.clear()
        predict(out, shinra, localized, tmp_path / "pred.jsonl", top_k=given[0], bridge=given[1],
                **settings)  # fmt: skip
        assert used and set(zip(used[::2], used[1::2])) == {expected}
    used.clear()  # a model fine-tuned elsewhere: the published top 5 and gaps of 3
    plain = AutoModelForTokenClassification.from_pretrained(out)
    del plain.config.bridge_gaps, plain.config.label_top_k
    plain.save_pretrained(tmp_path / "plain")
    shutil.copy(out / "vocab.txt", tmp_path / "plain")
    shutil.copy(out / "tokenizer_config.json", tmp_path / "plain")
    predict(tmp_path / "plain", shinra, localized, tmp_path / "pred.jsonl", **settings)
    assert used and set(zip(used[::2], used[1::2])) == {(5, 3)}


def leaderboard_dir(shinra: Path, root: Path) -> Path:
    """The fixture's pages as a leaderboard input directory: the same html/, the ENE
    definitions (IATA spelled full width, 開港年 not extracted, a second ENE with 所在地 only) and
    SHINRA's plain text for every page but 2001 (whose plain file is another text)."""
    root.mkdir()
    (root / "html").symlink_to(shinra / "html")
    definitions = [
        {"ENE_id": "1.6.5.3", "attributes": [{"name": "所在地", "extraction_task": True},
                                             {"name": "ＩＡＴＡ", "extraction_task": True},
                                             {"name": "開港年", "extraction_task": False}]},
        {"ENE_id": "1.6.5.2", "attributes": [{"name": "所在地", "extraction_task": True}]},
    ]  # fmt: skip
    (root / "ENE_definition.jsonl").write_text(
        "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in definitions), "utf-8"
    )
    for page in (shinra / "html" / "1.6.5.3").glob("*.html"):
        plain = root / "plain" / "1.6.5.3" / f"{page.stem}.txt"
        plain.parent.mkdir(parents=True, exist_ok=True)
        text = re.sub(r"<[^>]*>", "", page.read_text("utf-8"))  # no comments or entities here
        plain.write_text("another text" if page.stem == "2001" else text, "utf-8")
    return root


def test_predict_takes_the_leaderboard_pages_their_category_and_its_attributes(
    shinra, localized, trained, tmp_path
):
    out, _ = trained
    data = leaderboard_dir(shinra, tmp_path / "leaderboard")
    systems = lambda a, b: {"sysA": a, "sysB": b}  # noqa: E731
    lines = [  # three pages; sysA and sysB disagree on the category of 2000
        {"page_id": "2000", "title": "T0", "ENEs": systems(
            [{"prob": 0.2, "ENE": "1.6.5.2"}, {"prob": 0.8, "ENE": "1.6.5.3"}],
            [{"prob": 0.6, "ENE": "1.6.5.2"}, {"prob": 0.4, "ENE": "1.6.5.3"}])},
        {"page_id": "2001", "title": "T1", "ENEs": systems([{"prob": 1, "ENE": "1.6.5.3"}],
                                                           [{"prob": 1, "ENE": "1.6.5.3"}])},
        {"page_id": "2002", "title": "T2", "ENEs": systems([{"prob": 1, "ENE": "9.9"}],
                                                           [{"prob": 1, "ENE": "9.9"}])},
        {"page_id": "4242", "title": "T", "ENEs": systems([{"prob": 1, "ENE": "1.6.5.3"}],
                                                          [{"prob": 1, "ENE": "1.6.5.3"}])},
    ]  # fmt: skip
    pages = tmp_path / "leaderboard.jsonl"
    pages.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), "utf-8")
    command = [sys.executable, "-m", "layoutja", "predict", "--model", str(out), "--data",
               str(data), "--localized", str(localized), "--pages", str(pages),
               "--max-length", "128", "--margin", "32"]  # fmt: skip
    two = subprocess.run([*command, "--out", str(tmp_path / "x.jsonl")], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert two.returncode != 0 and "sysA" in two.stderr and "sysB" in two.stderr
    found = {}
    for system in ("sysA", "sysB"):
        path = tmp_path / f"{system}.jsonl"
        run = subprocess.run([*command, "--system", system, "--out", str(path)],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "1 pages of" in run.stderr  # 4242 is not localized
        # 2002's category is not in the definitions: it gets no records, and a warning says so
        assert re.search(rf"1 pages of .*--system {system}.* not list.*: 9\.9 \(1\)",
                         run.stderr.replace("\n", " ")), run.stderr  # fmt: skip
        found[system] = read_jsonl(path)
        # (html_mismatches finds a page under html/<ENE>/: here, its directory's ENE)
        in_directory = [{**r, "ENE": "1.6.5.3"} for r in found[system]]
        assert html_mismatches(in_directory, data / "html") == []
    kinds = lambda records, page: {(r["ENE"], r["attribute"], r["title"])  # noqa: E731
                                   for r in records if r["page_id"] == page}  # fmt: skip
    # Its highest-prob category; only that category's extracted attributes, as it spells them.
    assert kinds(found["sysA"], "2000") == {
        ("1.6.5.3", "所在地", "T0"),
        ("1.6.5.3", "ＩＡＴＡ", "T0"),
    }
    assert kinds(found["sysB"], "2000") == {("1.6.5.2", "所在地", "T0")}
    assert kinds(found["sysA"], "2001") == {
        ("1.6.5.3", "所在地", "T1"),
        ("1.6.5.3", "ＩＡＴＡ", "T1"),
    }
    assert kinds(found["sysA"], "2002") == set()  # a category the definitions lack keeps none
    assert {r["page_id"] for r in found["sysA"]} == {"2000", "2001"}  # only the listed pages
    for r in found["sysA"]:  # text_offset where the plain text is SHINRA's, else none
        if r["page_id"] == "2001":
            assert "text_offset" not in r
            continue
        t = r["text_offset"]
        plain = (data / "plain" / "1.6.5.3" / "2000.txt").read_text("utf-8").splitlines()
        (l0, c0), (l1, c1) = [(t[k]["line_id"], t[k]["offset"]) for k in ("start", "end")]
        # a value may span lines (the published top-5 choice and gap fixing can join two cells)
        cut = "\n".join(plain[l0 : l1 + 1])
        assert cut[c0 : len(cut) - len(plain[l1]) + c1] == t["text"]
        if l0 == l1:  # no markup between: the html text is the plain one
            assert t["text"] == r["html_offset"]["text"]


def test_prediction_under_autocast_gives_the_labels_of_fp32(trained, shinra, localized):
    from transformers import AutoModelForTokenClassification

    from layoutja.pretrain.windows import SpecialIds
    from layoutja.shinra.classifier import TokenClassifier
    from layoutja.shinra.data import load_pages
    from layoutja.shinra.predict import predict_pages
    from layoutja.text.tokenizer import load_vocab

    out, _ = trained
    model = TokenClassifier(AutoModelForTokenClassification.from_pretrained(out), False)
    specials = SpecialIds.from_vocab(load_vocab(out / "vocab.txt"))
    pages = load_pages(shinra, localized, overlaps="first").pages[:6]
    labels = {}
    for precision in ("no", "bf16"):
        predicted = predict_pages(model, pages, specials, 128, 32, precision=precision)
        labels[precision] = np.concatenate([page_labels for _, page_labels in predicted])
    agree = (labels["no"] == labels["bf16"]).mean()
    assert agree > 0.99 and (labels["bf16"] > 0).any()


def test_a_text_only_electra_discriminator_fine_tunes_text_only_and_the_last_line_names_the_export(
    shinra, bert, localized, tmp_path, capfd
):
    import yaml
    from transformers import ElectraConfig, ElectraForPreTraining

    from layoutja.cli.main import main
    from layoutja.common import copy_tokenizer
    from layoutja.text.tokenizer import load_vocab

    size = len(load_vocab(bert / "vocab.txt"))
    config = ElectraConfig(vocab_size=size, embedding_size=32, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=128)  # fmt: skip
    discriminator = tmp_path / "discriminator"
    ElectraForPreTraining(config).save_pretrained(discriminator)
    copy_tokenizer(bert, discriminator)
    out = tmp_path / "ft"
    capfd.readouterr()
    code = main(["finetune", "--config", str(TRAIN / "finetune-tiny.yaml"), "--data", str(shinra),
                 "--model", str(discriminator), "--localized", str(localized), "--out", str(out),
                 "--schedule.epochs", "2", "--quiet"])  # fmt: skip
    err = capfd.readouterr().err
    assert code == 0, err
    # No finetune.text_only needed: an ELECTRA discriminator has no boxes to take.
    assert "a text-only ELECTRA discriminator: fine-tuned without boxes" in err
    assert yaml.safe_load((out / "recipe.yaml").read_text())["finetune"]["text_only"] is True
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert type(model).__name__ == "ElectraForTokenClassification"
    # The last line says which epoch the export in OUT is, and where the last epoch's is.
    best = json.loads((out / "best.json").read_text())
    assert (f"the model in {out} is epoch {best['epoch']}'s, the best on dev (macro F1 "
            f"{best['dev_macro_f1']}") in err  # fmt: skip
    assert f"the last epoch's is in {out / 'last'}" in err


def test_a_run_refused_at_its_start_leaves_no_output_directory(
    shinra, bert, localized, tmp_path, capfd
):
    from layoutja.cli.main import main

    common = ["finetune", "--config", str(TRAIN / "finetune-tiny.yaml"), "--data", str(shinra),
              "--model", str(bert), "--localized", str(localized), "--quiet",
              "--schedule.global_batch_size", "100000",
              "--schedule.per_device_batch_size", "100000"]  # fmt: skip
    out = tmp_path / "new" / "run"
    capfd.readouterr()
    assert main([*common, "--out", str(out)]) == 1
    err = capfd.readouterr().err
    assert "fewer than one global batch" in err and f"{out}: removed" in err
    assert not out.exists()
    # An empty directory made beforehand stays (emptied): it may have been set up for the run.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*common, "--out", str(empty)]) == 1
    assert f"{empty}: emptied" in capfd.readouterr().err
    assert empty.is_dir() and not any(empty.iterdir())
    # A directory that held something before is left as it is.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main([*common, "--out", str(mine)]) == 1
    assert "removed" not in capfd.readouterr().err and (mine / "notes.txt").exists()
    # Pretraining as well: an --init that does not exist is found after OUT was made.
    out = tmp_path / "pretrain"
    assert (
        main(
            [
                "pretrain",
                "--config",
                str(TRAIN / "mvlm-tiny.yaml"),
                "--data",
                str(localized),
                "--init",
                str(tmp_path / "no-model"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 1
    )
    assert "no such model directory" in capfd.readouterr().err and not out.exists()
