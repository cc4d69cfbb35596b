"""The HTML scanner: which text is page text, how it flows, and where each character came from."""

from __future__ import annotations

import html
import random
from itertools import accumulate

import pytest

from layoutja.text.htmlpage import decode_html, line_starts, parse_html

from .conftest import SHINRA, SHINRA_MISSING


def texts(source: str) -> list[str]:
    return ["".join(b.text) for b in parse_html(source).blocks]


def test_inline_markup_continues_a_word_and_blocks_break_it():
    assert texts("<p>東<b>京</b>都<a href=x>庁</a></p><p>大阪</p>") == ["東京都庁", "大阪"]
    assert texts("<div>a<br>b<img src=x>c</div>") == ["a", "b", "c"]
    assert texts("a<!-- a comment -->b") == ["ab"]  # a comment does not break a word


def test_text_that_is_not_page_text_is_skipped():
    source = (
        "<html><head><title>題名</title><style>p{color:red}</style></head><body>"
        "<script>var s = '</p><p>偽';</script><noscript><p>無</p></noscript>"
        "<template><p>型</p><template>入</template>後</template><textarea>入力<b>欄</b></textarea>"
        "<svg><text>図</text></svg><select><option>選</option></select>本文</body></html>"
    )
    assert texts(source) == ["本文"]


def test_ruby_annotation_is_its_own_segment():
    assert texts("<p><ruby>漢字<rp>(</rp><rt>かんじ</rt><rp>)</rp></ruby>を読む</p>") == [
        "漢字",
        "(",
        "かんじ",
        ")",
        "を読む",
    ]


def test_entities_map_to_their_whole_reference():
    source = "<p>A&amp;B &#x6771;&#20140; &copy &nbsp;x</p>"
    page = parse_html(source)
    (block,) = page.blocks
    assert "".join(block.text) == "A&B 東京 © \xa0x"
    for char, start, end in zip(block.text, block.starts, block.ends, strict=True):
        assert html.unescape(source[start:end]) == char


def test_positions_are_lines_and_columns_with_any_newline():
    source = "<p>\r\n東京</p>\r<p>大阪\n</p>\r\nX\u2028<p>名古屋</p>"
    page = parse_html(source)
    lines = source.splitlines()  # as the official SHINRA checker counts lines
    for block in page.blocks:
        for char, start in zip(block.text, block.starts, strict=True):
            line, col = page.line_col(start)
            if not char.isspace():
                assert lines[line][col] == char
    assert page.span(source.index("東"), source.index("京") + 1) == (1, 0, 1, 2)


def test_every_character_of_real_pages_points_at_its_source():
    pages = sorted(SHINRA.glob("Airport_HTML/*.html"))
    if not pages:
        pytest.skip(SHINRA_MISSING)
    for path in pages:
        source = path.read_text(encoding="utf-8")
        page = parse_html(source)
        assert page.blocks, path
        for block in page.blocks:
            for char, start, end in zip(block.text, block.starts, block.ends, strict=True):
                assert char in html.unescape(source[start:end]), (path, start)
        visible = "".join("".join(b.text) for b in page.blocks)
        assert "wgCanonicalNamespace" not in visible  # the page's scripts are not text


def test_raw_text_elements_hide_markup_until_their_own_end_tag():
    assert texts('<script>if (a<b) document.write("<p>x</p>")</script><p>y</p>') == ["y"]
    assert texts("<title>a</b>c</title>本文") == ["本文"]
    assert texts("<p>前<script>never closed <p>z") == ["前"]


def test_meta_refresh_is_removed_everywhere_even_in_noscript():
    source = (
        '<meta http-equiv="refresh" content="0;url=http://example.com/">'
        "<noscript><meta http-equiv=Refresh content=1></noscript><meta charset=utf-8>"
    )
    page = parse_html(source)
    assert len(page.edits) == 2
    assert all("refresh" in source[s:e].lower() for s, e, _ in page.edits)


def test_nul_is_dropped_like_the_browser_does():
    (block,) = parse_html("<p>東\0京</p>").blocks
    assert "".join(block.text) == "東京"
    assert block.starts == [3, 5]


def test_decoding_bom_charset_and_invalid_bytes():
    text, encoding = decode_html(b"\xef\xbb\xbf<p>x</p>")
    assert (text, encoding) == ("\ufeff<p>x</p>", "utf-8")  # the BOM counts in offsets
    sjis = '<meta charset="Shift_JIS"><p>日本語</p>'.encode("cp932")
    assert decode_html(sjis) == ('<meta charset="Shift_JIS"><p>日本語</p>', "cp932")
    euc = "<meta http-equiv=Content-Type content='text/html; charset=euc-jp'>東京".encode("euc_jp")
    assert decode_html(euc)[1] == "euc_jis_2004"
    assert decode_html(euc)[0].endswith("東京")
    assert decode_html(b"<p>\xff\xfe ok</p>")[0] == "<p>\ufffd\ufffd ok</p>"
    assert decode_html(b"<meta charset=nonsense><p>x</p>")[1] == "utf-8"
    for codec in ("base64", "hex", "rot13", "zlib"):  # Python codecs that are not text encodings
        assert decode_html(f"<meta charset={codec}><p>東京</p>".encode()) == (
            f"<meta charset={codec}><p>東京</p>",
            "utf-8",
        ), codec


def test_malformed_markup_never_raises():
    for source in ["", "<", "<p", "</", "<!--", "<a href='>", "</ p>", "<<>>", "&", "&#;", "&#x;"]:
        parse_html(source)
    assert texts("a < b and c > d") == ["a < b and c > d"]


def test_raw_text_holding_a_less_than_sign_ends_at_its_own_end_tag():
    for raw in [
        "<script>for(i=0;i<n;i++){}</script>",
        "<title>A<B</title>",
        '<script>var s="<!--";</script>',
        "<style>a<b{}</style>",
        "<textarea>x<y</textarea>",
    ]:
        assert texts(raw + "<p>東京の空港</p>") == ["東京の空港"], raw


def test_attributes_are_read_as_chromium_reads_them():
    assert texts('<a b = "x>y">東京</a>') == ["東京"]  # spaces around = are allowed
    assert texts('<img alt=="x>東京">') == ['東京">']  # a value may not start with a second =
    assert texts('<a ="x>東京">') == ['東京">']  # an attribute *name* may start with =
    assert texts('<a title="never closed>東京') == []  # the value runs to the end of the file
    tricky = "<img alt==\"x><meta http-equiv=refresh content='1;url=about:blank'>\">"
    assert len(parse_html(tricky).edits) == 1


def test_noscript_is_cut_from_the_rendered_page():
    source = "<p>前</p><noscript><p>無</p><meta http-equiv=refresh content=0></noscript><p>後"
    page = parse_html(source)
    assert page.edits == [(source.index("<noscript>"), source.index("<p>後"), "")]
    unclosed = "<p>前</p><noscript><p>無"
    assert parse_html(unclosed).edits == [(unclosed.index("<noscript>"), len(unclosed), "")]


def test_japanese_encoding_labels_browsers_accept():
    labels = [("x-euc-jp", "euc_jis_2004"), ("EUC-JP", "euc_jis_2004"), ("shift-jis", "cp932")]
    for label, codec in labels:
        data = f'<meta charset="{label}"><p>東京①</p>'.encode(codec)
        assert decode_html(data) == (f'<meta charset="{label}"><p>東京①</p>', codec), label


def test_line_starts_are_where_splitlines_starts_lines():
    rng = random.Random(0)
    alphabet = ["a", "東", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\ud800"]
    for _ in range(3000):
        source = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        lines = source.splitlines(keepends=True)
        expected = list(accumulate(map(len, lines), initial=0))
        if lines and lines[-1].splitlines()[0] == lines[-1]:  # the last line has no break
            expected.pop()
        assert line_starts(source) == expected, repr(source)
