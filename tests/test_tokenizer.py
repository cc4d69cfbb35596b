"""JapaneseTokenizer against transformers' BertJapaneseTokenizer, and its offsets."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import BertJapaneseTokenizer

from layoutja.common import UserError
from layoutja.text.tokenizer import JapaneseTokenizer

from .conftest import DATA, file_texts, real_lines

HARD_CASES = [
    "",  # empty input
    "ＡＢＣ　ｘｙｚ　０１２３４５６７８９！＃＄％",  # full-width ASCII and digits
    "ﾊﾟｿｺﾝでｶﾞｲﾄﾞを読む",  # half-width katakana with voicing marks
    "㈱東京商事と㍻元年と①②③",  # NFKC longer than the source
    "か\u3099き\u3099く\u3099",  # combining voiced sound marks
    "ﾞﾟ゛゜ｰ",  # lone (half-width) voicing marks
    "ｵﾞｲﾟｴﾞﾝと ｱﾟ",  # voicing marks NFKC cannot attach (オ + U+3099): two characters each
    "e\u0316\u0301 \u1100\u1161\u11a8 \uac00\u11a8",  # reordering; Hangul L+V+T composition
    "絵文字😀と旗🇯🇵と𠮷野家と👨‍👩‍👧",  # emoji, ZWJ sequences, non-BMP kanji
    "東京大学で[MASK]の研究を[UNK]しています[CLS][SEP][PAD]",  # special tokens in text
    "［ＭＡＳＫ］は特殊トークンではない",  # full-width brackets are not a special token
    "a" * 150,  # longer than WordPiece's 100-character limit
    "東" * 120 + "京",
    "x" * 99 + " " + "y" * 101,
    "   \t\t  語と語の間の空白   \u3000\u3000 ",  # whitespace runs
    "一行目\r\n二行目\r\n\r\n",  # CRLF
    "前\x00後ろは消える",  # NUL ends MeCab's text
    "制御\x01文字\x1c区切り\x85と\u2028改行\x7f",  # control characters
    "İstanbul ΣΑΣ straße ǅ",  # case mappings that change length or differ by context
    "東京\ufeff大学\u200bです",  # BOM and zero-width space inside text
    "\U000e0001タグ\ufe0f異体字\U000e0100",  # tags and variation selectors
]


@pytest.fixture(scope="module")
def pair(tokenizer_dir):
    return (
        BertJapaneseTokenizer.from_pretrained(tokenizer_dir),
        JapaneseTokenizer.from_pretrained(tokenizer_dir),
    )


def check_offsets(tok: JapaneseTokenizer, text: str) -> None:
    """Every token's span is in range and tells where the token came from.

    Tokens that share source characters (㈱ → "(", "株", ")") are checked as a group: the NFKC
    form of their common source slice is their concatenation. [UNK] covers its characters.
    """
    enc = tok.encode(text)
    lower = tok.config.do_lower_case
    groups: list[list] = []  # [start, end, [tokens]]
    for token, (start, end) in zip(enc.tokens, enc.offsets, strict=True):
        assert 0 <= start <= end <= len(text)
        if groups and start < groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], end)
            groups[-1][2].append(token)
        else:
            groups.append([start, end, [token]])
    nfkc = (lambda s: unicodedata.normalize("NFKC", s).lower()) if lower else _nfkc
    for token, (start, end) in zip(enc.tokens, enc.offsets):
        # A span is the smallest that holds the token: ｵﾞ is オ + U+3099, each from its own
        # character, so オ must not span both.
        piece = token.removeprefix("##")
        if token != tok.unk_token and end - start > 1:
            narrower = [(a, b) for a in range(start, end) for b in range(a + 1, end + 1)
                        if (a, b) != (start, end) and nfkc(text[a:b]) == piece]  # fmt: skip
            assert not narrower, (text, token, (start, end), narrower)
    for start, end, tokens in groups:
        source = text[start:end]
        if tok.unk_token in tokens:
            # [UNK] covers characters (or is "[UNK]" written in the text); inside a shared
            # group there is nothing exact to compare.
            assert source.strip(), (text, source)
            continue
        if len(tokens) == 1 and tokens[0] in tok.config.never_split:
            assert source == tokens[0]  # a special token written in the text
            continue
        assert "".join(t.removeprefix("##") for t in tokens) == nfkc(source), (text, tokens)


def _nfkc(s: str) -> str:
    return unicodedata.normalize("NFKC", s)


def test_same_tokens_on_real_text(pair):
    reference, ours = pair
    lines = real_lines()
    assert len(lines) > 10  # the repository sample alone; far more with ../shared
    for line in lines:
        assert ours.encode(line).tokens == reference.tokenize(line), line


@pytest.mark.parametrize("text", HARD_CASES, ids=range(len(HARD_CASES)))
def test_same_tokens_on_hard_cases(pair, text):
    reference, ours = pair
    enc = ours.encode(text)
    assert enc.tokens == reference.tokenize(text)
    assert enc.ids == reference.convert_tokens_to_ids(enc.tokens)
    check_offsets(ours, text)


def test_offsets_on_real_text(pair):
    _, ours = pair
    for line in real_lines():
        check_offsets(ours, line)


def test_offsets_point_into_the_source(unidic_dir):
    tok = JapaneseTokenizer.from_pretrained(unidic_dir)
    text = "ﾊﾟｿｺﾝ　㈱と\u3000か\u3099"
    enc = tok.encode(text)
    # ﾊﾟｿｺﾝ (5 characters, NFKC パソコン): its tokens tile exactly those characters.
    word = [(s, e) for s, e in enc.offsets if e <= 5]
    assert word[0][0] == 0 and word[-1][1] == 5
    assert all(a[1] == b[0] for a, b in zip(word, word[1:]))
    # ㈱ is NFKC (株): every token made from it points at that one character.
    assert [tok for tok, (s, e) in zip(enc.tokens, enc.offsets) if (s, e) == (6, 7)] == [
        "(",
        "[UNK]" if "株" not in tok.vocab else "株",
        ")",
    ]
    # か + U+3099 is NFKC が: one token spanning both source characters.
    assert enc.tokens[-1] == "が" and enc.offsets[-1] == (9, 11)


# Text drawn from Japanese scripts plus the characters that make offsets hard.
_TRICKY = "　 \t\r\n\x00\x01\x1c\x85\u2028㈱①㍻ﾊﾟｶﾞﾞﾟｵﾞｲﾟﾜﾞｦﾞ\u3099\u309aＡａ０!?[]İΣ\u0301\u0316😀𠮷"
_ALPHABET = st.one_of(
    st.characters(min_codepoint=0x3041, max_codepoint=0x30FF),
    st.characters(min_codepoint=0x4E00, max_codepoint=0x4FFF),
    st.characters(min_codepoint=0xFF01, max_codepoint=0xFF9F),
    st.sampled_from(_TRICKY),
    st.characters(codec="utf-8"),
)
_TEXT = st.lists(
    st.one_of(st.text(_ALPHABET, max_size=12), st.sampled_from(["[MASK]", "[SEP]", "東京"])),
    max_size=8,
).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXT)
def test_same_tokens_and_exact_offsets_on_generated_text(pair, text):
    reference, ours = pair
    assert ours.encode(text).tokens == reference.tokenize(text)
    check_offsets(ours, text)


def test_batch_on_two_processes_matches_one(unidic_dir):
    tok = JapaneseTokenizer.from_pretrained(unidic_dir)
    texts = real_lines()[:600] + HARD_CASES
    single = list(tok.encode_batch(texts, workers=1))
    multi = list(tok.encode_batch(texts, workers=2, chunk_size=32))
    assert multi == single


def test_node_cache_is_bounded_and_changes_no_token(unidic_dir):
    unbounded = JapaneseTokenizer.from_pretrained(unidic_dir)
    small = JapaneseTokenizer(unbounded.vocab, unbounded.config, cache_nodes=40)
    sizes = []
    for text in file_texts(DATA / "sample_ja.txt") + HARD_CASES:  # the same with ../shared or not
        assert small.encode(text) == unbounded.encode(text), text
        sizes.append(len(small._cache))
    # Far more distinct nodes than it may keep: it filled up and started again, more than once.
    assert len(unbounded._cache) > 120 and max(sizes) <= 40
    assert sum(after < before for before, after in zip(sizes, sizes[1:])) >= 2


def test_ids_are_vocabulary_ids(unidic_dir):
    tok = JapaneseTokenizer.from_pretrained(unidic_dir)
    vocab = (unidic_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    enc = tok.encode("羽田空港は東京にある。[MASK]")
    assert [vocab[i] for i in enc.ids] == enc.tokens


def _copy(src, dst, **changes):
    dst.mkdir()
    (dst / "vocab.txt").write_bytes((src / "vocab.txt").read_bytes())
    config = json.loads((src / "tokenizer_config.json").read_text())
    config.update(changes)
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


def test_unnormalized_config_keeps_text_as_is(unidic_dir, tmp_path):
    mecab = {"mecab_dic": "unidic_lite", "normalize_text": False}
    d = _copy(unidic_dir, tmp_path / "raw", mecab_kwargs=mecab)
    reference = BertJapaneseTokenizer.from_pretrained(d)
    ours = JapaneseTokenizer.from_pretrained(d)
    for text in HARD_CASES + ["Ω\u2126記号"]:
        assert ours.tokenize(text) == reference.tokenize(text)


def _empty_dir(d, src):
    d.mkdir()
    return d


def _bad_json(d, src):
    _copy(src, d)
    (d / "tokenizer_config.json").write_text("{oops")
    return d


def _no_vocab(d, src):
    _copy(src, d)
    (d / "vocab.txt").unlink()
    return d


def _binary_vocab(d, src):
    _copy(src, d)
    (d / "vocab.txt").write_bytes(b"\xff\xfe")
    return d


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d, src: d, "no such tokenizer directory"),
        (_empty_dir, "missing tokenizer_config.json"),
        (_bad_json, "malformed tokenizer config"),
        (lambda d, src: _copy(src, d, word_tokenizer_type="basic"), "not a MeCab \\+ WordPiece"),
        (lambda d, src: _copy(src, d, mecab_kwargs={"mecab_dic": "jumandic"}), "'jumandic'"),
        (_no_vocab, "missing vocab.txt"),
        (_binary_vocab, "cannot read vocabulary"),
    ],
    ids=["missing", "no-config", "bad-json", "not-mecab", "bad-dic", "no-vocab", "bad-vocab"],
)
def test_bad_tokenizer_directory_is_a_clear_error(unidic_dir, tmp_path, setup, message):
    d = setup(tmp_path / "tok", unidic_dir)
    with pytest.raises(UserError, match=message) as error:
        JapaneseTokenizer.from_pretrained(d)
    assert str(tmp_path / "tok") in str(error.value)


def test_hub_name_without_a_hub_is_a_clear_error(monkeypatch, tmp_path):
    from huggingface_hub import constants

    # offline, with an empty cache: as a process started with HF_HUB_OFFLINE=1 and a new HF_HOME
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="not in the Hugging Face cache .*HF_HUB_OFFLINE is set"):
        JapaneseTokenizer.from_pretrained("cl-tohoku/bert-base-japanese-v2")
