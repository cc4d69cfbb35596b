"""Models and tokenizers by their Hugging Face hub names, from an offline cache built here.

The cache holds tiny weights under the real repository names with each repository's real file
layout and tokenizer configuration: cl-tohoku's BERT (PyTorch weights, MeCab unidic-lite
tokenizer), the published LayoutLM (its `LayoutLMTokenizer` files, cl-tohoku's vocabulary) and
izumi-lab's ELECTRA (MeCab ipadic, `[UNK]` = 0 and `[PAD]` = 3). `HF_HOME` points at it and
`HF_HUB_OFFLINE=1`; every command runs the real resolution and loading code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertForPreTraining,
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForPreTraining,
)

from layoutja.cli.main import main
from layoutja.common import UserError, device
from layoutja.hub import resolve
from layoutja.pretrain.task import data_tokenizer
from layoutja.shinra.classifier import TokenClassifier
from layoutja.text.tokenizer import vocab_sha256

from .conftest import DATA, TRAIN, make_shinra, model_card, run_python, tiny_bert
from .hubcache import add_repo

BERT = "cl-tohoku/bert-base-japanese-v2"
LAYOUTLM = "jri-advtechlab/layoutlm-wikipedia-ja"
IZUMI = "izumi-lab/electra-base-japanese-discriminator"
IZUMI_GENERATOR = "izumi-lab/electra-base-japanese-generator"
IZUMI_ORDER = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
DRIFT = 0.25  # how far one word's embedding in izumi's generator is from the discriminator's


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _as_pytorch_bin(directory: Path) -> None:
    """Older repositories (cl-tohoku's, izumi-lab's) hold pytorch_model.bin, no safetensors."""
    from safetensors.torch import load_file

    weights = load_file(directory / "model.safetensors")
    torch.save(weights, directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()


def _izumi_repo(ipadic_dir: Path, out: Path, cls, embeddings: dict | None = None,
                **config) -> torch.nn.Module:  # fmt: skip
    """One of izumi-lab's two ELECTRA repositories in `out` (`embeddings`: its own copy of the
    embedding module's weights); returns the model."""
    out.mkdir(parents=True)
    tokens = (ipadic_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokens = IZUMI_ORDER + [t for t in tokens if t not in IZUMI_ORDER]
    (out / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    _write_json(out / "tokenizer_config.json", {  # izumi-lab's file, as published
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]", "do_lower_case": False, "do_word_tokenize": True,
        "do_subword_tokenize": True, "word_tokenizer_type": "mecab",
        "subword_tokenizer_type": "wordpiece", "never_split": None,
        "mecab_kwargs": {"mecab_dic": "ipadic"}, "tokenize_chinese_chars": False,
    })  # fmt: skip
    _write_json(out / "special_tokens_map.json", {t[1:-1].lower() + "_token": t
                                                  for t in IZUMI_ORDER})  # fmt: skip
    torch.manual_seed(2)
    # ElectraConfig's pad_token_id stays its default 0: the vocabulary says otherwise.
    # As published: the embeddings as wide as the discriminator, the generator a third as wide.
    settings = {"vocab_size": len(tokens), "embedding_size": 48, "num_hidden_layers": 2,
                "max_position_embeddings": 128, "tokenizer_class": "BertJapaneseTokenizer",
                **config}  # fmt: skip
    model = cls(ElectraConfig(**settings))
    if embeddings is not None:
        model.electra.embeddings.load_state_dict(embeddings)
    model.save_pretrained(out)
    _as_pytorch_bin(out)
    return model


@pytest.fixture(scope="module")
def hub(tmp_path_factory, unidic_dir, ipadic_dir) -> Path:
    """HF_HOME with the four repositories (and a tagged second revision of the BERT)."""
    from layoutja.pretrain.from_bert import init_model

    home, work = tmp_path_factory.mktemp("hf-home"), tmp_path_factory.mktemp("hub-files")
    bert = tiny_bert(BertForPreTraining, unidic_dir, work / "bert", hidden=64)
    _write_json(bert / "tokenizer_config.json", {  # cl-tohoku's file, as published
        "tokenizer_class": "BertJapaneseTokenizer", "model_max_length": 512,
        "do_lower_case": False, "word_tokenizer_type": "mecab",
        "subword_tokenizer_type": "wordpiece", "mecab_kwargs": {"mecab_dic": "unidic_lite"},
    })  # fmt: skip
    layoutlm = work / "layoutlm"
    init_model(bert, layoutlm)
    _write_json(layoutlm / "tokenizer_config.json", {  # the published defect: no MeCab
        "do_lower_case": False, "model_max_length": 512, "tokenizer_class": "LayoutLMTokenizer",
    })  # fmt: skip
    _as_pytorch_bin(bert)
    add_repo(home, BERT, bert)
    add_repo(home, LAYOUTLM, layoutlm)
    second = work / "bert-v2"
    shutil.copytree(bert, second)
    (second / "README.md").write_text("a later revision\n")
    add_repo(home, BERT, second, revision="v2")
    wide = {"hidden_size": 48, "num_attention_heads": 3, "intermediate_size": 96}
    discriminator = _izumi_repo(ipadic_dir, work / "izumi", ElectraForPreTraining, **wide)
    # The generator's own copy of the embeddings: the discriminator's, one word's drifted.
    embeddings = {k: v.clone() for k, v in discriminator.electra.embeddings.state_dict().items()}
    embeddings["word_embeddings.weight"][7] += DRIFT
    _izumi_repo(ipadic_dir, work / "izumi-gen", ElectraForMaskedLM, embeddings, hidden_size=16,
                num_attention_heads=1, intermediate_size=32)  # fmt: skip
    add_repo(home, IZUMI, work / "izumi")
    add_repo(home, IZUMI_GENERATOR, work / "izumi-gen")
    return home


@pytest.fixture
def offline(hub, monkeypatch) -> Path:
    """This process as if started with HF_HOME=hub and HF_HUB_OFFLINE=1 (huggingface_hub reads
    both once, at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


@pytest.fixture(scope="module")
def shinra(tmp_path_factory) -> Path:
    return make_shinra(tmp_path_factory.mktemp("shinra-hub"), pages=8)


def run(*argv: str | Path) -> None:
    assert main([str(a) for a in argv]) == 0


def error(capsys, *argv: str | Path) -> str:
    """The one-line error of a command that must fail."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 1
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def pages(shinra, tmp_path_factory) -> Callable[[str], Path]:
    """The SHINRA pages localized with a tokenizer (a hub name), once per tokenizer; called by
    tests that are `offline`."""
    done = {}

    def localized(tokenizer: str) -> Path:
        if tokenizer not in done:
            out = tmp_path_factory.mktemp("pages")
            run("localize", shinra / "html", "--tokenizer", tokenizer, "--out", out,
                "--workers", "1", "--quiet")  # fmt: skip
            done[tokenizer] = out
        return done[tokenizer]

    return localized


def finetuning(shinra: Path, model: str | Path, localized: Path, out: Path, *extra: str) -> list:
    return ["finetune", "--config", TRAIN / "finetune-tiny.yaml", "--data", shinra, "--model",
            model, "--localized", localized, "--out", out, "--schedule.epochs", "2", "--quiet",
            *extra]  # fmt: skip


def finetune(shinra: Path, model: str | Path, localized: Path, out: Path, *extra: str) -> Path:
    run(*finetuning(shinra, model, localized, out, *extra))
    return out


def test_names_resolve_to_cached_snapshots_at_a_revision(offline):
    main_snapshot = resolve(BERT)
    assert main_snapshot.is_relative_to(
        offline / "hub" / "models--cl-tohoku--bert-base-japanese-v2"
    )
    assert (main_snapshot / "pytorch_model.bin").is_file()  # no safetensors: the PyTorch file
    assert not (main_snapshot / "README.md").exists()
    tagged = resolve(BERT, revision="v2")
    assert tagged != main_snapshot and (tagged / "README.md").is_file()
    assert resolve(f"{BERT}@v2") == tagged
    with pytest.raises(UserError, match="not in the Hugging Face cache .*HF_HUB_OFFLINE"):
        resolve("cl-tohoku/bert-large-japanese")
    with pytest.raises(UserError, match="not in the Hugging Face cache"):
        resolve(BERT, revision="v9")
    with pytest.raises(UserError, match="no such model directory"):
        resolve("no-such-directory")


def test_a_fresh_process_takes_hf_home_and_offline_mode_from_the_environment(hub, tmp_path):
    env = {**os.environ, "HF_HOME": str(hub), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "layoutja", "init-model", "--from", BERT, "--out",
               str(tmp_path / "lm")]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert type(AutoTokenizer.from_pretrained(tmp_path / "lm")).__name__ == "BertJapaneseTokenizer"
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "lm")
    assert type(model).__name__ == "LayoutLMForMaskedLM"


def test_the_published_layoutlm_by_name_with_the_mecab_tokenizer(
    offline, pages, shinra, tmp_path, capsys
):
    localized = pages(BERT)
    # Its own tokenizer files are not MeCab: the error names the fix.
    message = error(capsys, *finetuning(shinra, LAYOUTLM, localized, tmp_path / "no"))
    assert "LayoutLMTokenizer" in message and f"--tokenizer {BERT}" in message
    # A tokenizer with another vocabulary is refused.
    wrong = finetuning(shinra, LAYOUTLM, localized, tmp_path / "no2", "--tokenizer", IZUMI)
    assert "vocabulary is not" in error(capsys, *wrong)
    out = finetune(shinra, LAYOUTLM, localized, tmp_path / "ft", "--tokenizer", BERT)
    # What layoutja writes carries the MeCab tokenizer, never the published defect; its model
    # card names the published model and says why no --tokenizer is needed here.
    assert type(AutoTokenizer.from_pretrained(out)).__name__ == "BertJapaneseTokenizer"
    meta, text, _ = model_card(out)
    assert (
        meta["base_model"] == LAYOUTLM
        and f"[{LAYOUTLM}](https://huggingface.co/{LAYOUTLM})" in text
    )
    assert f"`--tokenizer {BERT}`" in text and "needs no `--tokenizer`" in text
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert type(model).__name__ == "LayoutLMForTokenClassification"
    # Prediction takes the fine-tuned model by hub name as well.
    add_repo(offline, "someone/layoutlm-shinra", out)
    predictions = tmp_path / "pred.jsonl"
    run("predict", "--model", "someone/layoutlm-shinra", "--data", shinra, "--localized",
        localized, "--out", predictions)  # fmt: skip
    assert all(json.loads(line)["html_offset"] for line in predictions.read_text().splitlines())
    # Pretraining goes on from it: the data's tokenizer stands in for the defective one.
    run("pretrain", "--config", TRAIN / "mvlm-tiny.yaml", "--data", localized, "--init", LAYOUTLM,
        "--out", tmp_path / "mvlm", "--schedule.max_steps", "2", "--checkpoint.save_every", "1",
        "--quiet")  # fmt: skip
    assert type(AutoTokenizer.from_pretrained(tmp_path / "mvlm")).__name__ == (
        "BertJapaneseTokenizer"
    )
    # An intermediate checkpoint's models load with Auto* classes and fine-tune as they are.
    step_1 = tmp_path / "mvlm" / "checkpoints" / "step-0000001" / "hf"
    assert type(AutoModelForMaskedLM.from_pretrained(step_1)).__name__ == "LayoutLMForMaskedLM"
    assert type(AutoTokenizer.from_pretrained(step_1)).__name__ == "BertJapaneseTokenizer"
    finetune(shinra, step_1, localized, tmp_path / "ft-step-1", "--schedule.epochs", "1")
    assert (tmp_path / "ft-step-1" / "config.json").is_file()


def test_fill_mask_with_the_published_layoutlm(offline, capsys):
    assert f"--tokenizer {BERT}" in error(capsys, "fill-mask", "--model", LAYOUTLM, "[MASK]です")
    run("fill-mask", "--model", LAYOUTLM, "--tokenizer", BERT, "--top-k", "2",
        "東京は[MASK]の首都である。")  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[MASK] 1:" and len(lines) == 3


def test_pages_localized_by_hub_name_record_the_commit(offline, pages):
    localized = pages(BERT)
    manifest = json.loads((localized / "manifest.json").read_text())
    commit = resolve(BERT).name  # the snapshot of the cache's main
    assert (manifest["tokenizer"], manifest["tokenizer_revision"]) == (BERT, commit)
    assert data_tokenizer(localized, None, None, None).name == commit


def test_the_bert_baseline_by_name(offline, pages, shinra, tmp_path):
    localized = pages(BERT)
    out = finetune(shinra, BERT, localized, tmp_path / "ft", "--finetune.text_only", "true")
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert type(model).__name__ == "BertForTokenClassification"


def test_izumi_electra_with_unk_0_and_pad_3_end_to_end(
    offline, pages, shinra, tmp_path, capsys, monkeypatch
):
    from layoutja.pretrain.windows import SpecialIds, collate
    from layoutja.text.tokenizer import load_vocab

    specials = SpecialIds.from_vocab(load_vocab(resolve(IZUMI) / "vocab.txt"))
    assert (specials.pad, specials.cls, specials.sep, specials.mask) == (3, 1, 2, 4)
    padded = collate([([1, 7, 2], [[0] * 4] * 3), ([1, 2], [[0] * 4] * 2)], specials.pad)
    row, mask = padded["input_ids"][1].tolist(), padded["attention_mask"][1].tolist()
    assert row[:2] == [1, 2] and set(row[2:]) == {3} and set(mask[2:]) == {0}
    localized = pages(IZUMI)
    out = finetune(shinra, IZUMI, localized, tmp_path / "ft", "--finetune.text_only", "true")
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert type(model).__name__ == "ElectraForTokenClassification"
    # The padding row of the embeddings is the vocabulary's [PAD], not the config's default 0.
    assert model.config.pad_token_id == 3
    assert model.electra.embeddings.word_embeddings.padding_idx == 3
    # predict puts the model where the code chooses (the GPU when there is one) and every
    # batch where the model is.
    seen = []
    labels = TokenClassifier.top_labels

    def spy(self, batch, k):
        seen.append((next(self.parameters()).device, {v.device for v in batch.values()}))
        return labels(self, batch, k)

    monkeypatch.setattr(TokenClassifier, "top_labels", spy)
    predictions = tmp_path / "pred.jsonl"
    run("predict", "--model", out, "--data", shinra, "--localized", localized, "--out",
        predictions)  # fmt: skip
    assert predictions.exists() and seen
    assert all(batch == {model} and model == device() for model, batch in seen)
    run("fill-mask", "--model", IZUMI_GENERATOR, "--top-k", "3", "東京は[MASK]の首都である。")
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_finetune_and_predict_refuse_pages_localized_with_another_vocabulary(
    offline, pages, shinra, tmp_path, capsys
):
    izumi_pages = pages(IZUMI)  # ipadic, [UNK] = 0: BERT's ids would mean other tokens
    commands = [
        finetuning(shinra, BERT, izumi_pages, tmp_path / "ft"),
        finetuning(shinra, LAYOUTLM, izumi_pages, tmp_path / "ft2", "--tokenizer", BERT),
        ["predict", "--model", BERT, "--data", shinra, "--localized", izumi_pages, "--out",
         tmp_path / "pred.jsonl"],
    ]  # fmt: skip
    for command in commands:
        message = error(capsys, *command)
        assert f"localized with the tokenizer {IZUMI} (manifest.json), whose vocabulary" in message
        assert f"is not that of {BERT} (" in message
        assert f"layoutja localize {shinra / 'html'} --tokenizer {BERT} --out" in message
    assert not (tmp_path / "ft" / "checkpoints").exists() and not (tmp_path / "pred.jsonl").exists()


def test_izumi_generator_and_discriminator_go_on_pretraining_text_only_and_layout_aware(
    offline, pages, tmp_path, capfd
):
    localized = pages(IZUMI)
    published = ElectraForPreTraining.from_pretrained(resolve(IZUMI)).state_dict()
    common = ["pretrain", "--config", TRAIN / "electra-tiny.yaml", "--data", localized,
              "--schedule.max_steps", "2", "--checkpoint.save_every", "2", "--quiet"]  # fmt: skip
    # One export holds both models; a discriminator published alone needs its generator.
    capfd.readouterr()
    assert main([str(a) for a in [*common, "--init", IZUMI, "--out", tmp_path / "no"]]) == 1
    assert "--init-generator" in capfd.readouterr().err
    codes = []
    for layout in ("false", "true"):
        out = tmp_path / f"layout-{layout}"
        run(*common, "--init", IZUMI, "--init-generator", IZUMI_GENERATOR, "--out", out,
            "--electra.layout", layout)  # fmt: skip
        report = capfd.readouterr().err
        assert "the discriminator's is kept, the generator's dropped" in report
        assert f"word_embeddings.weight: max |Δ| {DRIFT}," in report
        assert "position_embeddings.weight: identical" in report
        discriminator = AutoModelForPreTraining.from_pretrained(out / "discriminator",
                                                                trust_remote_code=True)  # fmt: skip
        generator = AutoModelForMaskedLM.from_pretrained(out / "generator", trust_remote_code=True)
        weights = discriminator.state_dict()
        body = "layoutlm." if layout == "true" else "electra."
        for name, tensor in published.items():  # every weight copied (2 small steps since)
            mapped = body + name.removeprefix("electra.") if name.startswith("electra.") else name
            torch.testing.assert_close(weights[mapped], tensor, atol=2e-3, rtol=0)
        # One embedding module: the generator decodes with the discriminator's word embeddings.
        words = generator.get_input_embeddings().weight
        assert torch.equal(words, discriminator.get_input_embeddings().weight)
        assert discriminator.config.pad_token_id == 3 and generator.config.pad_token_id == 3
        for part, name in (("discriminator", IZUMI), ("generator", IZUMI_GENERATOR)):
            assert type(AutoTokenizer.from_pretrained(out / part)).__name__ == (
                "BertJapaneseTokenizer"
            )
            meta, _, code = model_card(out / part)
            assert meta["base_model"] == name
            codes.append(code)
    assert type(discriminator).__name__ == "LayoutElectraDiscriminator"
    assert type(generator).__name__ == "LayoutElectraGenerator"
    assert type(AutoModel.from_pretrained(out / "discriminator")).__name__ == "LayoutLMModel"
    new = [f"layoutlm.embeddings.{a}_position_embeddings.weight" for a in "xyhw"]
    assert f"new (random init): {', '.join(new)}\n" in report
    assert "copied from" in report and "not used" not in report
    assert len(run_python(*codes, cwd=tmp_path).splitlines()) == 4  # each card's code runs


def test_the_readme_izumi_command_on_a_text_corpus_takes_the_models_tokenizer(
    offline, tmp_path, capsys
):
    # README, "Pretrain ELECTRA": no --tokenizer, the discriminator's own (ipadic) is used.
    lines = (DATA / "sample_ja.txt").read_text(encoding="utf-8").splitlines()
    wiki = tmp_path / "wiki.txt"
    wiki.write_text("\n".join(lines[:8] + [""] + lines[8:]) + "\n", encoding="utf-8")
    out = tmp_path / "runs" / "electra-izumi"
    run("pretrain", "--config", TRAIN / "electra-base.yaml", "--data", wiki, "--init", IZUMI,
        "--init-generator", IZUMI_GENERATOR, "--out", out,
        # CPU sizes; the tiny checkpoints have 128 positions
        "--schedule.max_steps", "2", "--schedule.global_batch_size", "2",
        "--schedule.per_device_batch_size", "2", "--data.max_length", "128",
        "--data.margin", "32", "--data.eval_pages", "0", "--quiet")  # fmt: skip
    own = resolve(IZUMI)
    packed = json.loads((out / "packed" / "manifest.json").read_text())
    assert packed["tokenizer_vocab_sha256"] == vocab_sha256(own)
    for part in ("discriminator", "generator"):
        assert (out / part / "vocab.txt").read_text() == (own / "vocab.txt").read_text()
        config = json.loads((out / part / "tokenizer_config.json").read_text())
        assert config["mecab_kwargs"] == {"mecab_dic": "ipadic"}
    # An initial model without a MeCab tokenizer of its own says so and names the fix.
    message = error(capsys, "pretrain", "--config", TRAIN / "electra-base.yaml", "--data", wiki,
                    "--init", LAYOUTLM, "--init-generator", IZUMI_GENERATOR, "--out",
                    tmp_path / "no")  # fmt: skip
    assert "its tokenizer is LayoutLMTokenizer" in message and "give --tokenizer" in message
