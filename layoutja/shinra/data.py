"""A SHINRA attribute-extraction data set as labeled windows, and predictions back as records.

    SHINRA_DIR/annotation/<ENE>_dist.jsonl   gold annotations (html_offset)
    SHINRA_DIR/html/<ENE>/<page_id>.html     pages
    SHINRA_DIR/*definition*.jsonl            optional: ENE attributes and extraction_task flags

Pages are localized with the localization stage into a Parquet directory (resumable, so
already localized pages are reused), labeled through layoutja.shinra.labels, split into train/dev by
a hash of the page id, and cut into windows as for pretraining. At prediction time a token takes
its label from the window where it is furthest from an inner edge: `margin // 2` tokens are
dropped at each inner window edge.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from layoutja.common import UserError
from layoutja.pretrain.windows import CLS_BOX, SEP_BOX, SpecialIds, window_spans
from layoutja.shinra.labels import (
    OUTSIDE,
    Annotation,
    label_names,
    page_labels,
    read_annotations,
    read_extraction_attributes,
)
from layoutja.shinra.leaderboard import read_leaderboard
from layoutja.shinra.rawpage import RawPage

IGNORE = -100  # label of [CLS], [SEP] and padding: no loss


@dataclass
class Page:
    page_id: str
    ene: str
    title: str
    path: Path  # the raw HTML file
    input_ids: list[int]
    bbox: list[list[int]]
    html_span: list[list[int]]
    labels: list[int] = field(default_factory=list)


@dataclass
class ShinraSet:
    pages: list[Page]
    names: list[str]  # label names, index = label id
    annotations: list[Annotation]
    skipped: list[tuple[str, Annotation]]  # annotations not placed, with the reason
    attributes: dict[str, set[str]]  # ENE → attributes that can be predicted for it


def layout(shinra_dir: Path) -> tuple[Path, list[Path], Path | None]:
    """(html directory, annotation files, ENE definition file or None) of a SHINRA directory."""
    html = shinra_dir / "html"
    if not html.is_dir():
        raise UserError(f"{shinra_dir}: no html/ directory (SHINRA layout html/<ENE>/<id>.html)")
    annotations = sorted((shinra_dir / "annotation").glob("*.jsonl"))
    definitions = sorted(shinra_dir.glob("*definition*.jsonl"))
    return html, annotations, definitions[0] if definitions else None


def _title(raw: str) -> str:
    match = re.search(r"<title>(.*?)</title>", raw, re.S | re.I)
    return match.group(1).split(" - ")[0].strip() if match else ""


def load_pages(shinra_dir: Path, localized: Path, names: list[str] | None = None) -> ShinraSet:
    """Localized pages of a SHINRA directory with their labels (from its annotations).

    `names` fixes the label set (a fine-tuned model's); by default it is built from the ENE
    definitions (attributes with extraction_task) or, without them, the annotated attributes.
    """
    html_dir, annotation_files, definitions = layout(shinra_dir)
    annotations = read_annotations(annotation_files)
    if definitions:
        attributes = read_extraction_attributes(definitions)
    else:
        attributes = defaultdict(set)
        for a in annotations:
            attributes[a.ene].add(a.attribute)
    names = names or label_names(set().union(*attributes.values()) if attributes else set())
    by_page = defaultdict(list)
    skipped = []
    for a in annotations:
        if definitions and a.ene not in attributes:
            skipped.append(("unknown ENE", a))
        else:
            by_page[a.page_id].append(a)
    pages = []
    columns = ["page_id", "category", "source", "input_ids", "bbox", "html_span"]
    parts = sorted(glob.glob(str(localized / "part-*.parquet")))
    if not parts:
        raise UserError(f"{localized}: no localized pages")
    for row in pq.read_table(parts, columns=columns).to_pylist():
        raw = RawPage.read(html_dir / row["source"])
        page = Page(row["page_id"], row["category"], _title(raw.source), raw.path,
                    row["input_ids"], row["bbox"], row["html_span"])  # fmt: skip
        page.labels = page_labels(
            page.html_span, raw, by_page.pop(page.page_id, []), names, skipped
        )
        pages.append(page)
    skipped += [("page not localized", a) for page in by_page.values() for a in page]
    return ShinraSet(pages, names, annotations, skipped, dict(attributes))


def read_leaderboard_pages(path: Path) -> dict[str, tuple[str, list[str]]]:
    """page_id → (title, [its category]) from a leaderboard input JSONL (format and category
    choice: layoutja.shinra.leaderboard), in the shape predict.records_for takes."""
    return {page: (title, [ene]) for page, (title, ene) in read_leaderboard(path).items()}


def is_dev(page_id: str, fraction: float, seed: int) -> bool:
    """Deterministic train/dev split by page."""
    digest = hashlib.blake2b(f"{seed}:{page_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def windows(
    page: Page, specials: SpecialIds, max_length: int = 512, margin: int = 128
) -> list[dict]:
    """Labeled windows of a page: input_ids, bbox, labels and the token range they cover."""
    out = []
    for start, end in window_spans(len(page.input_ids), max_length - 2, margin):
        out.append(
            {
                "input_ids": [specials.cls, *page.input_ids[start:end], specials.sep],
                "bbox": [CLS_BOX, *page.bbox[start:end], SEP_BOX],
                "labels": [IGNORE, *page.labels[start:end], IGNORE],
                "span": (start, end),
            }
        )
    return out


def merge_windows(length: int, spans: list[tuple[int, int]], margin: int) -> list[tuple]:
    """For each window, the token range whose labels it decides (inner edges lose margin//2)."""
    keep = []
    drop = margin // 2
    for k, (start, end) in enumerate(spans):
        first = start if k == 0 else start + drop
        last = end if k == len(spans) - 1 else end - drop
        keep.append((first, last))
    assert not spans or (keep[0][0] == 0 and keep[-1][1] == length)
    return keep


def decode(page: Page, labels: list[int], names: list[str], raw: RawPage, ene: str,
           allowed: set[str] | None) -> list[dict]:  # fmt: skip
    """SHINRA records for the B-/I- runs of a page's predicted labels."""
    records, current = [], None
    for i, label in enumerate([*labels, 0]):
        name = names[label] if i < len(labels) else OUTSIDE
        attribute = name[2:]
        if current and (name == OUTSIDE or name.startswith("B-") or attribute != current[0]):
            records.append(_record(page, raw, ene, *current))
            current = None
        if name != OUTSIDE and current is None:  # B-x, or an I-x with no B-x before it
            current = [attribute, i, i]
        elif current:
            current[2] = i
    return [r for r in records if r and (allowed is None or r["attribute"] in allowed)]


def _record(page: Page, raw: RawPage, ene: str, attribute: str, first: int, last: int):
    l0, c0 = page.html_span[first][:2]
    l1, c1 = page.html_span[last][2:]
    text = raw.text((l0, c0), (l1, c1))
    if text is None:
        return None
    offset = {"start": {"line_id": l0, "offset": c0}, "end": {"line_id": l1, "offset": c1}}
    return {"page_id": page.page_id, "title": page.title, "ENE": ene, "attribute": attribute,
            "html_offset": {**offset, "text": text}}  # fmt: skip


def gold_records(annotations: list[Annotation], pages: set[str]) -> list[dict]:
    """Annotations of `pages` as SHINRA records (for scoring)."""
    return [
        {"page_id": a.page_id, "ENE": a.ene, "attribute": a.attribute,
         "html_offset": {"start": {"line_id": a.start[0], "offset": a.start[1]},
                         "end": {"line_id": a.end[0], "offset": a.end[1]}, "text": a.text}}
        for a in annotations if a.page_id in pages
    ]  # fmt: skip
