"""SHINRA annotations as token labels: real pages and hand-made cases."""

from __future__ import annotations

import glob
from collections import Counter

import pyarrow.parquet as pq
import pytest

from layoutja.shinra import Annotation, RawLines, label_names, page_labels, read_annotations

from .conftest import SHINRA


def test_real_annotations_label_exactly_their_tokens(localized_dir):
    gold = SHINRA / "Airport_Mini_Answer.json"
    if not gold.exists():
        pytest.skip("no SHINRA sample")
    annotations = read_annotations([gold])
    names = label_names({a.attribute for a in annotations})
    rows = pq.read_table(glob.glob(str(localized_dir / "part-*.parquet"))).to_pylist()
    pages = [r for r in rows if (SHINRA / "Airport_HTML" / f"{r['page_id']}.html").exists()]
    assert pages
    for row in pages:
        raw = RawLines((SHINRA / "Airport_HTML" / f"{row['page_id']}.html").read_text())
        mine = [a for a in annotations if a.page_id == row["page_id"]]
        skipped = []
        labels = page_labels(row["html_span"], raw, mine, names, skipped)
        begins = [i for i, label in enumerate(labels) if names[label].startswith("B-")]
        assert len(begins) == len(set(mine)) - len(skipped)
        reasons = {reason for reason, _ in skipped}
        assert reasons <= {"overlaps another annotation"}  # the sample's offsets are right
        for i in begins:  # each labeled run of tokens lies inside one annotation of its attribute
            attribute = names[labels[i]][2:]
            j = i + 1
            while j < len(labels) and names[labels[j]] == f"I-{attribute}":
                j += 1
            first, last = row["html_span"][i], row["html_span"][j - 1]
            assert any(
                a.attribute == attribute
                and (a.start <= (first[0], first[1]) and (last[2], last[3]) <= a.end)
                for a in mine
            ), (row["page_id"], attribute, first, last)


def test_hand_made_page():
    source = "<p>東京国際空港</p>\n<td>羽田</td><td>HND</td>"
    raw = RawLines(source)
    # Tokens: 東京 / 国際 / 空港 on line 0, 羽田 and HND on line 1.
    spans = [[0, 3, 0, 5], [0, 5, 0, 7], [0, 7, 0, 9], [1, 4, 1, 6], [1, 15, 1, 18]]

    def ann(attribute, start, end, text):
        return Annotation("1", "1.6.5.3", attribute, start, end, text)

    annotations = [
        ann("名前", (0, 3), (0, 9), "東京国際空港"),
        ann("別名", (0, 5), (0, 9), "国際空港"),  # overlaps the longer 名前: dropped
        ann("IATA", (1, 15), (1, 18), "HND"),
        ann("IATA", (1, 15), (1, 18), "HND"),  # the same annotation twice: once
        ann("所在地", (1, 4), (1, 6), "大阪"),  # text does not match the offsets
        ann("所在地", (7, 0), (7, 2), "羽田"),  # outside the page
        ann("未定義", (1, 4), (1, 6), "羽田"),  # not an extracted attribute
    ]
    names = label_names({"名前", "別名", "IATA", "所在地"})
    skipped = []
    labels = [names[i] for i in page_labels(spans, raw, annotations, names, skipped)]
    assert labels == ["B-名前", "I-名前", "I-名前", "O", "B-IATA"]
    assert [a.attribute for _, a in skipped] == ["所在地", "所在地", "未定義", "別名"]
    assert Counter(reason for reason, _ in skipped) == {
        "overlaps another annotation": 1,
        "text does not match the offsets": 1,
        "offsets outside the page": 1,
        "attribute not extracted": 1,
    }
