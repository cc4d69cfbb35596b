"""A page's title and the elements around a position, read from its element tree."""

from __future__ import annotations

import json

import pytest

from layoutja.shinra.pagetree import enclosing, page_title
from layoutja.shinra.rawpage import RawPage

from .conftest import SHINRA, SHINRA_MISSING

TITLES = {  # the page's <head>, then its title as a SHINRA record carries it
    "<title>成田国際空港 - Wikipedia</title>": "成田国際空港",
    "<title>AT&amp;T本社ヘリポート - Wikipedia</title>": "AT&T本社ヘリポート",
    '<title lang="ja">成田国際空港 - Wikipedia</title>': "成田国際空港",
    "<!-- <title>旧版</title> --><title>新千歳空港 - Wikipedia</title>": "新千歳空港",
    "<script>document.title = '<title>仮</title>'</script><title>関西国際空港 - W</title>": (
        "関西国際空港"
    ),
    "<title>東京 - 大阪線 - Wikipedia</title>": "東京 - 大阪線",  # only the site is cut
    "<title>\n  羽田\t空港\n  - Wikipedia\n</title>": "羽田 空港",
    "<title>羽田　空港 - Wikipedia</title>": "羽田　空港",  # U+3000 is not HTML whitespace
    "<title>&lt;b&gt;空港 - Wikipedia</title>": "<b>空港",
    "<title><b>空港</b> - Wikipedia</title>": "<b>空港</b>",  # RCDATA: no markup in a title
    "<meta charset=utf-8>": "",
}


def test_a_title_reads_as_the_browser_shows_it():
    for head, title in TITLES.items():
        assert page_title(f"<html><head>{head}</head><body>本文</body></html>") == title, head


def test_the_real_sample_titles_are_the_gold_titles():
    pages = sorted(SHINRA.glob("Airport_HTML/*.html"))
    if not pages:
        pytest.skip(SHINRA_MISSING)
    gold = {}
    for line in (SHINRA / "Airport_Mini_Answer.json").read_text("utf-8").splitlines():
        record = json.loads(line)
        gold[record["page_id"]] = record["title"]
    assert {p.stem: page_title(RawPage.read(p).source) for p in pages} == gold


def test_the_elements_open_at_a_position_innermost_first():
    source = (
        '<html><head><script>var s = "<ul>";</script></head><body><!-- <ol> -->'
        '<p class="lead">東京<b>国際</b>空港</p><ul><li><a href="/wiki/羽田">羽田</a></li></ul>'
        "</body></html>"
    )
    raw = RawPage(source)
    at = {
        "国": source.index("国"),  # page text
        "港": source.index("港"),  # after the inline element closed
        "<a": source.index("<a"),  # a value may start with its link
        "href": source.index("href"),  # inside a tag: no position of the tree
        "<ol>": source.index("<ol>"),  # inside a comment
        "<ul>": source.index("<ul>"),  # inside a script
    }
    found = enclosing(raw, [*at.values(), None])
    names = {key: [element.name for element in elements] for key, elements in zip(at, found)}
    assert names == {
        "国": ["b", "p", "body", "html"],
        "港": ["p", "body", "html"],
        "<a": ["li", "ul", "body", "html"],
        "href": [],
        "<ol>": [],
        "<ul>": [],
    }
    assert found[-1] == [] and found[0][1]["class"] == ["lead"]
