"""`layoutja compare`: where gold values sit in the raw HTML, and two systems side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from layoutja.shinra.compare import attribute_locations, compare, format_comparison, locations
from layoutja.shinra.rawpage import RawPage

from .conftest import SHINRA, SHINRA_MISSING

PAGE = [
    "<html><head><title>空港 - Wikipedia</title>",
    "<script>var s = \"<table class='infobox'><ul>\";</script></head><body>",
    '<table class="infobox bordered"><tr><th>所在地</th><td><b>東京都</b></td></tr></table>',
    "<table><tr><td>滑走路A</td></tr></table>",
    "<ul><li>第1ターミナル<li>第2ターミナル</ul>",
    "<p>1931年に開港した。<br>国内線が多い。</p>",
    "</body></html>",
]
VALUES = {  # attribute → (line, text): one value in each kind of place
    "所在地": (2, "東京都"),
    "滑走路": (3, "滑走路A"),
    "ターミナル": (4, "第2ターミナル"),
    "開港年": (5, "1931年"),
}


def record(attribute: str, line: int, text: str, page: str = "1") -> dict:
    start = PAGE[line].index(text)
    offset = {"start": {"line_id": line, "offset": start},
              "end": {"line_id": line, "offset": start + len(text)}, "text": text}  # fmt: skip
    return {"page_id": page, "ENE": "1.6.5.3", "attribute": attribute, "html_offset": offset}


def test_each_value_is_placed_by_the_elements_open_around_it():
    raw = RawPage("\n".join(PAGE))
    where = [raw.index((line, PAGE[line].index(text))) for line, text in VALUES.values()]
    script = raw.index((1, PAGE[1].index("<ul>") + 1))  # inside the script: not markup
    assert locations(raw, [*where, script, 0]) == [
        "infobox", "table", "list", "running text", "running text", "running text"
    ]  # fmt: skip


# A value (after "@") where the browser's tree puts it: each of the first six is misplaced by
# reading tags with regular expressions.
TREES = {
    '<table title="a>b" class="infobox"><tr><td>@東京</td></tr></table>': "infobox",
    '<table class="info&#98;ox"><tr><td>@東京</td></tr></table>': "infobox",
    '<table data-class="infobox"><tr><td>@東京</td></tr></table>': "table",
    '<!-- 旧版 --!><table class="infobox"><tr><td>@東京</td></tr></table><!-- -->': "infobox",
    # a nested table left open: the outer cell's end tags are ignored, `</table>` closes it
    '<table class="infobox"><tr><td><table><tr><td>a</td></tr></td></tr></table>'
    "<p>@東京</p></td></tr></table>": "infobox",
    # an end tag for an element outside the table is ignored in a cell
    '<div><table class="infobox"><tr><td>a</div>@東京</td></tr></table></div>': "infobox",
    '<table class="infobox"><tr><td><table class="wikitable"><tr><td>@東京</td></tr></table>'
    "</td></tr></table>": "infobox",
    '<table class="infobox"><tr><td><ul><li>a<li>@東京</ul></td></tr></table>': "infobox",
    '<table class="infobox"><tr><td>@<a href="/wiki/東京">東京</a>都</td></tr></table>': "infobox",
    '<table class="infobox"><tr><td>a</td></tr></table><ul><li>b</ul>@東京': "running text",
}


def test_values_are_placed_in_the_tree_the_browser_builds():
    misplaced = {}
    for body, expected in TREES.items():
        raw = RawPage(f"<html><body>{body.replace('@', '')}</body></html>")
        (found,) = locations(raw, [len("<html><body>") + body.index("@")])
        if found != expected:
            misplaced[body] = found
    assert misplaced == {}
    assert locations(raw, [None]) == ["running text"]  # a position not on the page


def test_two_systems_side_by_side_per_attribute_location_and_overall(tmp_path):
    (tmp_path / "html" / "1.6.5.3").mkdir(parents=True)
    (tmp_path / "html" / "1.6.5.3" / "1.html").write_text("\n".join(PAGE), "utf-8")
    gold = [record(a, line, text) for a, (line, text) in VALUES.items()]
    assert attribute_locations(gold, tmp_path / "html") == {
        ("1.6.5.3", "所在地"): "infobox", ("1.6.5.3", "滑走路"): "table",
        ("1.6.5.3", "ターミナル"): "list", ("1.6.5.3", "開港年"): "running text",
    }  # fmt: skip
    layout = [record("所在地", 2, "東京都"), record("滑走路", 3, "滑走路A"),
              record("ターミナル", 4, "第1ターミナル")]  # fmt: skip
    text_only = [record("開港年", 5, "1931年"), record("所在地", 2, "東京都"),
                 record("所在地", 5, "国内線"),
                 record("滑走路", 3, "滑走路A", page="2")]  # fmt: skip
    result = compare(gold, {"layout": layout, "text": text_only}, tmp_path / "html")
    rows = {r["attribute"]: r for r in result["attributes"]}
    # 所在地: layout 1/1 correct; text 1 of 2 correct: P 0.5, R 1, F1 2/3
    assert rows["所在地"]["2019"] == {"layout": 1.0, "text": 2 / 3}
    assert rows["滑走路"]["leaderboard-2022"] == {"layout": 1.0, "text": 0.0}  # page 2: no gold
    assert rows["開港年"]["2019"] == {"layout": 0.0, "text": 1.0}
    assert result["locations"]["list"]["2019"] == {"layout": 0.0, "text": 0.0}
    assert result["overall"]["leaderboard-2022"] == {"layout": 2 / 4, "text": (2 / 3 + 1) / 4}
    table = format_comparison(result).splitlines()
    assert table[0].startswith("| ENE | attribute | where | gold | 2019 layout | 2019 text |")
    assert table[2].startswith("| 1.6.5.3 | 所在地 | infobox | 1 | 1.000 | 0.667 | +0.333 |")
    assert [line.split(" | ")[1] for line in table[2:6]] == list(VALUES)  # by location
    assert table[-1].startswith("| all | **overall** (macro) |  | 4 | 0.500 | 0.417 | +0.083 |")
    # the command, on the pages of a target list
    paths = []
    for name, records in (("gold", gold), ("layout", layout), ("text", text_only)):
        paths.append(tmp_path / f"{name}.jsonl")
        paths[-1].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    out = tmp_path / "compare.md"
    command = [sys.executable, "-m", "layoutja", "compare", "--gold", str(paths[0]), "--pred",
               f"layout={paths[1]}", f"text={paths[2]}", "--html", str(tmp_path / "html"),
               "--out", str(out)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.read_text().splitlines() == table
    assert json.loads(out.with_suffix(".json").read_text())["overall"] == result["overall"]


def _gold(files: list[Path]) -> list[dict]:
    return [json.loads(line) for f in files for line in f.read_text("utf-8").splitlines() if line]


def test_where_the_demo_puts_its_attributes():
    demo = Path(__file__).resolve().parents[1] / "demo" / "shinra"
    gold = _gold(sorted((demo / "annotation").glob("*.jsonl")))
    assert set(attribute_locations(gold, demo / "html").items()) == {
        (("1.6.5.3", a), where) for a, where in [
            ("IATA（空港コード）", "infobox"), ("所在地", "infobox"),  # 所在地 starts at its link
            ("開港年", "infobox"), ("運営者", "infobox"), ("沿革", "list"),
            ("就航路線", "table"), ("ふりがな", "running text")]
    }  # fmt: skip


def test_where_the_real_sample_puts_its_attributes():
    if not SHINRA.is_dir():
        pytest.skip(SHINRA_MISSING)
    gold = _gold([SHINRA / "Airport_Mini_Answer.json"])
    found = attribute_locations(gold, SHINRA / "Airport_HTML")
    running = {"別名", "国", "所在地", "名前の謂れ", "名称由来人物の地位職業名", "ふりがな",
               "開港年", "近隣空港"}  # fmt: skip
    assert len(found) == 21 and set(found.values()) == {"infobox", "running text"}
    assert {a for (_, a), where in found.items() if where != "infobox"} == running
