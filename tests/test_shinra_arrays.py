"""SHINRA pages as arrays: the localized Parquet read a part at a time, prediction streamed with
windows batched across pages, gap bridging before decoding, the per-category dev split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from layoutja.pretrain.windows import SpecialIds
from layoutja.shinra.data import Page, ShinraDir, dev_split, load_pages, read_parts
from layoutja.shinra.labels import label_names
from layoutja.shinra.predict import predict_pages
from layoutja.shinra.records import Decoder

SPECIALS = SpecialIds(pad=0, cls=2, sep=3, mask=4)


def write_part(path: Path, lengths: list[int], start_id: int = 0) -> None:
    """A localized part of pages with the given token counts (ids count up from start_id)."""
    rows, next_id = [], start_id
    for k, n in enumerate(lengths):
        ids = list(range(next_id, next_id + n))
        next_id += n
        rows.append({"page_id": f"p{start_id}-{k}", "category": "1.6.5.3",
                     "source": f"1.6.5.3/p{k}.html", "input_ids": ids,
                     "bbox": [[i % 1000, 0, i % 1000, 1] for i in ids],
                     "html_span": [[0, i, 0, i + 1] for i in range(n)]})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_pages_are_read_a_part_at_a_time_as_arrays(tmp_path):
    write_part(tmp_path / "part-00000.parquet", [3, 0, 5])
    write_part(tmp_path / "part-00001.parquet", [4], start_id=100)
    parts = list(read_parts(tmp_path, tmp_path / "html"))
    assert [[len(p.input_ids) for p in part] for part in parts] == [[3, 0, 5], [4]]
    page = parts[0][2]
    assert page.input_ids.tolist() == [3, 4, 5, 6, 7]
    assert page.bbox.tolist()[0] == [3, 0, 3, 1] and page.html_span.tolist()[4] == [0, 4, 0, 5]
    assert page.path == tmp_path / "html" / "1.6.5.3" / "p2.html"
    # 4 + 8 + 16 bytes a token: int32 ids, int16 boxes, int32 spans; no Python object per token
    assert (page.input_ids.dtype, page.bbox.dtype, page.html_span.dtype) == (
        np.int32,
        np.int16,
        np.int32,
    )
    per_token = sum(a.nbytes for a in (page.input_ids, page.bbox, page.html_span)) / 5
    assert per_token == 28
    # the pages of a part are views of one array per column
    assert page.input_ids.base is parts[0][0].input_ids.base is not None


class ModuloClassifier(torch.nn.Module):
    """A stand-in token classifier of 3 labels: a token's best label is its id modulo 3, the
    next best that plus 1 (modulo 3), and so on."""

    num_labels = 3

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches = []

    def top_labels(self, batch: dict, k: int) -> torch.Tensor:
        self.batches.append(batch["input_ids"].shape[0])
        ids = batch["input_ids"].unsqueeze(-1)
        return (ids + torch.arange(k)) % 3


def page_of(n: int, first_id: int) -> Page:
    ids = np.arange(first_id, first_id + n, dtype=np.int32)
    return Page(str(first_id), "x", "", Path("x"), ids, np.zeros((n, 4), np.int16), None)


def test_prediction_streams_pages_and_batches_windows_across_them():
    lengths = [300, 0, 5, 70, 1, 200, 9] * 3
    starts = np.cumsum([10, *lengths[:-1]])
    pulled = []

    def pages():
        for n, start in zip(lengths, starts):
            pulled.append(n)
            yield page_of(n, int(start))

    classifier = ModuloClassifier()
    stream = predict_pages(classifier, pages(), SPECIALS, max_length=64, margin=16, batch_size=4,
                           top_k=5)  # fmt: skip
    results = []
    for page, labels in stream:
        results.append((page, labels))
        # Pages are taken as the batches need them: never more than one batch of pages ahead.
        assert len(pulled) - len(results) <= 4
    assert [len(p.input_ids) for p, _ in results] == lengths  # in order, each once
    for page, labels in results:  # every token labeled by the window that decides it
        assert labels.shape == (len(page.input_ids), 3)  # top 5 of 3 labels: all 3, best first
        assert labels[:, 0].tolist() == (page.input_ids % 3).tolist()
        assert labels[:, 2].tolist() == ((page.input_ids + 2) % 3).tolist()
    # Windows of 62 tokens overlapping by 16 (stride 46); full batches of 4 but the last.
    windows = sum(1 if n <= 62 else -(-(n - 16) // 46) for n in lengths if n)
    assert sum(classifier.batches) == windows and set(classifier.batches[:-1]) == {4}
    assert classifier.training  # left in training mode, as it came


def test_gaps_are_bridged_before_decoding(tmp_path):
    (tmp_path / "html" / "1").mkdir(parents=True)
    html = tmp_path / "html" / "1" / "7.html"
    html.write_text("<td>東京都の大田の区</td>", "utf-8")
    names = label_names({"所在地"})  # O, B-所在地, I-所在地
    # 東京 / 都 / の / 大田 / の / 区
    spans = np.array([[0, 4, 0, 6], [0, 6, 0, 7], [0, 7, 0, 8], [0, 8, 0, 10], [0, 10, 0, 11],
                      [0, 11, 0, 12]], dtype=np.int32)  # fmt: skip
    page = Page("7", "1", "", html, np.zeros(6, np.int32), np.zeros((6, 4), np.int16), spans)
    labels = np.array([1, 2, 0, 2, 0, 2])  # B I O I O I: gaps of one O between I- tokens
    dirs = ShinraDir.of(tmp_path)
    texts = lambda bridge: [  # noqa: E731
        r["html_offset"]["text"]
        for r in Decoder(dirs, names, bridge).records(page, labels, "1", None)
    ]
    assert texts(3) == ["東京都の大田の区"]  # the default, as published
    assert texts(0) == ["東京都", "大田", "区"]  # off: each I- run after an O is a value


def test_labels_outside_the_category_give_way_before_gaps_are_bridged(tmp_path):
    (tmp_path / "html" / "1").mkdir(parents=True)
    html = tmp_path / "html" / "1" / "7.html"
    html.write_text("<td>東京都の大田の区</td>", "utf-8")
    names = label_names({"所在地", "国"})  # O, B-国, I-国, B-所在地, I-所在地
    spans = np.array([[0, 4, 0, 6], [0, 6, 0, 7], [0, 7, 0, 8], [0, 8, 0, 10], [0, 10, 0, 11],
                      [0, 11, 0, 12]], dtype=np.int32)  # fmt: skip
    page = Page("7", "1", "", html, np.zeros(6, np.int32), np.zeros((6, 4), np.int16), spans)
    # The best labels B-所在地 I-所在地 I-国 I-所在地 O I-所在地: 国 is not the category's, so the
    # third token takes its second best, O, and the gap is bridged: one value. Dropping 国's
    # records after bridging (as layoutja did) gave two values.
    top = np.array([[3, 0], [4, 0], [2, 0], [4, 0], [0, 4], [4, 0]])
    decoder = Decoder(ShinraDir.of(tmp_path), names, 3)
    texts = lambda spelling, top=top: [  # noqa: E731
        (r["attribute"], r["html_offset"]["text"])
        for r in decoder.records(page, top, "1", spelling)
    ]
    assert texts({"所在地": "所在地"}) == [("所在地", "東京都の大田の区")]
    # every attribute allowed: 国 stays and splits the value
    assert texts(None) == [("所在地", "東京都"), ("国", "の"), ("所在地", "大田の区")]
    # top 1: the argmax, and O where it is not the category's
    assert texts({"所在地": "所在地"}, top[:, :1]) == [("所在地", "東京都の大田の区")]


def test_the_dev_split_takes_a_share_of_each_category():
    def page(page_id: str, ene: str, labels: list[int]) -> Page:
        return Page(page_id, ene, "", Path("x"), np.zeros(1), np.zeros((1, 4)), None,
                    np.array(labels))  # fmt: skip

    pages = [page(f"a{i}", "A", [0, 1, 2]) for i in range(25)]
    pages += [page(f"b{i}", "B", [0, 3]) for i in range(9)]  # int(9 × 0.1) = 0 on dev
    pages += [page(f"c{i}", "C", [0, 5]) for i in range(10)] + [page("c-rare", "C", [7, 8])]
    dev = dev_split(pages, 0.1, 42)
    by_category = {ene: sum(1 for p in pages if p.ene == ene and p.page_id in dev) for ene in "ABC"}
    assert by_category == {"A": 2, "B": 0, "C": 1}
    assert "c-rare" not in dev  # its labels occur on no other page: never held out
    assert dev_split(pages, 0.1, 42) == dev and dev_split(pages, 0.1, 7) != dev


def test_labels_are_stored_beside_the_arrays(tmp_path):
    root = tmp_path / "shinra"
    (root / "html" / "1.6.5.3").mkdir(parents=True)
    (root / "html" / "1.6.5.3" / "p0.html").write_text("abcdefgh", "utf-8")
    (root / "annotation").mkdir()
    gold = {"page_id": "p0-0", "ENE": "1.6.5.3", "attribute": "名前",
            "html_offset": {"start": {"line_id": 0, "offset": 2},
                            "end": {"line_id": 0, "offset": 4}, "text": "cd"}}  # fmt: skip
    (root / "annotation" / "1.6.5.3_dist.jsonl").write_text(json.dumps(gold) + "\n", "utf-8")
    (tmp_path / "loc").mkdir()
    write_part(tmp_path / "loc" / "part-00000.parquet", [6])
    (page,) = load_pages(root, tmp_path / "loc", overlaps="first").pages
    assert page.labels.dtype == np.int32 and page.labels.tolist() == [0, 0, 1, 2, 0, 0]
