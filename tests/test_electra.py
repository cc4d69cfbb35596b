"""ELECTRA pretraining: model structure, the replaced-token objective, text packing, training
runs (layout-aware on localized pages, text-only on a text corpus), exports and resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoTokenizer,
    pipeline,
)

from layoutja.common import UserError
from layoutja.pretrain.electra import new_electra, replaced_tokens, sample_tokens
from layoutja.pretrain.fillmask import fill_mask
from layoutja.pretrain.task import pretrain
from layoutja.pretrain.textcorpus import pack, pack_text_corpus
from layoutja.pretrain.windows import ELECTRA_MASKING, SpecialIds, mask_tokens
from layoutja.shinra.finetune import load_classifier
from layoutja.text.tokenizer import JapaneseTokenizer
from layoutja.training.step import TrainingStopped

from .conftest import AIRPORTS, recipe

TRAIN = Path(__file__).resolve().parents[1] / "train"
SPECIALS = SpecialIds(pad=0, cls=2, sep=3, mask=4)
ARCHITECTURE = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 3,
                "intermediate_size": 96, "max_position_embeddings": 64}  # fmt: skip


def tiny(**settings) -> object:
    return recipe("electra-tiny", **settings)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def lowered(logged: list[dict], key: str) -> bool:
    """The mean of the last two logged values is below the mean of the first two."""
    values = [m[key] for m in logged]
    return sum(values[-2:]) < sum(values[:2]) * 0.95


def batch(vocab_size: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (2, 24), generator=generator)
    ids[:, 0], ids[:, -1] = SPECIALS.cls, SPECIALS.sep
    attention = torch.ones_like(ids)
    ids[1, 18:], attention[1, 18:] = SPECIALS.pad, 0
    bbox = torch.randint(0, 500, (2, 24, 4), generator=generator)
    bbox[..., 2:] += bbox[..., :2]
    masked, labels = mask_tokens(ids, SPECIALS, vocab_size, generator, ELECTRA_MASKING)
    uniforms = torch.rand(ids.shape, generator=generator)
    return {"input_ids": masked, "attention_mask": attention, "labels": labels, "bbox": bbox,
            "uniforms": uniforms}  # fmt: skip


@pytest.mark.parametrize("layout", [True, False])
def test_the_generator_is_a_third_as_wide_and_shares_the_embeddings(layout):
    model = new_electra(300, ARCHITECTURE, layout=layout)
    generator, discriminator = (m.config for m in model.exports().values())
    assert (generator.hidden_size, generator.num_attention_heads, generator.intermediate_size) == (
        16,
        1,
        32,
    )
    assert discriminator.hidden_size == 48
    assert generator.num_hidden_layers == discriminator.num_hidden_layers == 2
    if layout:
        shared, own = model.generator.embeddings, model.discriminator.layoutlm.embeddings
    else:
        shared, own = model.generator.electra.embeddings, model.discriminator.electra.embeddings
    assert shared is own
    names = [n for n, _ in shared.named_parameters()]
    assert {"word_embeddings.weight", "position_embeddings.weight"} <= set(names)
    if layout:
        assert "x_position_embeddings.weight" in names  # the 2-D embeddings are shared too
    # One set of tensors: the same parameter under the generator's and the discriminator's name.
    every = dict(model.named_parameters(remove_duplicate=False))
    prefix = "generator.embeddings." if layout else "generator.electra.embeddings."
    other = "discriminator.layoutlm.embeddings." if layout else "discriminator.electra.embeddings."
    for name in names:
        assert every[prefix + name] is every[other + name]
    words = model.generator.get_input_embeddings().weight
    assert words is model.exports()["discriminator"].get_input_embeddings().weight
    if not layout:  # the LM head is tied to the shared word embeddings
        assert model.generator.generator_lm_head.weight is words
    else:  # it decodes with them: changing a word's embedding changes that word's logit only
        hidden = torch.randn(3, 16)
        before = model.generator.lm_logits(hidden).detach()
        with torch.no_grad():
            words[7] += 1.0
        change = (model.generator.lm_logits(hidden).detach() - before).abs().sum(0)
        assert change[7] > 0 and change[torch.arange(300) != 7].max() == 0


def test_discriminator_labels_for_a_hand_made_batch():
    # [CLS] a [MASK] b [MASK] c [SEP] [PAD]: positions 2, 3 and 4 were selected for masking
    # (3 was kept unchanged, as 15% of the selected are); the generator sampled 21, 13, 40.
    masked = torch.tensor([[2, 10, 4, 13, 4, 15, 3, 0]])
    labels = torch.tensor([[-100, -100, 11, 13, 14, -100, -100, -100]])
    corrupted, replaced = replaced_tokens(masked, labels, torch.tensor([21, 13, 14]))
    assert corrupted.tolist() == [[2, 10, 21, 13, 14, 15, 3, 0]]
    # 21 replaced 11; 13 is the original (kept, sampled back); 14 is the original (guessed).
    assert replaced.tolist() == [[0, 0, 1, 0, 0, 0, 0, 0]]
    corrupted, replaced = replaced_tokens(masked, labels, torch.tensor([11, 20, 30]))
    assert replaced.tolist() == [[0, 0, 0, 1, 1, 0, 0, 0]]


def test_sampling_draws_from_the_softmax_by_its_uniform():
    torch.manual_seed(0)
    probabilities = torch.tensor([0.6, 0.25, 0.1, 0.05])
    logits = (probabilities.log() + 3.0).repeat(40000, 1).half()  # any offset, any dtype
    counts = torch.bincount(sample_tokens(logits, torch.rand(40000)), minlength=4) / 40000
    torch.testing.assert_close(counts, probabilities, atol=0.01, rtol=0)
    # the draw decides: the CDF is 0.6, 0.85, 0.95, 1
    draws = torch.tensor([0.0, 0.59, 0.61, 0.9, 0.97, 0.999999])
    assert sample_tokens(logits[:6].float(), draws).tolist() == [0, 0, 1, 2, 3, 3]


def test_electra_masking_is_85_percent_mask_15_unchanged():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 3000, (64, 512))
    masked, labels = mask_tokens(ids, SPECIALS, 3000, generator, ELECTRA_MASKING)
    selected = labels != -100
    assert selected.float().mean() == pytest.approx(0.15, abs=0.005)
    as_mask = (masked[selected] == SPECIALS.mask).float().mean()
    assert as_mask == pytest.approx(0.85, abs=0.01)
    unchanged = masked[selected] == ids[selected]
    assert torch.equal(unchanged, masked[selected] != SPECIALS.mask)  # no random tokens


@pytest.mark.parametrize("layout", [True, False])
def test_no_gradient_flows_through_the_sample(layout):
    """The generator's own weights learn only from its MLM loss: their gradients are the same
    whatever the discriminator's weight. The shared embeddings learn from both losses."""
    runs = []
    for weight in (50.0, 0.0):
        torch.manual_seed(0)
        model = new_electra(300, ARCHITECTURE, layout=layout, discriminator_weight=weight)
        inputs = batch(300) if layout else {k: v for k, v in batch(300).items() if k != "bbox"}
        torch.manual_seed(1)
        losses = model(**inputs)
        losses["loss"].backward()
        assert losses["discriminator_loss"] > 0
        encoder = model.generator.encoder if layout else model.generator.electra.encoder
        words = model.generator.get_input_embeddings().weight
        runs.append(([p.grad.clone() for p in encoder.parameters()], words.grad.clone()))
    (encoder_50, words_50), (encoder_0, words_0) = runs
    for with_disc, without in zip(encoder_50, encoder_0):
        torch.testing.assert_close(with_disc, without)
    assert not torch.allclose(words_50, words_0)  # the discriminator's loss reaches them


def test_a_batch_with_nothing_masked_still_reaches_every_weight():
    model = new_electra(300, ARCHITECTURE, layout=True)
    inputs = {**batch(300), "labels": torch.full((2, 24), -100)}
    losses = model(**inputs)
    losses["loss"].backward()
    assert losses["generator_loss"] == 0 and torch.isfinite(losses["loss"])
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []  # data-parallel ranks all-reduce every gradient


def test_packing_keeps_sentences_whole_and_cuts_only_long_ones():
    sentences = [[1] * 3, [2] * 4, [3] * 5, [4] * 20, [5] * 2, None, None, [6] * 2, None]
    packed = list(pack(sentences, 8))
    assert [(document, len(i)) for document, i in packed] == [
        (0, 7), (0, 5), (0, 8), (0, 8), (0, 6), (1, 2)
    ]  # fmt: skip
    assert packed[0][1] == [1] * 3 + [2] * 4 and packed[1][1] == [3] * 5
    assert packed[4][1] == [4] * 4 + [5] * 2  # never across the document boundary
    assert sum((i for _, i in packed), []) == sum((s for s in sentences if s), [])


def write_corpus(path: Path, documents: int = 24) -> list[list[str]]:
    """A plain-text corpus: one sentence per line, a blank line between documents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = []
    for i in range(documents):
        name, place, year, code = AIRPORTS[i % len(AIRPORTS)]
        docs.append(
            [
                f"{name}は{place}にある空港である。",
                f"{year}に開港した。",
                f"空港コードは{code}である。",
                f"{name}には国内線と国際線が就航している。",
            ]
        )
    # CRLF line ends, a BOM, runs of blank lines and one undecodable line, as real dumps have.
    text = "\r\n\r\n\r\n".join("\r\n".join(doc) for doc in docs)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8") + b"\r\n\r\n\xff\xfe broken\r\n")
    return docs


def test_a_text_corpus_is_packed_by_document_once(unidic_dir, tmp_path):
    docs = write_corpus(tmp_path / "texts" / "corpus.txt")
    (tmp_path / "texts" / "README.md").write_text("not a .txt file: not read")
    out = pack_text_corpus(tmp_path / "texts", unidic_dir, tmp_path / "packed", 20,
                           rows_per_part=10, progress=False)  # fmt: skip
    tokenizer = JapaneseTokenizer.from_pretrained(unidic_dir)
    rows = pq.read_table(sorted(out.glob("part-*.parquet"))).to_pylist()
    assert len(sorted(out.glob("part-*.parquet"))) > 1
    assert all(len(r["input_ids"]) <= 20 for r in rows)
    for number, doc in enumerate(docs):  # instances of a document hold exactly its tokens
        expected = [i for sentence in doc for i in tokenizer.encode(sentence).ids]
        got = [i for r in rows if r["source"] == f"corpus.txt:{number}" for i in r["input_ids"]]
        assert got == expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped_lines"] == 1 and manifest["tokens"] == sum(
        len(r["input_ids"]) for r in rows
    )
    stamp = (out / "part-00000.parquet").stat().st_mtime_ns
    pack_text_corpus(tmp_path / "texts", unidic_dir, out, 20, progress=False)
    assert (out / "part-00000.parquet").stat().st_mtime_ns == stamp  # reused, not redone
    pack_text_corpus(tmp_path / "texts", unidic_dir, out, 30, progress=False)
    assert json.loads((out / "manifest.json").read_text())["max_tokens"] == 30  # redone


def test_layout_aware_tiny_recipe_lowers_both_losses_and_exports(
    localized_dir, unidic_dir, tmp_path
):
    out = tmp_path / "run"
    pretrain(tiny(max_steps=40), localized_dir, out, tokenizer=str(unidic_dir), progress=False)
    logged = metrics(out)
    assert logged[-1]["step"] == 40
    assert lowered(logged, "generator_loss") and lowered(logged, "discriminator_loss")
    discriminator = AutoModel.from_pretrained(out / "discriminator")
    assert type(discriminator).__name__ == "LayoutLMModel"
    tokenizer = AutoTokenizer.from_pretrained(out / "discriminator")
    assert type(tokenizer).__name__ == "BertJapaneseTokenizer"
    # Fine-tuning starts from the discriminator's weights.
    classifier = load_classifier(out / "discriminator", ["O", "B-x", "I-x"], False, 0)
    torch.testing.assert_close(
        classifier.layoutlm.embeddings.x_position_embeddings.weight,
        discriminator.embeddings.x_position_embeddings.weight,
    )
    # The discriminator's untrained pooler is not exported; its trained RTD head is.
    saved = load_file(out / "discriminator" / "model.safetensors")
    assert not any("pooler" in name for name in saved)
    assert {"discriminator_predictions.dense.weight",
            "discriminator_predictions.dense_prediction.weight"} <= saved.keys()  # fmt: skip
    # Plain transformers loads both models with their heads (their code travels with them).
    script = (
        "import sys, torch; from transformers import AutoModelForMaskedLM as G, "
        "AutoModelForPreTraining as D; "
        "g = G.from_pretrained(sys.argv[1], trust_remote_code=True); "
        "d = D.from_pretrained(sys.argv[2], trust_remote_code=True); "
        "ids = torch.tensor([[2, 4, 3]]); "
        "print(type(g).__name__, g(ids).logits.shape[-1], type(d).__name__, "
        "tuple(d(ids).logits.shape))"
    )
    result = subprocess.run([sys.executable, "-c", script, str(out / "generator"),
                             str(out / "discriminator")],
                            capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [
        "LayoutElectraGenerator",
        str(len(tokenizer)),
        "LayoutElectraDiscriminator",
        "(1,",
        "3)",
    ]
    # ... and `layoutja fill-mask` renders the text and answers for each [MASK].
    answers = fill_mask(out / "generator", "東京国際空港は[MASK]都大田区にある。", top_k=3)
    assert len(answers) == 1 and len(answers[0]) == 3
    assert all(0 < p <= 1 for _, p in answers[0])
    # Pretraining goes on from the export: both models start where the run ended.
    again = tmp_path / "again"
    first = pretrain(tiny(max_steps=1, log_every=1), localized_dir, again, init=str(out),
                     progress=False)  # fmt: skip
    assert first["discriminator_loss"] < logged[0]["discriminator_loss"]
    assert load_file(again / "generator" / "model.safetensors").keys() == load_file(
        out / "generator" / "model.safetensors").keys()  # fmt: skip


def test_text_only_from_a_text_corpus_exports_electra_models(unidic_dir, tmp_path):
    write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "run"
    config = tiny(max_steps=40, layout="false")
    pretrain(config, tmp_path / "corpus.txt", out, tokenizer=str(unidic_dir), progress=False)
    logged = metrics(out)
    assert lowered(logged, "generator_loss") and lowered(logged, "discriminator_loss")
    generator = AutoModelForMaskedLM.from_pretrained(out / "generator")
    discriminator = AutoModelForPreTraining.from_pretrained(out / "discriminator")
    assert type(generator).__name__ == "ElectraForMaskedLM"
    assert type(discriminator).__name__ == "ElectraForPreTraining"
    assert generator.config.hidden_size * 3 == discriminator.config.hidden_size
    fill = pipeline("fill-mask", model=str(out / "generator"), top_k=5)
    answers = fill("東京大学で[MASK]の研究をしています。")
    assert len(answers) == 5 and all(a["token_str"] for a in answers)
    # The text-only baseline fine-tunes the discriminator.
    classifier = load_classifier(out / "discriminator", ["O", "B-x", "I-x"], True, 0)
    assert type(classifier).__name__ == "ElectraForTokenClassification"


def test_text_only_on_localized_pages_ignores_the_boxes(localized_dir, unidic_dir, tmp_path):
    out = tmp_path / "run"
    config = tiny(max_steps=6, log_every=3, layout="false")
    pretrain(config, localized_dir, out, tokenizer=str(unidic_dir), progress=False)
    assert [m["step"] for m in metrics(out)] == [3, 6]
    discriminator = AutoModelForPreTraining.from_pretrained(out / "discriminator")
    assert discriminator.config.model_type == "electra"


def test_resume_matches_an_uninterrupted_run(localized_dir, unidic_dir, tmp_path):
    config = tiny(max_steps=12, save_every=4, keep_checkpoints=5, log_every=2)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    pretrain(config, localized_dir, whole, tokenizer=str(unidic_dir), progress=False)
    shutil.copytree(whole / "checkpoints" / "step-0000004", cut / "checkpoints" / "step-0000004")
    pretrain(config, localized_dir, cut, tokenizer=str(unidic_dir), resume=True, progress=False)
    for part in ("generator", "discriminator"):
        a = load_file(whole / part / "model.safetensors")
        b = load_file(cut / part / "model.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    for key in ("generator_loss", "discriminator_loss"):
        assert [m[key] for m in metrics(cut)] == pytest.approx(
            [m[key] for m in metrics(whole)][2:], rel=1e-5
        )


def test_resume_warns_when_the_text_changed(unidic_dir, tmp_path, capfd):
    write_corpus(tmp_path / "corpus.txt")
    config = tiny(max_steps=4, save_every=2, log_every=2, layout="false")
    out = tmp_path / "run"
    pretrain(config, tmp_path / "corpus.txt", out, tokenizer=str(unidic_dir), progress=False)
    capfd.readouterr()
    with open(tmp_path / "corpus.txt", "a", encoding="utf-8") as f:
        f.write("\n\n新しい文書である。\n")
    config.schedule.max_steps = 6
    pretrain(config, tmp_path / "corpus.txt", out, tokenizer=str(unidic_dir), resume=True,
             progress=False)  # fmt: skip
    assert "changed since the checkpoint" in capfd.readouterr().err
    assert metrics(out)[-1]["step"] == 6


def test_two_processes_pack_the_text_once_and_train_as_one_job(unidic_dir, tmp_path):
    """Rank 0 packs while rank 1 waits for the manifest; shared embeddings under DDP."""
    write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", "2", "-m", "layoutja", "pretrain",
               "--config", str(TRAIN / "electra-tiny.yaml"), "--electra.layout", "false",
               "--data", str(tmp_path / "corpus.txt"), "--tokenizer", str(unidic_dir),
               "--out", str(out), "--schedule.max_steps", "4",
               "--schedule.per_device_batch_size", "2", "--checkpoint.log_every", "2",
               "--checkpoint.save_every", "2", "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m["step"] for m in metrics(out)] == [2, 4]
    assert len(list((out / "packed").glob("part-*.parquet"))) == 1
    assert (out / "checkpoints" / "step-0000004" / "random_states_1.pkl").exists()
    assert AutoModelForPreTraining.from_pretrained(out / "discriminator").config.model_type == (
        "electra"
    )


def test_a_nan_loss_stops_the_run(localized_dir, unidic_dir, tmp_path):
    config = tiny(max_steps=20, save_every=1, warmup_steps=1, learning_rate=1e30)
    with pytest.raises(TrainingStopped, match="Last good checkpoint"):
        pretrain(config, localized_dir, tmp_path, tokenizer=str(unidic_dir), progress=False)


def test_electra_settings_errors_are_clear(localized_dir, unidic_dir, tmp_path):
    write_corpus(tmp_path / "corpus.txt", documents=2)
    with pytest.raises(UserError, match="plain text has no boxes"):
        pretrain(tiny(), tmp_path / "corpus.txt", tmp_path / "a", tokenizer=str(unidic_dir))
    with pytest.raises(UserError, match="give --tokenizer"):
        pretrain(tiny(layout="false"), tmp_path / "corpus.txt", tmp_path / "b")
    with pytest.raises(UserError, match="not an ELECTRA export"):
        pretrain(tiny(), localized_dir, tmp_path / "c", init=str(unidic_dir))
    with pytest.raises(UserError, match="no such file"):
        pretrain(tiny(), tmp_path / "missing", tmp_path / "d", tokenizer=str(unidic_dir))
    with pytest.raises(UserError, match="no localized Parquet parts"):
        (tmp_path / "empty").mkdir()
        pretrain(tiny(), tmp_path / "empty", tmp_path / "e", tokenizer=str(unidic_dir))
    # A partial model section takes the rest from ELECTRA base, for both models alike.
    partial = new_electra(300, {"num_hidden_layers": 1}, layout=False)
    assert [m.config.hidden_size for m in partial.exports().values()] == [256, 768]
    with pytest.raises(UserError, match="not divisible by generator_factor"):
        new_electra(300, {**ARCHITECTURE, "hidden_size": 50}, layout=True)
    with pytest.raises(UserError, match="electra.layout: expected bool"):
        tiny(layout="sometimes")
