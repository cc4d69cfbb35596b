"""NFKC with offsets: the normalized text is exact and every span maps back to its source."""

from __future__ import annotations

import re
import sys
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from layoutja.text.normalize import SAFE_CHARS, nfkc_with_offsets


def test_safe_characters_never_interact_with_their_neighbours():
    """The three properties SAFE_CHARS promises, checked on every code point."""
    safe = re.compile(f"[{SAFE_CHARS}]")
    members = [chr(c) for c in range(sys.maxunicode + 1) if safe.match(chr(c))]
    assert len(members) > 20000
    for c in members:
        assert unicodedata.normalize("NFKC", c) == c
        assert unicodedata.combining(c) == 0
    # Never the second half of a canonical pair composition.
    second_halves = set()
    for code in range(sys.maxunicode + 1):
        decomposition = unicodedata.decomposition(chr(code))
        if decomposition and not decomposition.startswith("<"):
            parts = decomposition.split()
            if len(parts) == 2:
                second_halves.add(chr(int(parts[1], 16)))
    assert not second_halves & set(members)


def _source_of(text: str, norm_start: int, norm_end: int) -> str:
    norm, offset_map = nfkc_with_offsets(text)
    if offset_map is None:
        return text[norm_start:norm_end]
    start = offset_map.starts([norm_start])[0]
    end = offset_map.ends([norm_end])[0]
    return text[start:end]


def test_examples():
    assert nfkc_with_offsets("東京") == ("東京", None)
    norm, offset_map = nfkc_with_offsets("ＡＢ")  # 1:1 changes need no map
    assert (norm, offset_map) == ("AB", None)
    text = "前㈱後"
    norm, offset_map = nfkc_with_offsets(text)
    assert norm == "前(株)後"
    assert [_source_of(text, i, i + 1) for i in range(len(norm))] == ["前", "㈱", "㈱", "㈱", "後"]
    text = "ﾊﾟｿｺﾝ"
    norm, _ = nfkc_with_offsets(text)
    assert norm == "パソコン"
    assert _source_of(text, 0, 1) == "ﾊﾟ" and _source_of(text, 1, 4) == "ｿｺﾝ"
    text = "か\u3099\u1100\u1161\u11a8x"  # が, then Hangul L+V+T → one syllable
    norm, _ = nfkc_with_offsets(text)
    assert norm == "が\uac01x"
    assert [_source_of(text, i, i + 1) for i in range(3)] == [
        "か\u3099",
        "\u1100\u1161\u11a8",
        "x",
    ]


_CHARS = st.one_of(
    st.sampled_from("あア亜Ａａ１ﾊﾟｶﾞﾞﾟｵﾞｲﾟ\u3099\u309a㈱①㍻ ﾞ\u0301\u0316\u0345e\u1100\u1161\u11a8가"),
    st.characters(codec="utf-8"),
)


@settings(max_examples=400, deadline=None)
@given(st.text(_CHARS, max_size=20))
def test_normalized_text_is_nfkc_and_spans_cover_their_source(text):
    norm, offset_map = nfkc_with_offsets(text)
    assert norm == unicodedata.normalize("NFKC", text)
    if offset_map is None:
        assert len(norm) == len(text)
        return
    starts = offset_map.starts(list(range(len(norm))))
    ends = offset_map.ends(list(range(1, len(norm) + 1)))
    # Monotone, in range, and every source character is covered by some normalized one.
    assert starts == sorted(starts) and ends == sorted(ends)
    assert all(0 <= s < e <= len(text) for s, e in zip(starts, ends))
    covered = set()
    for s, e in zip(starts, ends):
        covered.update(range(s, e))
    assert covered == set(range(len(text)))
    # Grouping the normalized characters by shared source gives NFKC of that source.
    groups: dict[tuple[int, int], str] = {}
    for i, span in enumerate(zip(starts, ends)):
        groups[span] = groups.get(span, "") + norm[i]
    for (s, e), piece in groups.items():
        assert unicodedata.normalize("NFKC", text[s:e]) == piece
