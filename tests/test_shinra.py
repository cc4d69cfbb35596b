"""SHINRA annotations as token labels, and raw pages: real pages and hand-made cases."""

from __future__ import annotations

import glob
import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from layoutja.common import UserError
from layoutja.shinra.data import load_pages
from layoutja.shinra.labels import (
    Annotation,
    attribute_name,
    label_names,
    page_labels,
    read_annotations,
)
from layoutja.shinra.plaintext import PlainText
from layoutja.shinra.rawpage import RawPage
from layoutja.shinra.records import Decoder, gold_records
from layoutja.shinra.score import html_mismatches, read_jsonl, score
from layoutja.training.config import load_config

from .conftest import SHINRA, SHINRA_MISSING, TRAIN

# A Shift_JIS page (NEC's ① is cp932's, as browsers decode "shift_jis"); tokens per line.
SJIS_PAGE = (
    '<html><head><meta charset="shift_jis"><title>東京国際空港 - Wikipedia</title></head>\r\n'
    "<body><p>東京国際空港</p>\r\n"
    "<td>羽田①</td><td>HND</td></body></html>\r\n"
)
SJIS_SPANS = [[1, 9, 1, 11], [1, 11, 1, 13], [1, 13, 1, 15], [2, 4, 2, 6], [2, 6, 2, 7],
              [2, 16, 2, 19]]  # fmt: skip


def annotation(attribute, start, end, text, page="1") -> Annotation:
    return Annotation(page, "1.6.5.3", attribute, start, end, text)


def test_real_annotations_label_exactly_their_tokens(request):
    gold = SHINRA / "Airport_Mini_Answer.json"
    if not gold.exists():
        pytest.skip(SHINRA_MISSING)
    localized_dir = request.getfixturevalue("localized_dir")  # localized only with the sample
    annotations = read_annotations([gold])
    names = label_names({a.attribute for a in annotations})
    rows = pq.read_table(glob.glob(str(localized_dir / "part-*.parquet"))).to_pylist()
    pages = [r for r in rows if (SHINRA / "Airport_HTML" / f"{r['page_id']}.html").exists()]
    assert pages
    for row in pages:
        raw = RawPage.read(SHINRA / "Airport_HTML" / f"{row['page_id']}.html")
        mine = [a for a in annotations if a.page_id == row["page_id"]]
        skipped = []
        labels = page_labels(row["html_span"], raw, mine, names, skipped, overlaps="first")
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
                attribute_name(a.attribute) == attribute  # labels name attributes NFKC'd
                and (a.start <= (first[0], first[1]) and (last[2], last[3]) <= a.end)
                for a in mine
            ), (row["page_id"], attribute, first, last)


def test_the_plain_text_rebuilds_the_samples_plain_files_and_text_offsets():
    """README: SHINRA's plain text rebuilds all 7 plain files of the real sample exactly and maps
    all 186 gold html offsets onto their text offsets."""
    if not (SHINRA / "Airport_Mini_Answer.json").exists():
        pytest.skip(SHINRA_MISSING)
    pages = sorted((SHINRA / "Airport_HTML").glob("*.html"))
    plains = {page.stem: PlainText(RawPage.read(page)) for page in pages}
    for page_id, plain in plains.items():
        text = (SHINRA / "Airport_TEXT" / f"{page_id}.txt").read_text(encoding="utf-8")
        assert plain.page.source == text, page_id
    gold = read_jsonl(SHINRA / "Airport_Mini_Answer.json")
    for r in gold:
        start, end = (r["html_offset"][k] for k in ("start", "end"))
        offset = plains[r["page_id"]].offset(
            (start["line_id"], start["offset"]), (end["line_id"], end["offset"])
        )
        assert offset == r["text_offset"], r
    assert (len(plains), len(gold)) == (7, 186)


def test_hand_made_page():
    source = "<p>東京国際空港</p>\n<td>羽田</td><td>HND</td>"
    raw = RawPage(source)
    # Tokens: 東京 / 国際 / 空港 on line 0, 羽田 and HND on line 1.
    spans = [[0, 3, 0, 5], [0, 5, 0, 7], [0, 7, 0, 9], [1, 4, 1, 6], [1, 15, 1, 18]]

    annotations = [
        annotation("名前", (0, 3), (0, 9), "東京国際空港"),
        annotation("別名", (0, 5), (0, 9), "国際空港"),  # overlaps 名前, placed first: dropped
        annotation("IATA", (1, 15), (1, 18), "HND"),
        annotation("IATA", (1, 15), (1, 18), "HND"),  # the same annotation twice: once
        annotation("所在地", (1, 4), (1, 6), "大阪"),  # text does not match the offsets
        annotation("所在地", (7, 0), (7, 2), "羽田"),  # outside the page
        annotation("未定義", (1, 4), (1, 6), "羽田"),  # not an extracted attribute
    ]
    names = label_names({"名前", "別名", "IATA", "所在地"})
    skipped = []
    labels = page_labels(spans, raw, annotations, names, skipped, overlaps="first")
    labels = [names[i] for i in labels]
    assert labels == ["B-名前", "I-名前", "I-名前", "O", "B-IATA"]
    assert [a.attribute for _, a in skipped] == ["所在地", "所在地", "未定義", "別名"]
    assert Counter(reason for reason, _ in skipped) == {
        "overlaps another annotation": 1,
        "text does not match the offsets": 1,
        "offsets outside the page": 1,
        "attribute not extracted": 1,
    }


def test_of_overlapping_annotations_the_first_in_file_order_labels_the_tokens():
    """The published system keeps the first of overlapping annotations (in file order);
    `overlaps="longest"` keeps the longest instead."""
    raw = RawPage("<p>東京国際空港</p>")
    spans = [[0, 3, 0, 5], [0, 5, 0, 7], [0, 7, 0, 9]]  # 東京 / 国際 / 空港
    annotations = [
        annotation("別名", (0, 5), (0, 9), "国際空港"),
        annotation("名前", (0, 3), (0, 9), "東京国際空港"),  # longer, later in the file
    ]
    names = label_names({"名前", "別名"})
    found = {}
    for rule in ("first", "longest"):
        skipped = []
        labels = page_labels(spans, raw, annotations, names, skipped, overlaps=rule)
        found[rule] = ([names[i] for i in labels], [(r, a.attribute) for r, a in skipped])
    assert found["first"] == (["O", "B-別名", "I-別名"], [("overlaps another annotation", "名前")])
    assert found["longest"] == (
        ["B-名前", "I-名前", "I-名前"],
        [("overlaps another annotation", "別名")],
    )
    assert load_config(TRAIN / "finetune-tiny.yaml").finetune.overlaps == "first"  # the default
    with pytest.raises(UserError, match="finetune.overlaps must be first or longest"):
        load_config(TRAIN / "finetune-tiny.yaml", {"finetune.overlaps": "biggest"})


def test_raw_page_positions_and_cuts():
    raw = RawPage("ab\r\ncd\re\u2028\nf")
    assert raw.starts == [0, 4, 7, 9, 10]  # \r\n, \r, U+2028, \n: as str.splitlines counts
    assert raw.text((0, 1), (4, 0)) == "b\ncd\ne\n\n"
    assert raw.text((1, 1), (1, 2)) == "d" and raw.text((1, 2), (1, 2)) == ""
    assert raw.index((0, 2)) == 2 and raw.index((0, 3)) is None  # inside the \r\n break
    assert raw.index((5, 0)) is None and raw.index((0, -1)) is None
    assert raw.text((1, 2), (1, 1)) is None
    for index in range(len(raw.source) + 1):
        if raw.source[index - 1 : index + 1] != "\r\n":  # not between a \r\n's two halves
            assert raw.index(raw.position(index)) == index
    with pytest.raises(ValueError):
        raw.position(len(raw.source) + 1)


def test_a_shift_jis_page_is_decoded_as_the_localizer_decodes_it(tmp_path):
    path = tmp_path / "1.html"
    path.write_bytes(SJIS_PAGE.encode("cp932"))
    raw = RawPage.read(path)
    assert raw.encoding == "cp932" and raw.source == SJIS_PAGE
    assert raw.text((1, 9), (1, 15)) == "東京国際空港" and raw.text((2, 4), (2, 7)) == "羽田①"
    start = raw.index((2, 4))
    assert raw.source[start : start + 3] == "羽田①" and raw.position(start) == (2, 4)
    names = label_names({"名前", "別名"})
    annotations = [annotation("名前", (1, 9), (1, 15), "東京国際空港"),
                   annotation("別名", (2, 4), (2, 7), "羽田①")]  # fmt: skip
    skipped = []
    labels = page_labels(SJIS_SPANS, raw, annotations, names, skipped, overlaps="first")
    labels = [names[i] for i in labels]
    assert labels == ["B-名前", "I-名前", "I-名前", "B-別名", "I-別名", "O"] and not skipped


def test_an_unreadable_page_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="missing.html: cannot read the page"):
        RawPage.read(tmp_path / "missing.html")
    with pytest.raises(UserError, match="cannot read the page"):
        RawPage.read(tmp_path)  # a directory


def test_shift_jis_labels_records_and_scores_round_trip(tmp_path):
    """Labeling, prediction and scoring all read the Shift_JIS page as the localizer does: the
    gold labels turned back into records are the gold records, exact text included."""
    shinra = tmp_path / "shinra"
    (shinra / "html" / "1.6.5.3").mkdir(parents=True)
    (shinra / "html" / "1.6.5.3" / "1.html").write_bytes(SJIS_PAGE.encode("cp932"))
    (shinra / "annotation").mkdir()
    gold = [annotation("名前", (1, 9), (1, 15), "東京国際空港"),
            annotation("別名", (2, 4), (2, 7), "羽田①"),
            annotation("IATA", (2, 16), (2, 19), "HND")]  # fmt: skip
    lines = [json.dumps({"page_id": a.page_id, "ENE": a.ene, "attribute": a.attribute,
                         **gold_records([a], {"1"})[0]}, ensure_ascii=False)
             for a in gold]  # fmt: skip
    (shinra / "annotation" / "1.6.5.3_dist.jsonl").write_text("\n".join(lines) + "\n\n")
    localized = tmp_path / "localized"
    localized.mkdir()
    row = {"page_id": "1", "category": "1.6.5.3", "source": "1.6.5.3/1.html",
           "input_ids": list(range(10, 16)), "bbox": [[0, 0, 1, 1]] * 6,
           "html_span": SJIS_SPANS}  # fmt: skip
    pq.write_table(pa.Table.from_pylist([row]), localized / "part-00000.parquet")
    data = load_pages(shinra, localized, overlaps="first")
    assert not data.skipped
    (page,) = data.pages
    records = Decoder(data.dirs, data.names, 5).records(page, page.labels, "1.6.5.3", None)
    assert {r["title"] for r in records} == {"東京国際空港"}  # read from the page for its records
    expected = gold_records(data.annotations, {"1"})
    key = lambda r: r["attribute"]  # noqa: E731
    assert [r["html_offset"] for r in sorted(records, key=key)] == [
        r["html_offset"] for r in sorted(expected, key=key)
    ]
    assert score(expected, records)["html_offset"]["micro"]["f1"] == 1.0
    assert html_mismatches(records, shinra / "html") == []
