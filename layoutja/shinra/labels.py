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

Predicted labels go back to values by the published post-processing, rule by rule: per token
the first of the model's top 5 labels that belongs to the page's category (`allowed_labels`),
then its gap fixing (`bridge_gaps`); layoutja.shinra.records decodes the result.
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
    file: str = ""  # the name of the annotation file it comes from


def read_annotations(paths: list[Path]) -> list[Annotation]:
    """Annotations from SHINRA JSONL files (`annotation/<category>_dist.jsonl`)."""

    def annotations(path: Path) -> list[Annotation]:
        def parse(r: dict) -> Annotation:
            offset = r["html_offset"]
            start, end = offset["start"], offset["end"]
            return Annotation(str(r["page_id"]), str(r["ENE"]), r["attribute"],
                              (int(start["line_id"]), int(start["offset"])),
                              (int(end["line_id"]), int(end["offset"])), offset["text"],
                              path.name)  # fmt: skip

        return read_jsonl(path, parse, "a SHINRA annotation")

    return [a for path in paths for a in annotations(path)]


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


def allowed_labels(top: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Per token, the first of its top-k label ids (`top`: (n, k), best first) that `allowed` (a
    bool per label id, O's included) admits, O (0) where none of them is: the published choice of
    a label of the page's category, with k = 5 (k = 1: the argmax, or O where it is not the
    category's)."""
    top = np.asarray(top).reshape(len(top), -1)
    ok = allowed[top]
    chosen = top[np.arange(len(top)), ok.argmax(1)]
    return np.where(ok.any(1), chosen, 0).astype(np.int32)


def bridge_gaps(labels: Sequence[int], names: Sequence[str], max_gap: int) -> list[int]:
    """`labels` (ids into `names`) with the published gap fixing applied (`fix_o_tags`, whose
    search limit of 5 is a `max_gap` of 3, the recipes' `finetune.bridge_gaps`; 0: off).

    Each `I-x` that follows an O (those of the input, in order, each seeing the rewrites before
    it) looks back over the `max_gap` positions before that O, nearest first:
    - the same `I-x` first: the O's between become `I-x` (the value goes on over the gap);
    - any other tag that is not O first (`B-x` included): the `I-x` becomes `B-x`, a new value;
    - only O's, and the look-back reached the first token (which it never reads): `B-x`;
    - only O's: nothing changes.
    """
    out = list(labels)
    if max_gap <= 0:
        return out
    index = {name: i for i, name in enumerate(names)}
    after_o = [i for i in range(1, len(out))
               if names[out[i - 1]] == OUTSIDE and names[out[i]].startswith("I-")]  # fmt: skip
    for i in after_o:
        tag = out[i]
        begin = index["B-" + names[tag][2:]]
        floor = max(0, i - max_gap - 2)  # positions i-2 down to floor+1 are looked at
        for j in range(i - 2, floor, -1):
            if out[j] == tag:
                out[j + 1 : i] = [tag] * (i - j - 1)
                break
            if names[out[j]] != OUTSIDE:
                out[i] = begin
                break
        else:
            if floor == 0:
                out[i] = begin
    return out
