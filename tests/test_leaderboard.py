"""The SHINRA 2022 leaderboard input: its format, the category choice, the system choice, errors,
and the attributes kept for a page's category."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layoutja.common import UserError
from layoutja.shinra.categories import read_definitions
from layoutja.shinra.leaderboard import kept_attributes, read_leaderboard


def page(page_id, *entries, system="sys", title="T") -> dict:
    """A leaderboard line whose system gives the (ENE, prob) entries."""
    systems = {system: [{"prob": prob, "ENE": ene} for ene, prob in entries]}
    return {"page_id": page_id, "title": title, "ENEs": systems}


def write(tmp_path, *records) -> Path:
    path = tmp_path / "leaderboard.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def test_each_page_takes_the_entry_with_the_highest_prob(tmp_path):
    path = write(
        tmp_path,
        page(1, ("1.1", 0.2), ("1.2", 0.7), ("1.3", 0.1), title="空港A"),
        page("2", ("1.4", "0.5")),  # a prob written as a string is read as a number
        page("3", ("1.5", 0.5), ("1.6", 0.5)),  # a tie: the first
        page("4", ("1.7", 0.3), system="another-classifier"),  # any one system name
    )
    expected = {"1": ("空港A", "1.2"), "2": ("T", "1.4"), "3": ("T", "1.5"), "4": ("T", "1.7")}
    assert read_leaderboard(path) == expected


def two_systems(page_id, sys_ene, other_ene) -> dict:
    record = page(page_id, (sys_ene, 0.9))
    record["ENEs"]["other"] = [{"prob": 0.9, "ENE": other_ene}]
    return record


def test_the_system_argument_chooses_among_several(tmp_path):
    path = write(tmp_path, two_systems("1", "1.1", "1.2"), two_systems("2", "1.3", "1.4"))
    assert read_leaderboard(path, system="other") == {"1": ("T", "1.2"), "2": ("T", "1.4")}
    assert read_leaderboard(path, system="sys") == {"1": ("T", "1.1"), "2": ("T", "1.3")}
    with pytest.raises(UserError, match=r"leaderboard.jsonl: line 1: .*several systems in ENEs "
                       r"\('other', 'sys'\): choose one with --system NAME"):  # fmt: skip
        read_leaderboard(path)
    # A chosen system that a line lacks, with the names that line has.
    path = write(tmp_path, two_systems("1", "1.1", "1.2"), page("2", ("1.3", 0.9)))
    with pytest.raises(UserError, match=r"line 2: .*no system 'other' in ENEs .present: 'sys'"):
        read_leaderboard(path, system="other")
    with pytest.raises(UserError, match=r"line 1: .*no system 'third' in ENEs .present: 'other', "):
        read_leaderboard(path, system="third")


@pytest.mark.parametrize(
    "line, reason",
    [
        ('{"page_id": "1", "title": "T"}', "no 'ENEs'"),
        ('{"page_id": "1", "ENEs": {"sys": [{"prob": 1, "ENE": "1.1"}]}}', "no 'title'"),
        ('{"page_id": "1", "title": "T", "ENEs": {}}', "not a non-empty object of system"),
        ('{"page_id": "1", "title": "T", "ENEs": [{"prob": 1, "ENE": "1.1"}]}', "not a non-empty"),
        ('{"page_id": "1", "title": "T", "ENEs": {"sys": []}}', "no ENE entries"),
        ('{"page_id": "1", "title": "T", "ENEs": {"sys": [{"ENE": "1.1"}]}}', "no 'prob'"),
        ('{"page_id": "1", "title": "T", "ENEs": {"sys": [{"prob": 1}]}}', "no 'ENE'"),
        ('{"page_id": "0", "title": "T", "ENEs": {"sys": [{"prob": 1, "ENE": "1"}]}}', "page 0 "),
    ],
)
def test_malformed_lines_name_the_file_the_line_and_the_reason(tmp_path, line, reason):
    path = write(tmp_path, page("0", ("1.1", 1.0)))
    path.write_text(path.read_text("utf-8") + "\n" + line + "\n", "utf-8")
    with pytest.raises(
        UserError, match=f"leaderboard.jsonl: line 3: not a leaderboard page .*{reason}"
    ):
        read_leaderboard(path)


def test_the_chosen_category_keeps_its_extracted_attributes(tmp_path):
    path = tmp_path / "ENE_definition.jsonl"
    airport = {"ENE_id": "1.6.5.3", "title": "空港", "attributes": [
        {"name": "IATA（空港コード）", "extraction_task": True}, {"name": "所在地"},
        {"name": "画像", "extraction_task": False}]}  # fmt: skip
    path.write_text(json.dumps(airport, ensure_ascii=False) + "\n", "utf-8")
    definitions = read_definitions(path).attributes
    labels = {"IATA(空港コード)", "所在地", "画像", "人口"}
    # NFKC: the definition's full-width （） match the label's ASCII (); 画像 has extraction_task
    # false, 人口 is another ENE's; an ENE the definitions lack keeps nothing.
    assert kept_attributes(definitions, "1.6.5.3", labels) == {"IATA(空港コード)", "所在地"}
    assert kept_attributes(definitions, "1.5.1.1", labels) == set()
    assert kept_attributes({"X": [" 名前 "]}, "X", ["名前", "名前の謂れ"]) == {"名前"}
