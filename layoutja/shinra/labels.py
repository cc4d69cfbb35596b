"""SHINRA attribute-extraction annotations as B-/I-/O token labels of localized pages.

An annotation points into the raw HTML file by (line, offset) positions, counted as the official
checker counts them (`str.splitlines`, 0-based lines, character columns, end exclusive); every
localized token carries its raw range the same way (`html_span`). A token is labeled with an
annotation when their raw ranges overlap: `B-<attribute>` for the first such token, `I-` for
the rest. One label set covers every ENE (attributes are named, not numbered per ENE).

Nothing is mislabeled silently. An annotation is skipped, and reported with its reason, when:
- its offsets fall outside the page, or the raw text between them is not its `text`;
- its page is not among the localized pages, or no rendered token covers it;
- it overlaps an annotation already placed (annotations are placed longest first, then by
  position and attribute name, so the choice is deterministic);
- its attribute has `extraction_task: false` in the ENE definitions (when given).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


def label_names(attributes: set[str]) -> list[str]:
    """["O", "B-a", "I-a", "B-b", ...] in a fixed order."""
    names = [OUTSIDE]
    for attribute in sorted(attributes):
        names += [f"B-{attribute}", f"I-{attribute}"]
    return names


def page_labels(
    spans: list[list[int]],
    raw: RawPage,
    annotations: list[Annotation],
    names: list[str],
    skipped: list[tuple[str, Annotation]],
) -> list[int]:
    """Label ids for the tokens of one page (their `html_span`s), given its annotations;
    annotations that cannot be placed go to `skipped` as (reason, annotation)."""
    index = {name: i for i, name in enumerate(names)}
    starts = [raw.index((l0, c0)) for l0, c0, _, _ in spans]
    ends = [raw.index((l1, c1)) for _, _, l1, c1 in spans]
    labels = [0] * len(spans)
    placed = []
    for a in dict.fromkeys(annotations):  # an annotation given twice is placed once
        start, end = raw.index(a.start), raw.index(a.end)
        if start is None or end is None or end <= start:
            skipped.append(("offsets outside the page", a))
        elif raw.text(a.start, a.end) != a.text:
            skipped.append(("text does not match the offsets", a))
        elif f"B-{a.attribute}" not in index:
            skipped.append(("attribute not extracted", a))
        else:
            placed.append((start, end, a))
    placed.sort(key=lambda p: (-(p[1] - p[0]), p[0], p[2].attribute))
    on_page = [i for i in range(len(spans)) if starts[i] is not None and ends[i] is not None]
    order = sorted(on_page, key=lambda i: starts[i])
    sorted_starts = [starts[i] for i in order]
    for start, end, a in placed:
        # Tokens whose raw range overlaps [start, end), in reading order of the raw file.
        hits = [
            i
            for i in order[: bisect_right(sorted_starts, end - 1)]
            if ends[i] > start and (ends[i] > starts[i] or start <= starts[i] < end)
        ]
        if not hits:
            skipped.append(("no rendered token", a))
        elif any(labels[i] for i in hits):
            skipped.append(("overlaps another annotation", a))
        else:
            labels[hits[0]] = index[f"B-{a.attribute}"]
            for i in hits[1:]:
                labels[i] = index[f"I-{a.attribute}"]
    return labels


def bridge_gaps(labels: Sequence[int], names: Sequence[str], max_gap: int = 5) -> list[int]:
    """`labels` (ids into `names`) with every run of at most `max_gap` O tokens that lies between
    two `I-x` tokens of the same attribute x relabeled `I-x`: the published post-processing
    (`--bridge-gaps 5`); a `max_gap` of 0 turns it off.

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
