"""Vocabulary training: cl-tohoku layout, offline AutoTokenizer loading, coverage, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from layoutja.common import Progress, UserError, human_bytes
from layoutja.localize.page import wrap_tokens
from layoutja.text.htmlpage import decode_html, parse_html
from layoutja.text.pagetext import file_texts
from layoutja.text.tokenizer import JapaneseTokenizer
from layoutja.text.vocab import VocabConfig, jis_alphabet, train_vocab

from .conftest import DATA, SHINRA, shinra_files

DEMO_PAGE = Path(__file__).parents[1] / "demo" / "shinra" / "html" / "1.6.5.3" / "100001.html"

HEAD = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"[unused{i}]" for i in range(10)]


def read_vocab(d) -> list[str]:
    return (d / "vocab.txt").read_text(encoding="utf-8").splitlines()


def test_progress_lines_give_sizes_for_people(capsys):
    assert [human_bytes(n) for n in (0, 512, 1536, 5 * 2**20, 3 * 2**30)] == [
        "0 B", "512 B", "1.5 KiB", "5.0 MiB", "3.0 GiB"
    ]  # fmt: skip
    with Progress(3000, "B", "MeCab", interval=0, scale=True) as bar:  # a small input
        bar.update(1500)
    assert capsys.readouterr().err.startswith("MeCab: 1.5 KiB/2.9 KiB, ")


@pytest.mark.parametrize("fixture, dic", [("unidic_dir", "unidic_lite"), ("ipadic_dir", "ipadic")])
def test_directory_loads_offline_with_auto_tokenizer(request, fixture, dic, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = request.getfixturevalue(fixture)
    vocab = read_vocab(d)
    assert vocab[: len(HEAD)] == HEAD
    assert len(set(vocab)) == len(vocab)
    # Exactly the size asked for when the corpus has enough merges (the SHINRA pages do).
    assert len(vocab) == 3000 if shinra_files() else len(vocab) <= 3000
    tok = AutoTokenizer.from_pretrained(d)
    assert type(tok).__name__ == "BertJapaneseTokenizer"
    assert tok.mecab_kwargs == {"mecab_dic": dic}
    assert tok.word_tokenizer_type == "mecab" and not tok.do_lower_case
    ids = tok("東京国際空港")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3  # [CLS] ... [SEP] at cl-tohoku's ids
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[MASK]"]) == [0, 1, 4]


def test_jis_alphabet_keeps_common_kanji_and_kana_known(tmp_path):
    out = tmp_path / "tok"
    train_vocab([DATA / "sample_ja.txt"], out, VocabConfig(vocab_size=8000))
    vocab = set(read_vocab(out))
    assert len(vocab) <= 8000  # a one-page corpus runs out of merges before 8000
    alphabet = jis_alphabet()
    assert {"あ", "ア", "ン", "亜", "腕", "湾", "A", "z", "0"} <= set(alphabet)
    assert all(c in vocab and "##" + c in vocab for c in alphabet)
    # Characters the corpus never shows still tokenize, word-initially and inside words.
    tok = JapaneseTokenizer.from_pretrained(out)
    for text in ["鯨が湾を泳ぐ", "亜鉛と硫黄", "ぬいぐるみ", "ヴィヴァルディ"]:
        assert "[UNK]" not in tok.tokenize(text), text


def test_small_vocabulary_never_exceeds_the_requested_size(tmp_path):
    out = tmp_path / "tok"
    summary = train_vocab(
        [DATA / "sample_ja.txt"], out, VocabConfig(vocab_size=300, alphabet="corpus")
    )
    vocab = read_vocab(out)
    assert len(vocab) == summary["vocab_size"] <= 300
    assert vocab[: len(HEAD)] == HEAD


def test_html_inputs_contribute_their_visible_text_only(tmp_path):
    page = tmp_path / "page.html"
    visible = "見える単語見える単語見える単語 " * 30
    hidden = "隠れた単語隠れた単語 " * 30
    page.write_text(
        f"<html><head><title>題</title><style>.x{{}}</style></head><body><p>{visible}</p>"
        f"<script>var s = '{hidden}';</script></body></html>",
        encoding="utf-8",
    )
    out = tmp_path / "tok"
    train_vocab([tmp_path], out, VocabConfig(vocab_size=200, alphabet="corpus"))
    vocab = read_vocab(out)
    assert "見える" in vocab
    assert not {"隠れ", "隠", "##れ"} & set(vocab)


class _Recorder:
    """A tokenizer stand-in that records the texts the localizer tokenizes."""

    def __init__(self, tok: JapaneseTokenizer):
        self.tok, self.texts = tok, []

    def encode(self, text: str):
        self.texts.append(text)
        return self.tok.encode(text)


def localizer_texts(path: Path, tok: JapaneseTokenizer) -> list[str]:
    recorder = _Recorder(tok)
    wrap_tokens(parse_html(*decode_html(path.read_bytes())), recorder)
    return recorder.texts


def test_vocabulary_text_is_the_localizers_block_text(tmp_path, unidic_dir):
    tok = JapaneseTokenizer.from_pretrained(unidic_dir)
    small = tmp_path / "small.html"
    small.write_text("<p>本文</p><noscript>無効</noscript><textarea>入力</textarea>", "utf-8")
    assert file_texts(small) == localizer_texts(small, tok) == ["本文"]
    pages = [DEMO_PAGE, *sorted(SHINRA.glob("Airport_HTML/*.html"))[:3]]
    for page in pages:
        texts = file_texts(page)
        assert len(texts) > 20 and texts == localizer_texts(page, tok), page
    # Non-UTF-8 HTML is decoded as the browser decodes it, not skipped.
    sjis = tmp_path / "sjis.html"
    sjis.write_bytes('<meta charset="shift_jis"><p>東京の空港</p>'.encode("cp932"))
    assert file_texts(sjis) == localizer_texts(sjis, tok) == ["東京の空港"]


def test_broken_files_are_skipped_and_reported(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("東京の空港について書かれた文章です。\n" * 20, encoding="utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_bytes("途中まで".encode() + b"\xff\xfe broken")
    summary = train_vocab(
        [good, bad], tmp_path / "tok", VocabConfig(vocab_size=150, alphabet="corpus")
    )
    assert summary["files"] == 2
    assert len(summary["skipped"]) == 1 and str(bad) in summary["skipped"][0]
    assert "not UTF-8" in summary["skipped"][0]
    assert (tmp_path / "tok" / "vocab.txt").is_file()


@pytest.mark.parametrize(
    "inputs, config, message",
    [
        (["missing.txt"], VocabConfig(), "missing.txt: no such file or directory"),
        ([DATA / "sample_ja.txt"], VocabConfig(dic="juman"), "unknown MeCab dictionary 'juman'"),
        ([DATA / "sample_ja.txt"], VocabConfig(vocab_size=1000), "too small for the 'jis'"),
    ],
    ids=["missing-input", "unknown-dic", "too-small"],
)
def test_bad_requests_are_clear_errors(tmp_path, inputs, config, message):
    with pytest.raises(UserError, match=message):
        train_vocab(
            [tmp_path / p if isinstance(p, str) else p for p in inputs], tmp_path / "out", config
        )


def test_only_unreadable_input_is_an_error(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xff\xff")
    with pytest.raises(UserError, match="no readable input"):
        train_vocab([bad], tmp_path / "out", VocabConfig(alphabet="corpus"))
