"""The `layoutja` command: output formats, exit codes and error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import BertJapaneseTokenizer

from .conftest import DATA


def layoutja(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "layoutja", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=300,
    )


def test_tokenize_prints_one_json_object_per_line(unidic_dir, tmp_path):
    lines = ["東京国際空港は大田区にある。", "", "ＩＡＴＡコードは[MASK]です。\r"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = layoutja("tokenize", "--tokenizer", unidic_dir, src, "--workers", "1")
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(x) for x in result.stdout.decode().splitlines()]
    assert len(records) == len(lines)
    reference = BertJapaneseTokenizer.from_pretrained(unidic_dir)
    for line, record in zip(lines, records, strict=True):
        assert set(record) == {"tokens", "ids", "offsets"}
        assert record["tokens"] == reference.tokenize(line)
        assert record["ids"] == reference.convert_tokens_to_ids(record["tokens"])
        for token, (start, end) in zip(record["tokens"], record["offsets"], strict=True):
            if token != "[UNK]":
                assert line[start:end]  # points at real characters of the input line
    assert records[1] == {"tokens": [], "ids": [], "offsets": []}


def test_tokenize_reads_stdin_and_workers_do_not_change_output(unidic_dir):
    text = (DATA / "sample_ja.txt").read_bytes()
    one = layoutja("tokenize", "--tokenizer", unidic_dir, "--workers", "1", stdin=text)
    two = layoutja("tokenize", "--tokenizer", unidic_dir, "--workers", "2", stdin=text)
    assert one.returncode == two.returncode == 0
    assert one.stdout == two.stdout
    assert len(one.stdout.splitlines()) == len(text.splitlines())


def test_vocab_command_writes_a_tokenizer(tmp_path):
    out = tmp_path / "tok"
    result = layoutja(
        "vocab",
        DATA / "sample_ja.txt",
        "--out",
        out,
        "--vocab-size",
        "300",
        "--alphabet",
        "corpus",
        "--dic",
        "ipadic",
    )
    assert result.returncode == 0, result.stderr.decode()
    assert "wrote" in result.stderr.decode()
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["mecab_kwargs"] == {"mecab_dic": "ipadic"}


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda tmp, tok: ["tokenize", "--tokenizer", tmp / "nope"], "no such tokenizer directory"),
        (lambda tmp, tok: ["tokenize", "--tokenizer", tok, tmp / "missing.txt"], "cannot read"),
        (
            lambda tmp, tok: ["tokenize", "--tokenizer", tok, tmp / "latin1.txt"],
            "latin1.txt: line 2: not UTF-8",
        ),
        (lambda tmp, tok: ["vocab", tmp / "absent", "--out", tmp / "o"], "absent: no such file"),
        (lambda tmp, tok: ["vocab", tmp / "latin1.txt", "--out", tmp / "o"], "no readable input"),
    ],
    ids=["no-tokenizer", "no-input", "not-utf8", "no-vocab-input", "unreadable-vocab-input"],
)
def test_user_errors_are_one_line_without_traceback(unidic_dir, tmp_path, make_args, message):
    (tmp_path / "latin1.txt").write_bytes("最初の行\n".encode() + "café".encode("latin-1"))
    result = layoutja(*make_args(tmp_path, unidic_dir))
    err = result.stderr.decode()
    assert result.returncode == 1
    assert message in err
    assert "Traceback" not in err


def test_unknown_dictionary_is_refused_by_the_parser(tmp_path):
    result = layoutja("vocab", DATA / "sample_ja.txt", "--out", tmp_path, "--dic", "jumandic")
    assert result.returncode == 2
    assert "invalid choice: 'jumandic'" in result.stderr.decode()


def test_help_lists_the_commands():
    result = layoutja("--help")
    assert result.returncode == 0
    assert "tokenize" in result.stdout.decode() and "vocab" in result.stdout.decode()


def test_localize_one_page_prints_a_record_and_show_draws_it(unidic_dir, tmp_path):
    page = tmp_path / "page.html"
    page.write_text("<html><body><h1>東京</h1><p>大阪の空港</p></body></html>", encoding="utf-8")
    result = layoutja("localize", page, "--tokenizer", unidic_dir)
    assert result.returncode == 0, result.stderr.decode()
    record = json.loads(result.stdout)
    assert record["page_id"] == "page" and record["tokens"][0] == "東京"
    assert len(record["bbox"]) == len(record["tokens"])
    png = tmp_path / "page.png"
    result = layoutja("show", page, "--tokenizer", unidic_dir, "--out", png)
    assert result.returncode == 0, result.stderr.decode()
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(header[16:20], "big") == 1280  # the full layout width


def test_localize_errors_are_clear(unidic_dir, tmp_path):
    result = layoutja("localize", tmp_path / "nothing", "--tokenizer", unidic_dir, "--out", "o")
    assert result.returncode == 1
    assert "nothing: no such file or directory" in result.stderr.decode()
    (tmp_path / "a.html").write_text("<p>x</p>")
    result = layoutja("localize", tmp_path, "--tokenizer", unidic_dir)
    assert "--out is required" in result.stderr.decode()
    result = layoutja(
        "localize", tmp_path, "--tokenizer", unidic_dir, "--out", "o", "--shard", "3/2"
    )
    assert "--shard '3/2'" in result.stderr.decode()


def test_init_model_and_pretrain_commands(unidic_dir, localized_dir, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from layoutja.common import TOKENIZER_FILES
    from layoutja.text.tokenizer import load_vocab

    bert = tmp_path / "bert"
    size = len(load_vocab(unidic_dir / "vocab.txt"))
    config = BertConfig(vocab_size=size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertForMaskedLM(config).save_pretrained(bert)
    for name in TOKENIZER_FILES:
        (bert / name).write_bytes((unidic_dir / name).read_bytes())
    result = layoutja("init-model", "--from", bert, "--out", tmp_path / "lm")
    assert result.returncode == 0, result.stderr.decode()
    assert "x_position_embeddings" in result.stderr.decode()  # reported as new
    out = tmp_path / "run"
    recipe = Path(__file__).resolve().parents[1] / "train" / "mvlm-tiny.yaml"
    args = ["pretrain", "--config", recipe, "--data", localized_dir,
            "--init", tmp_path / "lm", "--out", out, "--schedule.max_steps", "6",
            "--checkpoint.log_every=3",
            "--optimizer.learning_rate", "2e-3", "--quiet"]  # fmt: skip
    result = layoutja(*args)
    assert result.returncode == 0, result.stderr.decode()
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [3, 6]
    assert metrics[0]["learning_rate"] == pytest.approx(2e-3 * 3 / 10)  # step 3 of 10 warmup
    result = layoutja(*args[:-1], "--bogus", "1")
    assert (
        result.returncode == 1
        and "unknown setting 'bogus'; valid: objective, model.*, optimizer.learning_rate"
        in result.stderr.decode()
    )


def test_pretrain_and_finetune_help_show_exactly_the_settings_each_reads():
    pretrain = layoutja("pretrain", "--help").stdout.decode()
    finetune = layoutja("finetune", "--help").stdout.decode()
    for shown in ("--model.KEY VALUE", "--objective", "--electra.layout",
                  "--data.mask_probability", "--data.shuffle_parts", "--checkpoint.eval_every",
                  "--schedule.max_steps"):  # fmt: skip
        assert shown in pretrain, shown
    for hidden in ("--finetune.", "--schedule.epochs"):
        assert hidden not in pretrain, hidden
    for shown in ("--finetune.dev_fraction", "--finetune.text_only", "--schedule.epochs",
                  "--data.max_length", "--optimizer.learning_rate"):  # fmt: skip
        assert shown in finetune, shown
    for hidden in ("--objective", "--electra.", "--data.mask_probability", "--model.",
                   "--data.eval_pages", "--checkpoint.eval_every", "mvlm-base"):  # fmt: skip
        assert hidden not in finetune, hidden
    assert "train/finetune-shinra.yaml" in finetune
    # A setting of the other command is refused by name, before anything runs.
    result = layoutja("pretrain", "--data", "d", "--out", "o", "--finetune.dev_fraction", "0.2")
    assert result.returncode == 1
    assert "--finetune.dev_fraction is a setting of `layoutja finetune`" in result.stderr.decode()
    result = layoutja("finetune", "--config", "train/finetune-tiny.yaml", "--data", "d",
                      "--model", "m", "--localized", "l", "--out", "o",
                      "--model.hidden_size", "8")  # fmt: skip
    assert result.returncode == 1
    assert "fine-tuning takes the architecture of --model" in result.stderr.decode()
    result = layoutja("finetune", "--data", "d", "--model", "m", "--localized", "l", "--out", "o")
    assert result.returncode == 2 and "--config" in result.stderr.decode()
    # A typo lists the command's own settings as the valid ones; a stray word is named as it is.
    finetune = ["finetune", "--config", "train/finetune-tiny.yaml", "--data", "d", "--model", "m",
                "--localized", "l", "--out", "o"]  # fmt: skip
    err = layoutja(*finetune, "--data.bogus", "1").stderr.decode()
    assert "unknown setting 'data.bogus'" in err and "finetune.dev_fraction" in err
    assert "data.mask_probability" not in err and "electra." not in err and "model.*" not in err
    err = layoutja(*finetune, "--objective", "mvlm").stderr.decode()
    assert "--objective is a setting of `layoutja pretrain`" in err
    err = layoutja("pretrain", "--data", "d", "--out", "o", "100").stderr.decode()
    assert "unrecognized argument '100'" in err


def test_model_commands_print_no_transformers_bars_or_expected_load_reports(unidic_dir, tmp_path):
    from transformers import BertForPreTraining, ElectraConfig, ElectraForPreTraining

    from layoutja.common import copy_tokenizer
    from layoutja.text.tokenizer import load_vocab

    from .conftest import tiny_bert

    # A BERT as published: its pooler and next-sentence head have no place in a masked LM or a
    # LayoutLM, which transformers would report at length.
    bert = tiny_bert(BertForPreTraining, unidic_dir, tmp_path / "bert")
    runs = [layoutja("init-model", "--from", bert, "--out", tmp_path / "lm"),
            layoutja("fill-mask", "--model", bert, "東京は[MASK]の首都である。")]  # fmt: skip
    for result in runs:
        err = result.stderr.decode()
        assert result.returncode == 0, err
        for noise in ("Loading weights", "Writing model shards", "LOAD REPORT", "UNEXPECTED"):
            assert noise not in err, err
    # A discriminator has no masked-LM head: refused, not answered with random weights.
    size = len(load_vocab(unidic_dir / "vocab.txt"))
    config = ElectraConfig(vocab_size=size, embedding_size=16, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32)  # fmt: skip
    ElectraForPreTraining(config).save_pretrained(tmp_path / "disc")
    copy_tokenizer(unidic_dir, tmp_path / "disc")
    result = layoutja("fill-mask", "--model", tmp_path / "disc", "東京は[MASK]の首都である。")
    assert result.returncode == 1 and "not a masked LM" in result.stderr.decode()
    assert "LOAD REPORT" not in result.stderr.decode()
