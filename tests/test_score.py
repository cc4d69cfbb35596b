"""The SHINRA scorer: the official figures on the real sample, and hand-computed cases."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata

import pytest

from layoutja import common
from layoutja.cli.main import main
from layoutja.common import UserError
from layoutja.shinra.score import (
    html_mismatches,
    read_jsonl,
    read_targets,
    score,
    score_leaderboard,
)

from .conftest import SHINRA, SHINRA_MISSING


def record(page, attribute, start, end, ene="1.6.5.3", text="x") -> dict:
    offset = {"start": {"line_id": start[0], "offset": start[1]},
              "end": {"line_id": end[0], "offset": end[1]}, "text": text}  # fmt: skip
    return {"page_id": page, "title": "t", "ENE": ene, "attribute": attribute,
            "html_offset": offset}  # fmt: skip


def rounded(scores: dict) -> tuple:
    return tuple(round(scores[k], 3) for k in ("precision", "recall", "f1"))


@pytest.fixture
def sample():
    if not (SHINRA / "Airport_Mini_Answer.json").exists():
        pytest.skip(SHINRA_MISSING)
    gold = read_jsonl(SHINRA / "Airport_Mini_Answer.json")
    pred = read_jsonl(SHINRA / "Airport_Dummy_Result.json")
    return gold, pred


def test_the_official_figures_on_the_sample(sample):
    gold, pred = sample
    result = score(gold, pred, read_targets(SHINRA / "target.csv"))
    html, text = result["html_offset"], result["text_offset"]
    assert rounded(html["macro"]) == (0.941, 0.629, 0.734)
    assert rounded(html["micro"]) == (0.974, 0.624, 0.760)
    assert rounded(text["macro"]) == (0.938, 0.626, 0.731)
    assert rounded(text["micro"]) == (0.965, 0.618, 0.753)
    # The official scorer's README table is page 678416 alone (its CSV reading keeps spaces).
    only = score(gold, pred, {"678416"})["html_offset"]
    assert rounded(only["macro"]) == (0.476, 0.421, 0.441)
    assert rounded(only["micro"]) == (1.0, 0.789, 0.882)
    assert "ＩＡＴＡ（空港コード）" in html["per_ene"]["1.6.5.3"]["attributes"]


def test_offsets_that_do_not_cut_out_their_text(sample):
    gold, pred = sample
    assert html_mismatches(gold, SHINRA / "Airport_HTML") == []
    bad = html_mismatches(pred, SHINRA / "Airport_HTML")
    assert len(bad) == 3  # the official checker prints 4: its count includes a header row
    assert {b["page_id"] for b in bad} == {"858418", "2416040"}


def test_hand_computed_cases():
    gold = [record("1", "名前", (0, 0), (0, 2)), record("1", "名前", (1, 0), (1, 3)),
            record("1", "IATA", (2, 0), (2, 3)), record("2", "名前", (0, 0), (0, 1))]  # fmt: skip
    # Nothing predicted: every score is 0.
    empty = score(gold, [])["html_offset"]
    assert rounded(empty["macro"]) == rounded(empty["micro"]) == (0, 0, 0)
    pred = [
        record("1", "名前", (0, 0), (0, 2)),  # TP
        record("1", "名前", (0, 0), (0, 2)),  # its duplicate: counted once
        record("2", "名前", (0, 0), (0, 2)),  # FP (wrong end)
        record("1", "ＩＡＴＡ", (2, 0), (2, 3)),  # TP: full-width name matches IATA
        record("9", "名前", (0, 0), (0, 1)),  # a page not in the gold: not scored
        record("1", "未知の属性", (0, 0), (0, 1)),  # an attribute not in the gold: not scored
    ]
    result = score(gold, pred)["html_offset"]
    names = result["per_ene"]["1.6.5.3"]["attributes"]
    assert (names["名前"]["tp"], names["名前"]["fp"], names["名前"]["fn"]) == (1, 1, 2)
    assert rounded(names["名前"]) == (0.5, 0.333, 0.4)
    assert rounded(names["ＩＡＴＡ"]) == (1.0, 1.0, 1.0)
    assert rounded(result["macro"]) == (0.75, 0.667, 0.7)  # mean of the two attributes
    assert rounded(result["micro"]) == (0.667, 0.5, 0.571)  # TP 2, FP 1, FN 2
    # Only page 1 targeted: page 2's gold and prediction drop out.
    assert rounded(score(gold, pred, {"1"})["html_offset"]["micro"]) == (1.0, 0.667, 0.8)


def test_several_enes_macro_is_the_mean_of_enes_micro_pools_counts():
    gold = [
        record("1", "a", (0, 0), (0, 1), ene="A"),
        record("2", "b", (0, 0), (0, 1), ene="B"),
        record("2", "b", (1, 0), (1, 1), ene="B"),
        record("2", "c", (2, 0), (2, 1), ene="B"),
    ]
    pred = [record("1", "a", (0, 0), (0, 1), ene="A"), record("2", "b", (0, 0), (0, 1), ene="B")]
    result = score(gold, pred)["html_offset"]
    assert rounded(result["per_ene"]["A"]["macro"]) == (1.0, 1.0, 1.0)
    assert rounded(result["per_ene"]["B"]["macro"]) == (0.5, 0.25, 0.333)  # b: 1/0.5/0.667, c: 0
    assert rounded(result["macro"]) == (0.75, 0.625, 0.667)
    assert rounded(result["micro"]) == (1.0, 0.5, 0.667)


def test_jsonl_errors_name_the_file_and_the_line(tmp_path):
    path = tmp_path / "pred.jsonl"
    good = json.dumps(record("1", "名前", (0, 0), (0, 2), text="a\u2028b"), ensure_ascii=False)
    path.write_text(f"\ufeff{good}\n\n  \n{good}\r\n", encoding="utf-8")
    assert [r["html_offset"]["text"] for r in read_jsonl(path)] == ["a\u2028b"] * 2
    for third, reason in [("{not json", "line 3: not a SHINRA record"),
                          ('{"page_id": 1}', "line 3: not a SHINRA record .no 'ENE'"),
                          ("[1, 2]", "line 3: not a SHINRA record .a JSON list")]:  # fmt: skip
        path.write_text(f"{good}\n\n{third}\n", encoding="utf-8")
        with pytest.raises(UserError, match=f"pred.jsonl: {reason}"):
            read_jsonl(path)
    path.write_bytes(good.encode() + b"\n\xff\n")
    with pytest.raises(UserError, match="line 2: not a JSON object .*utf-8"):
        common.read_jsonl(path)
    with pytest.raises(UserError, match="missing.jsonl: cannot read"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_mismatches_of_a_page_and_of_offsets_off_the_page(tmp_path):
    (tmp_path / "1.html").write_text("<p>羽田</p>\n<td>HND</td>\n", encoding="utf-8")
    records = [record("1", "名前", (0, 3), (0, 5), text="羽田"),
               record("1", "IATA", (1, 4), (1, 7), text="HNX"),
               record("1", "IATA", (1, 4), (1, 40), text="HND"),
               record("2", "名前", (0, 0), (0, 1))]  # fmt: skip
    problems = [(b["attribute"], b["problem"]) for b in html_mismatches(records, tmp_path)]
    assert problems == [("IATA", "offsets cut out 'HND'"), ("IATA", "offsets not on the page"),
                        ("名前", "no such page")]  # fmt: skip


def test_score_command_writes_the_leaderboard_json(sample, tmp_path):
    out = tmp_path / "score.json"
    command = [sys.executable, "-m", "layoutja", "score",
               "--gold", str(SHINRA / "Airport_Mini_Answer.json"),
               "--pred", str(SHINRA / "Airport_Dummy_Result.json"),
               "--target", str(SHINRA / "target.csv"), "--html", str(SHINRA / "Airport_HTML"),
               "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "overall macro" in result.stdout and "does not cut out their text: 3" in result.stdout
    report = json.loads(out.read_text())
    assert {"macro", "micro", "per_ene", "text_offset"} <= set(report)
    assert round(report["macro"]["f1"], 3) == 0.734 and round(report["micro"]["f1"], 3) == 0.760


def offset(line: int, start: int, end: int) -> dict:
    return {"start": {"line_id": line, "offset": start}, "end": {"line_id": line, "offset": end}}


def lb(page, attribute, html=None, text=None, ene="A") -> dict:
    """A record carrying the offsets given, each as (line, start, end)."""
    r = {"page_id": page, "title": "t", "ENE": ene, "attribute": attribute}
    for kind, span in (("html_offset", html), ("text_offset", text)):
        if span:
            r[kind] = {**offset(*span), "text": "x"}
    return r


def prf(scores: dict) -> tuple:
    return tuple(scores[k] for k in ("precision", "recall", "f1"))


H1, T1, H2, T2, H3, T3 = (0, 0, 2), (0, 5, 7), (1, 0, 3), (1, 4, 7), (2, 0, 3), (2, 1, 4)


def test_leaderboard_metric_on_a_hand_computed_case():
    gold = [lb("1", "名前", H1, T1), lb("1", "名前", H2, T2), lb("1", "IATA", H3, T3),
            lb("2", "国", H1, T1, ene="B")]  # fmt: skip
    pred = [
        lb("1", "名前", html=H1),  # correct: html-only, equal to the first record's
        lb("1", "名前", html=H1),  # its duplicate: counted once
        lb("1", "名前", text=T2),  # correct: text-only, equal to the second record's
        lb("1", "名前", H1, T2),  # wrong: both carried, but of two different records
        lb("2", "名前", html=H1),  # wrong: page 2 has no 名前 in the gold (counts: the pair exists)
        lb("1", "IATA", H3, T3),  # correct: both carried, both equal
        lb("1", "ＩＡＴＡ", H3, T3),  # ignored: no such pair in the gold (names compared as is)
        lb("9", "名前", html=H1),  # ignored: page 9 is not in the gold
        lb("2", "国", text=T2, ene="B"),  # wrong
    ]
    result = score_leaderboard(gold, pred)
    a = result["per_ene"]["A"]["attributes"]
    assert (a["名前"]["correct"], a["名前"]["predicted"], a["名前"]["gold"]) == (2, 4, 2)
    assert prf(a["名前"]) == pytest.approx((1 / 2, 1, 2 / 3))  # F1 = 2·½·1 / (½ + 1)
    assert prf(a["IATA"]) == (1, 1, 1)
    assert prf(result["per_ene"]["B"]["attributes"]["国"]) == (0, 0, 0)
    # Macro over the 3 pairs (not over the 2 ENEs: that would give P (3/4 + 0) / 2).
    assert prf(result["macro"]) == pytest.approx((1 / 2, 2 / 3, 5 / 9))  # F1 (2/3 + 1 + 0) / 3
    # Micro: 3 correct of 6 predicted, 4 gold: F1 = 2·½·¾ / (½ + ¾).
    assert prf(result["micro"]) == pytest.approx((1 / 2, 3 / 4, 3 / 5))
    assert prf(result["per_ene"]["A"]["micro"]) == pytest.approx((3 / 5, 1, 3 / 4))


def test_leaderboard_metric_edge_cases():
    gold = [lb("1", "名前", H1, T1), lb("1", "名前", H1, T1), lb("1", "国", html=H2)]
    # Nothing predicted: P is 0, not undefined.
    assert prf(score_leaderboard(gold, [])["macro"]) == (0, 0, 0)
    # Gold records are counted as given: the repeated one is 2 of 名前's gold.
    row = score_leaderboard(gold, [lb("1", "名前", H1, T1)])["per_ene"]["A"]["attributes"]["名前"]
    assert (row["correct"], row["predicted"], row["gold"], row["recall"]) == (1, 1, 2, 1 / 2)
    # A gold record without text_offset matches an html-only prediction, not one carrying both;
    # a prediction carrying no offset is predicted, never correct.
    pred = [lb("1", "国", html=H2), lb("1", "国", H2, T2), lb("1", "国")]
    row = score_leaderboard(gold, pred)["per_ene"]["A"]["attributes"]["国"]
    assert (row["correct"], row["predicted"], row["gold"]) == (1, 3, 1)
    # Predictions differing only in the offsets they carry are distinct, and each may match the
    # same gold record (the statement's reading): recall can pass 1.
    pred = [lb("1", "名前", html=H1), lb("1", "名前", text=T1), lb("1", "名前", H1, T1)]
    row = score_leaderboard(gold, pred)["per_ene"]["A"]["attributes"]["名前"]
    assert (row["correct"], row["predicted"], row["gold"], row["recall"]) == (3, 3, 2, 3 / 2)
    with pytest.raises(UserError, match="no records"):
        score_leaderboard([], pred)


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return str(path)


def test_score_command_conventions_put_macro_and_micro_at_the_top(tmp_path, capsys):
    gold = write_jsonl(tmp_path / "g.jsonl", [lb("1", "名前", text=T1), lb("1", "IATA", text=T2)])
    pred = write_jsonl(
        tmp_path / "p.jsonl", [lb("1", "名前", text=T1), lb("1", "ＩＡＴＡ", text=T2)]
    )
    out = tmp_path / "score.json"
    # 2019 (text_offset alone here): ＩＡＴＡ is IATA, both right. leaderboard-2022: ＩＡＴＡ is no
    # gold pair, so IATA scores 0; micro: 1 correct of 1 predicted, 2 gold.
    cases = [("2019", (1, 1, 1), (1, 1, 1)),
             ("leaderboard-2022", (1 / 2, 1 / 2, 1 / 2), (1, 1 / 2, 2 / 3))]  # fmt: skip
    for convention, macro, micro in cases:
        argv = ["score", "--gold", gold, "--pred", pred, "--out", str(out)]
        assert main([*argv, "--convention", convention]) == 0
        report = json.loads(out.read_text())
        assert report["convention"] == convention
        assert prf(report["macro"]) == pytest.approx(macro)
        assert prf(report["micro"]) == pytest.approx(micro)
        assert len(report["per_ene"]["A"]["attributes"]) == 2
    table = capsys.readouterr().out
    assert "== leaderboard-2022 ==" in table and "Corr  Pred  Gold" in table
    argv = ["score", "--gold", gold, "--pred", pred, "--target", gold]
    assert main([*argv, "--convention", "leaderboard-2022"]) == 1
    assert "--target is for --convention 2019" in capsys.readouterr().err


def test_tables_align_full_width_attribute_names_by_display_width():
    from layoutja.shinra.score import format_table, pad

    assert pad("所在地", 8) == "所在地  " and pad("abc", 4) == "abc "
    assert pad("国際空港の所在地", 9) == "国際空港 "  # cut by columns, not characters
    scores = {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    table = format_table({"html_offset": {
        "per_ene": {"1.6.5.3": {"attributes": {"所在地": scores, "IATA": scores},
                                "macro": scores, "micro": scores}},
        "macro": scores, "micro": scores}})  # fmt: skip
    lines = table.splitlines()[2:]

    def columns(text: str) -> int:  # what a terminal shows: full-width characters take two
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)

    widths = [columns(line.split(" 0.500")[0]) for line in lines]
    assert len(set(widths)) == 1, lines  # every figure starts in the same column
