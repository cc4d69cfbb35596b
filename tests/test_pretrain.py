"""MVLM pretraining: model initialization, windows, masking, the loss, training, resume, export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertForMaskedLM,
    BertForPreTraining,
    BertModel,
    LayoutLMForMaskedLM,
)

from layoutja.common import TOKENIZER_FILES, UserError
from layoutja.pretrain.from_bert import init_model, layoutlm_from_bert
from layoutja.pretrain.mvlm import MVLMModel
from layoutja.pretrain.order import window_spans
from layoutja.pretrain.task import data_tokenizer, pretrain
from layoutja.pretrain.windows import Masking, SpecialIds, mask_tokens
from layoutja.text.tokenizer import load_vocab
from layoutja.training.config import load_config
from layoutja.training.step import TrainingStopped

from .conftest import model_card, recipe, run_python, tiny_bert

TRAIN = Path(__file__).resolve().parents[1] / "train"
SPECIALS = SpecialIds(pad=0, cls=2, sep=3, mask=4)


@pytest.fixture(scope="module")
def bert_dir(unidic_dir, tmp_path_factory) -> Path:
    return tiny_bert(BertForPreTraining, unidic_dir, tmp_path_factory.mktemp("bert"))


@pytest.mark.parametrize("cls", [BertForPreTraining, BertForMaskedLM, BertModel])
def test_init_copies_every_bert_weight_and_only_2d_embeddings_are_new(cls, unidic_dir, tmp_path):
    bert = tiny_bert(cls, unidic_dir, tmp_path / "bert")
    original = load_file(bert / "model.safetensors")
    report = init_model(bert, tmp_path / "lm")
    model = LayoutLMForMaskedLM.from_pretrained(tmp_path / "lm")
    weights = model.state_dict()
    for name, tensor in original.items():
        if name.startswith("cls.seq_relationship"):
            continue  # next-sentence prediction has no place in LayoutLM
        mapped = name.replace("bert.", "layoutlm.", 1) if name.startswith("bert.") else name
        mapped = mapped if mapped.startswith(("layoutlm.", "cls.")) else f"layoutlm.{mapped}"
        assert torch.equal(weights[mapped], tensor), name
    new_2d = {f"layoutlm.embeddings.{a}_position_embeddings.weight" for a in "xyhw"}
    assert new_2d <= set(report.new)
    for name in new_2d:
        assert weights[name].shape == (1024, 32)
        assert weights[name].std().item() == pytest.approx(0.02, rel=0.1)  # initializer_range
    if cls is BertForPreTraining:  # everything else came from the checkpoint
        assert set(report.new) == new_2d
    assert all((tmp_path / "lm" / n).exists() for n in TOKENIZER_FILES)


def test_init_refuses_a_vocabulary_that_does_not_fit(bert_dir, tmp_path):
    other = tmp_path / "other"  # same size, other tokens
    shutil.copytree(bert_dir, other)
    lines = (other / "vocab.txt").read_text(encoding="utf-8").splitlines()
    renamed = lines[:20] + [f"別{i}" for i in range(20, len(lines))]
    (other / "vocab.txt").write_text("\n".join(renamed) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=f"vocabulary is not .*, {len(lines) - 20} differ"):
        init_model(bert_dir, tmp_path / "lm", tokenizer=other)
    swapped = tmp_path / "swapped"  # two tokens trade places: two ids differ, not four
    shutil.copytree(bert_dir, swapped)
    trade = list(lines)
    trade[30], trade[31] = lines[31], lines[30]
    (swapped / "vocab.txt").write_text("\n".join(trade) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=f"{len(lines)} vs {len(lines)} tokens, 2 differ"):
        init_model(bert_dir, tmp_path / "lm", tokenizer=swapped)
    short = tmp_path / "short"
    shutil.copytree(bert_dir, short)
    (short / "vocab.txt").write_text("\n".join(lines[:-10]) + "\n", encoding="utf-8")
    size = len(lines) - 10  # the fixture's vocabulary depends on the text it was trained on
    with pytest.raises(UserError, match=f"{size} vs {len(lines)} tokens"):
        init_model(bert_dir, tmp_path / "lm", tokenizer=short)
    with pytest.raises(UserError, match="cannot load a BERT"):
        layoutlm_from_bert(tmp_path / "nothing")


def test_a_tokenizer_config_without_its_class_still_exports_the_mecab_tokenizer(
    localized_dir, unidic_dir, tmp_path
):
    """A MeCab directory whose tokenizer_config.json names no class (valid for
    BertJapaneseTokenizer, as many hand-made ones are): beside a LayoutLM, AutoTokenizer would
    take LayoutLM's BertTokenizer. Every directory layoutja writes names the class."""
    from layoutja.text.tokenizer import JapaneseTokenizer

    unnamed = tmp_path / "unnamed"
    shutil.copytree(unidic_dir, unnamed)
    config = json.loads((unnamed / "tokenizer_config.json").read_text(encoding="utf-8"))
    del config["tokenizer_class"]
    (unnamed / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    bert = tiny_bert(BertForPreTraining, unnamed, tmp_path / "bert")
    init_model(bert, tmp_path / "lm")
    pretrain(tiny(max_steps=1), localized_dir, tmp_path / "run", init=str(tmp_path / "lm"),
             progress=False)  # fmt: skip
    text = "東京国際空港は東京都大田区にある。"
    expected = JapaneseTokenizer.from_pretrained(unnamed).encode(text).tokens
    written = [tmp_path / "lm", tmp_path / "run", tmp_path / "run/checkpoints/step-0000001/hf"]
    for directory in written:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        assert type(tokenizer).__name__ == "BertJapaneseTokenizer", directory
        assert tokenizer.tokenize(text) == expected


def test_every_export_has_a_model_card_whose_code_runs(localized_dir, bert_dir, tmp_path):
    init_model(bert_dir, tmp_path / "lm")
    out = tmp_path / "run"
    config = tiny(max_steps=2, save_every=1, log_every=1)
    pretrain(config, localized_dir, out, init=str(tmp_path / "lm"), progress=False)
    exports = [tmp_path / "lm", out, out / "checkpoints" / "step-0000001" / "hf"]
    codes = []
    for directory in exports:
        meta, text, code = model_card(directory)
        assert (meta["language"], meta["library_name"]) == ("ja", "transformers")
        assert meta["pipeline_tag"] == "fill-mask" and "layout-aware" in meta["tags"]
        assert "license" in meta and meta["license"] is None  # left for the user to fill
        assert "base_model" not in meta  # started from a local directory, not a hub model
        assert f'model_dir = "{directory}"' in code and "bbox" in code
        codes.append(code)
    vocabulary = len(load_vocab(out / "vocab.txt"))
    shapes = run_python(*codes, cwd=tmp_path).splitlines()
    assert len(shapes) == 3 and all(s.endswith(f", {vocabulary}])") for s in shapes)
    _, made, _ = model_card(tmp_path / "lm")
    assert "layoutja init-model copied every BERT weight" in made
    assert "layoutlm.embeddings.x_position_embeddings.weight" in made and "## Training" not in made
    _, text, _ = model_card(out)
    manifest = json.loads((localized_dir / "manifest.json").read_text())
    assert f"- pages: {manifest['counts']['pages']:,}" in text
    assert f"- tokens: {manifest['counts']['tokens']:,}" in text
    assert manifest["tokenizer_vocab_sha256"] in text and manifest["chromium"] in text
    assert f"It started from `{tmp_path / 'lm'}`" in text and "2 steps of a global batch" in text
    assert "max_steps: 2" in text  # the recipe
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"last logged (step 2): loss {last['loss']}" in text
    assert f"held out: eval_loss {last['eval_loss']}" in text  # the last step evaluates
    _, at_step_1, _ = model_card(exports[2])
    assert "1 steps of a global batch" in at_step_1 and "last logged (step 1)" in at_step_1
    assert "held out: none" in at_step_1


def test_windows_overlap_by_the_margin_and_cover_every_token():
    for length in [1, 509, 510, 511, 892, 893, 2000]:
        spans = window_spans(length)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(end - start <= 510 for start, end in spans)
        for (s0, e0), (s1, _) in zip(spans, spans[1:], strict=False):
            assert s1 == s0 + 382 and e0 - s1 == 128  # the published stride and margin


def test_masking_statistics():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 3000, (64, 512))
    ids[:, 0], ids[:, 300], ids[:, 400:] = SPECIALS.cls, SPECIALS.sep, SPECIALS.pad
    masked, labels = mask_tokens(ids, SPECIALS, 3000, generator)
    special = (ids == SPECIALS.cls) | (ids == SPECIALS.sep) | (ids == SPECIALS.pad)
    selected = labels != -100
    assert not (selected & special).any() and torch.equal(masked[special], ids[special])
    assert selected.sum() / (~special).sum() == pytest.approx(0.15, abs=0.005)
    assert torch.equal(labels[selected], ids[selected])
    as_mask = (masked[selected] == SPECIALS.mask).float().mean()
    kept = (masked[selected] == ids[selected]).float().mean()
    assert as_mask == pytest.approx(0.8, abs=0.01)
    assert kept == pytest.approx(0.1 + 0.1 / 3000, abs=0.01)  # kept, or randomly drawn itself
    assert torch.equal(masked[~selected], ids[~selected])


def test_sparse_projection_gives_the_standard_loss(bert_dir):
    mlm = layoutlm_from_bert(bert_dir)[0].eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, mlm.config.vocab_size, (3, 40), generator=generator)
    bbox = torch.randint(0, 500, (3, 40, 4), generator=generator)
    bbox[..., 2:] += bbox[..., :2]
    attention = torch.ones_like(ids)
    masked, labels = mask_tokens(ids, SPECIALS, mlm.config.vocab_size, generator, Masking(0.3))
    ours = MVLMModel(mlm)(masked, bbox, attention, labels)["loss"]
    standard = mlm(input_ids=masked, bbox=bbox, attention_mask=attention, labels=labels).loss
    assert ours.item() == pytest.approx(standard.item(), rel=1e-5)
    nothing = torch.full_like(labels, -100)  # a micro-batch of short pages with nothing masked
    empty = MVLMModel(mlm)(masked, bbox, attention, nothing)["loss"]
    empty.backward()
    assert empty.item() == 0.0


def test_init_refuses_what_is_not_a_bert(tmp_path, unidic_dir, bert_dir):
    from transformers import ElectraConfig, ElectraForPreTraining

    config = ElectraConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        embedding_size=32,
    )
    ElectraForPreTraining(config).save_pretrained(tmp_path / "electra")
    with pytest.raises(UserError, match="a electra model, not a BERT"):
        layoutlm_from_bert(tmp_path / "electra")
    with pytest.raises(UserError, match="at least 1001 rows"):
        layoutlm_from_bert(bert_dir, max_2d_position_embeddings=512)


def tiny(**settings) -> object:
    return recipe("mvlm-tiny", **settings)


def test_tiny_recipe_lowers_the_loss_and_exports_an_auto_model(localized_dir, bert_dir, tmp_path):
    out = tmp_path / "run"
    pretrain(
        tiny(max_steps=40, log_every=5), localized_dir, out, init=str(bert_dir), progress=False
    )
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 40
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5
    assert all(m["tokens_per_s"] > 0 for m in metrics)
    assert (out / "tensorboard").is_dir() and len(list((out / "checkpoints").iterdir())) == 2
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert type(model).__name__ == "LayoutLMForMaskedLM"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(tokenizer).__name__ == "BertJapaneseTokenizer"
    encoded = tokenizer("東京の[MASK]港", return_tensors="pt")
    bbox = torch.zeros((*encoded["input_ids"].shape, 4), dtype=torch.long)
    logits = model(**encoded, bbox=bbox).logits
    assert logits.shape[-1] == len(load_vocab(out / "vocab.txt"))


def test_resume_matches_an_uninterrupted_run(localized_dir, unidic_dir, tmp_path, capfd):
    config = tiny(max_steps=12, save_every=4, keep_checkpoints=5, log_every=2)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    pretrain(config, localized_dir, whole, tokenizer=str(unidic_dir), progress=False)
    # The interrupted run: as if killed after the step-4 checkpoint.
    shutil.copytree(whole / "checkpoints" / "step-0000004", cut / "checkpoints" / "step-0000004")
    pretrain(config, localized_dir, cut, tokenizer=str(unidic_dir), resume=True, progress=False)
    a, b = load_file(whole / "model.safetensors"), load_file(cut / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    losses = [json.loads(x)["loss"] for x in (whole / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x)["loss"] for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert resumed == pytest.approx(losses[2:], rel=1e-5)  # steps 6..12
    with pytest.raises(UserError, match="--resume"):
        pretrain(config, localized_dir, cut, tokenizer=str(unidic_dir), progress=False)
    pretrain(config, localized_dir, cut, tokenizer=str(unidic_dir), resume=True, progress=False)
    assert "already at step 12 of 12: nothing to train" in capfd.readouterr().err


def test_a_nan_loss_stops_with_the_last_checkpoint_intact(localized_dir, unidic_dir, tmp_path):
    config = tiny(max_steps=20, save_every=1, warmup_steps=1, learning_rate=1e30)
    with pytest.raises(TrainingStopped, match="Last good checkpoint"):
        pretrain(config, localized_dir, tmp_path, tokenizer=str(unidic_dir), progress=False)
    last = sorted((tmp_path / "checkpoints").glob("step-*"))[-1]
    weights = load_file(last / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="unknown setting"):
        load_config(TRAIN / "mvlm-tiny.yaml", {"optimizer.lr": "1"})
    with pytest.raises(UserError, match="did you mean optimizer.learning_rate"):
        load_config(None, {"learning_rate": "1"})
    with pytest.raises(UserError, match="schedule.max_steps: expected int, got 'many'"):
        load_config(None, {"schedule.max_steps": "many"})
    with pytest.raises(UserError, match="optimizer is a section"):
        load_config(None, {"optimizer": "1"})
    assert load_config(TRAIN / "mvlm-base.yaml").optimizer.learning_rate == 5e-5
    assert load_config(None, {"model.hidden_size": "48"}).model == {"hidden_size": 48}
    with pytest.raises(UserError, match="model.hidden_sizee is not an architecture setting .*"
                                        "did you mean model.hidden_size"):  # fmt: skip
        load_config(None, {"model.hidden_sizee": "32"})


def test_a_tokenizer_named_by_the_data_that_does_not_resolve_names_its_manifest(
    unidic_dir, tmp_path, monkeypatch
):
    from layoutja.localize.store import Store
    from layoutja.text.tokenizer import vocab_sha256

    settings = {"tokenizer_vocab_sha256": vocab_sha256(unidic_dir), "viewport": [1280, 854],
                "normalization": "body"}  # fmt: skip
    data = tmp_path / "localized"
    # A manifest of older days, with the tokenizer as given: relative to where it ran.
    Store(data, (0, 1), {**settings, "tokenizer": "../tokenizer"}).close()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as error:
        data_tokenizer(data, None, None, None)
    message = str(error.value)
    assert "../tokenizer: no such tokenizer directory" in message
    assert f"named in {data / 'manifest.json'}; give --tokenizer" in message
    assert data_tokenizer(data, None, None, str(unidic_dir)) == unidic_dir  # --tokenizer: used


def test_two_processes_train_as_one_data_parallel_job(localized_dir, bert_dir, tmp_path):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", "2", "-m", "layoutja", "pretrain",
               "--config", str(TRAIN / "mvlm-tiny.yaml"), "--data", str(localized_dir),
               "--init", str(bert_dir), "--out", str(out), "--schedule.max_steps", "4",
               "--schedule.per_device_batch_size", "2", "--checkpoint.log_every", "2",
               "--checkpoint.save_every", "2", "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("copied from") == 1  # the conversion report, from one process
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]  # one log, from the main process
    # The schedule advances once per optimizer step, not once per process: step 2 of a 10-step
    # warmup uses 2/10 of the rate.
    assert metrics[0]["learning_rate"] == pytest.approx(1e-3 * 2 / 10)
    last = out / "checkpoints" / "step-0000004"
    assert (last / "random_states_0.pkl").exists() and (last / "random_states_1.pkl").exists()
    assert AutoModelForMaskedLM.from_pretrained(out).config.model_type == "layoutlm"


def test_held_out_pages_are_never_trained_on_and_scored_with_and_without_layout(
    localized_dir, unidic_dir, tmp_path
):
    from layoutja.pretrain.task import PretrainTask
    from layoutja.training.trainer import Trainer

    config = tiny(eval_pages=4)
    trainer = Trainer(config, tmp_path / "run", progress=False)
    task = PretrainTask(config, trainer, localized_dir, tmp_path / "run", tokenizer=str(unidic_dir))
    held = (tmp_path / "run" / "eval_pages.txt").read_text().split()
    assert len(held) == 4
    sources = {}  # (part, page) → source
    for part, path in enumerate(task.files):
        for page, source in enumerate(
            pq.read_table(path, columns=["source"]).column(0).to_pylist()
        ):
            sources[part, page] = source
    trained = {sources[part, page] for part, page in task.order.corpus.pages().tolist()}
    assert trained.isdisjoint(held) and trained | set(held) == set(sources.values())
    # Two epochs of training windows: none from a held-out page.
    rows = task.order.corpus.windows[task.order.rows(np.arange(2 * len(task.order.corpus)))]
    assert not {sources[p, q] for p, q in rows[:, :2].tolist()} & set(held)
    # The ablation scores the same windows with the same masks, boxes zeroed.
    seen = []
    scores = task.model.scores
    task.model.scores = lambda **batch: seen.append(batch) or scores(**batch)
    first = task.evaluate(task.model, 1)
    assert set(first) == {"eval_loss", "eval_accuracy", "eval_loss_without_layout",
                          "eval_accuracy_without_layout"}  # fmt: skip
    assert len(seen) == 2 * len(task.eval_batches)
    for with_layout, without in zip(seen[::2], seen[1::2], strict=True):
        assert torch.equal(with_layout["input_ids"], without["input_ids"])
        assert torch.equal(with_layout["labels"], without["labels"])
        assert with_layout["bbox"].any() and not without["bbox"].any()
    assert task.evaluate(task.model, 2) == first  # fixed masks: the same model, the same scores


def test_a_run_logs_held_out_metrics_every_eval_every_steps(localized_dir, bert_dir, tmp_path):
    out = tmp_path / "run"
    pretrain(tiny(max_steps=40, log_every=10), localized_dir, out, init=str(bert_dir),
             progress=False)  # fmt: skip
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = [m for m in lines if "eval_loss" in m]
    assert [m["step"] for m in evaluated] == [20, 40]
    for m in evaluated:
        assert 0 <= m["eval_accuracy"] <= 1 and m["eval_loss_without_layout"] > 0
    assert evaluated[-1]["eval_loss"] < evaluated[0]["eval_loss"]


def test_fill_mask_never_proposes_special_or_unused_tokens(unidic_dir, tmp_path):
    from layoutja.pretrain.fillmask import fill_mask, unproposable

    vocab = load_vocab(unidic_dir / "vocab.txt")
    bracketed = unproposable(vocab)
    assert {vocab["[UNK]"], vocab["[PAD]"], vocab["[unused3]"]} <= set(bracketed)
    bert = tiny_bert(BertForMaskedLM, unidic_dir, tmp_path / "bert")
    init_model(bert, tmp_path / "lm")
    for directory, model_class in ((bert, BertForMaskedLM), (tmp_path / "lm", LayoutLMForMaskedLM)):
        model = model_class.from_pretrained(directory)
        with torch.no_grad():  # the bracketed entries would win every [MASK] by far
            model.cls.predictions.bias[bracketed] += 100.0
        model.save_pretrained(directory)
        answers = fill_mask(directory, "東京は[MASK]の首都である。", top_k=5)
        tokens = [token for token, _ in answers[0]]
        assert len(tokens) == 5 and not any(t.startswith("[") for t in tokens), tokens


def test_the_defaults_are_the_published_recipe_spelled_out_in_mvlm_base():
    import dataclasses

    defaults = dataclasses.asdict(load_config(None))
    published = dataclasses.asdict(load_config(TRAIN / "mvlm-base.yaml"))
    assert defaults == published
