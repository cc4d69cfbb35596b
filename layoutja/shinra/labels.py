"""SHINRA attribute-extraction annotations as B-/I-/O token labels of localized pages.

An annotation points into the raw HTML file by (line, offset) positions, counted as the official
checker counts them (`str.splitlines`, 0-based lines, character columns, end exclusive); every
localized token carries its raw range the same way (`html_span`). A token is labeled with an
annotation when their raw ranges overlap: `B-<attribute>` for the first such token, `I-` for
the rest. One label set covers every ENE (attributes are named, not numbered per ENE; a name
is NFKC-normalized and stripped, `attribute_name`).

Nothing is mislabeled silently. An annotation is skipped, and reported with its reason, when:
- its offsets fall outside the page, or the raw text between them is not its `text`;
- its page is not among the localized pages, or no rendered token covers it;
- it overlaps (shares a token with) an annotation already placed: annotations are placed in
  file order, so the first of overlapping ones labels the tokens, as in the published system
  (`overlaps="longest"`: longest first, then by position and attribute name);
- its attribute has `extraction_task: false` in the ENE definitions (when given).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layoutja.common import read_jsonl
from layoutja.shinra.rawpage import RawPage

OUTSIDE = "O"


@dataclass(frozen=True)
class Annotation:
    page_id: str
    ene: str
    attribute: str
    start: tuple[int, int]  # (line, offset)
    end: tuple[int, int]
    text: str


def _annotation(r: dict) -> Annotation:
    offset = r["html_offset"]
    start, end = offset["start"], offset["end"]
    return Annotation(str(r["page_id"]), str(r["ENE"]), r["attribute"],
                      (int(start["line_id"]), int(start["offset"])),
                      (int(end["line_id"]), int(end["offset"])), offset["text"])  # fmt: skip


def read_annotations(paths: list[Path]) -> list[Annotation]:
    """Annotations from SHINRA JSONL files (`annotation/<ENE>_dist.jsonl`)."""
    return [a for path in paths for a in read_jsonl(path, _annotation, "a SHINRA annotation")]


def _definition(r: dict) -> tuple[str, set[str]]:
    ene = str(r["ENE_id"] if "ENE_id" in r else r["ENE"])
    return ene, {a["name"] for a in r["attributes"] if a.get("extraction_task", True)}


def read_extraction_attributes(path: Path) -> dict[str, set[str]]:
    """ENE → names of its attributes with `extraction_task` true (the ENE definition JSONL)."""
    return dict(read_jsonl(path, _definition, "an ENE definition"))


def attribute_name(attribute: str) -> str:
    """An attribute as labels name it: NFKC-normalized and stripped, so that one label covers
    its spellings in every ENE (as in the published system)."""
    return unicodedata.normalize("NFKC", attribute).strip()


def label_names(attributes: set[str]) -> list[str]:
    """["O", "B-a", "I-a", "B-b", ...] in a fixed order, attributes named by `attribute_name`."""
    names = [OUTSIDE]
    for attribute in sorted({attribute_name(a) for a in attributes}):
        names += [f"B-{attribute}", f"I-{attribute}"]
    return names


def page_labels(
    spans: np.ndarray,
    raw: RawPage,
    annotations: list[Annotation],
    names: list[str],
    skipped: list[tuple[str, Annotation]],
    *,
    overlaps: str,
) -> np.ndarray:
    """Label ids (int32) for the tokens of one page (their `html_span`s, an (n, 4) array),
    given its annotations (in file order); annotations that cannot be placed go to `skipped` as
    (reason, annotation). Of overlapping annotations the `overlaps` one ("first" or "longest")
    labels the tokens."""
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 4)
    index = {name: i for i, name in enumerate(names)}
    starts = raw.indexes(spans[:, 0], spans[:, 1])
    ends = raw.indexes(spans[:, 2], spans[:, 3])
    on_page = (starts >= 0) & (ends >= 0)
    labels = np.zeros(len(spans), dtype=np.int32)
    placed = []
    for a in dict.fromkeys(annotations):  # an annotation given twice is placed once
        start, end = raw.index(a.start), raw.index(a.end)
        if start is None or end is None or end <= start:
            skipped.append(("offsets outside the page", a))
        elif raw.text(a.start, a.end) != a.text:
            skipped.append(("text does not match the offsets", a))
        elif f"B-{attribute_name(a.attribute)}" not in index:
            skipped.append(("attribute not extracted", a))
        else:
            placed.append((start, end, a))
    if overlaps == "longest":
        placed.sort(key=lambda p: (-(p[1] - p[0]), p[0], p[2].attribute))
    for start, end, a in placed:
        # Tokens whose raw range overlaps [start, end) (an empty one: starts inside it), in
        # reading order of the raw file.
        overlap = on_page & (starts < end) & (ends > start) & ((ends > starts) | (starts >= start))
        hits = np.flatnonzero(overlap)
        hits = hits[np.argsort(starts[hits], kind="stable")]
        if not len(hits):
            skipped.append(("no rendered token", a))
        elif labels[hits].any():
            skipped.append(("overlaps another annotation", a))
        else:
            name = attribute_name(a.attribute)
            labels[hits] = index[f"I-{name}"]
            labels[hits[0]] = index[f"B-{name}"]
    return labels


def bridge_gaps(labels: Sequence[int], names: Sequence[str], max_gap: int) -> list[int]:
    """`labels` (ids into `names`) with every run of at most `max_gap` O tokens that lies between
    two `I-x` tokens of the same attribute x relabeled `I-x`: the published post-processing
    (a `max_gap` of 5, the recipe's `finetune.bridge_gaps`); a `max_gap` of 0 turns it off.

    The published rule names two I- tokens, and it is read literally: the token after the run
    must be `I-x` (a `B-x` there starts a new value, so the run stays O), and so must the token
    before it (`B-x O I-x` is left as it is; after `B-x I-x O I-x` the run is bridged).
    """
    out = list(labels)
    if max_gap <= 0:
        return out
    left = None  # index of the last non-O token
    for i, label in enumerate(out):
        if names[label] == OUTSIDE:
            continue
        if (
            left is not None
            and 0 < i - left - 1 <= max_gap
            and names[label].startswith("I-")
            and out[left] == label
        ):
            out[left + 1 : i] = [label] * (i - left - 1)
        left = i
    return out
