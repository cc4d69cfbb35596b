"""Predicted labels back into SHINRA records, and gold annotations as records.

A record's `html_offset.text` is exactly the raw HTML between its offsets; it carries a
`text_offset` too where SHINRA's plain text of the page is given and rebuilt exactly
(layoutja.shinra.plaintext), and its attribute as the page's ENE spells it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from layoutja.shinra.data import Page, ShinraDir
from layoutja.shinra.labels import (
    OUTSIDE,
    Annotation,
    allowed_labels,
    attribute_name,
    bridge_gaps,
)
from layoutja.shinra.leaderboard import kept_attributes
from layoutja.shinra.pagetree import page_title
from layoutja.shinra.plaintext import PlainText
from layoutja.shinra.rawpage import RawPage


def spelling_for(attributes: dict[str, set[str]], ene: str, labeled: set[str]) -> dict[str, str]:
    """Label attribute → the ENE's spelling of it, for the labeled attributes that are the
    ENE's (`kept_attributes`): records carry the ENE's spelling, so that exact-string scorers
    match."""
    spelled = {attribute_name(a): a for a in attributes.get(ene, ())}
    return {a: spelled[attribute_name(a)] for a in kept_attributes(attributes, ene, labeled)}


def decode(
    page: Page, labels: Sequence[int], names: list[str], raw: RawPage, ene: str,
    spelling: dict[str, str] | None, plain: PlainText | None = None,
) -> list[dict]:  # fmt: skip
    """SHINRA records for the B-/I- runs of a page's predicted labels, read as the published
    system read them: outside a value `B-x` or `I-x` opens one; inside, `I-` of its attribute
    extends it, `I-` of another or any `B-` closes it and opens the next, O closes it. A value
    still open at the end of the page is kept (the published loop dropped it). `spelling` maps
    label attributes to the ENE's spelling of them; attributes it lacks are not the ENE's and
    give no record (None: every attribute, as labeled)."""
    records, current = [], None
    for i, label in enumerate([*labels, 0]):
        name = names[label] if i < len(labels) else OUTSIDE
        attribute = name[2:]
        if current and (name == OUTSIDE or name.startswith("B-") or attribute != current[0]):
            records.append(current)
            current = None
        if name != OUTSIDE and current is None:  # B-x, or an I-x with no B-x before it
            current = [attribute, i, i]
        elif current:
            current[2] = i
    out = []
    for attribute, first, last in records:
        if spelling is None or attribute in spelling:
            spelled = attribute if spelling is None else spelling[attribute]
            record = _record(page, raw, plain, ene, spelled, first, last)
            if record:
                out.append(record)
    return out


def _record(page: Page, raw: RawPage, plain: PlainText | None, ene: str, attribute: str,
            first: int, last: int) -> dict | None:  # fmt: skip
    l0, c0 = (int(x) for x in page.html_span[first][:2])
    l1, c1 = (int(x) for x in page.html_span[last][2:])
    text = raw.text((l0, c0), (l1, c1))
    if text is None:
        return None
    offset = {"start": {"line_id": l0, "offset": c0}, "end": {"line_id": l1, "offset": c1}}
    record = {"page_id": page.page_id, "title": page.title, "ENE": ene, "attribute": attribute,
              "html_offset": {**offset, "text": text}}  # fmt: skip
    text_offset = plain.offset((l0, c0), (l1, c1)) if plain else None
    if text_offset:
        record["text_offset"] = text_offset
    return record


class Decoder:
    """Records of a SHINRA directory's pages from the model's top labels, by the published
    post-processing: per token the first of them that is O or an attribute of the page's
    category (`allowed_labels`), gaps fixed (`bridge_gaps`, `bridge` O tokens at most; 0: off),
    then decoded; each raw page (and its plain text) is read once."""

    def __init__(self, dirs: ShinraDir, names: list[str], bridge: int):
        self.dirs, self.names, self.bridge = dirs, names, bridge

    def records(self, page: Page, top: np.ndarray, ene: str,
                spelling: dict[str, str] | None) -> list[dict]:  # fmt: skip
        """The page's records as of category `ene` (its title read from the page if empty),
        from its tokens' best labels (`top`: (tokens, k), best first); `spelling` (as `decode`
        takes it) says which attributes are the category's (None: all)."""
        raw = RawPage.read(page.path)
        page.title = page.title or page_title(raw.source)
        path = self.dirs.plain_path(page)
        plain = PlainText.matching(raw, path) if path.exists() else None
        allowed = np.array([spelling is None or name == OUTSIDE or name[2:] in spelling
                            for name in self.names])  # fmt: skip
        labels = bridge_gaps(allowed_labels(top, allowed).tolist(), self.names, self.bridge)
        return decode(page, labels, self.names, raw, ene, spelling, plain)


def gold_records(annotations: list[Annotation], pages: set[str]) -> list[dict]:
    """Annotations of `pages` as SHINRA records (for scoring)."""
    return [
        {"page_id": a.page_id, "ENE": a.ene, "attribute": a.attribute,
         "html_offset": {"start": {"line_id": a.start[0], "offset": a.start[1]},
                         "end": {"line_id": a.end[0], "offset": a.end[1]}, "text": a.text}}
        for a in annotations if a.page_id in pages
    ]  # fmt: skip


def write_jsonl(records: Iterable[dict], out: Path) -> int:
    """Write records as JSONL as they come; returns how many."""
    count = 0
    with open(out, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count
