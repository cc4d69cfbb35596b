"""SHINRA categories: the ENE definitions, and the ENE id of each category directory.

SHINRA 2022's training data as downloaded (`ene-20221116/`) names its categories in English:
`html/Airport/<page_id>.html`, `annotation/Airport_dist.jsonl`, while every annotation record
carries the ENE id (`"ENE": "1.6.5.3"`), and so do the leaderboard input and the submissions. The
ENE definitions (`Shinra2022_ENE_Definition_*.jsonl`, shipped with the leaderboard input, not
beside the annotations) tie the two together: `ENE_id`, `name.en`, `attributes[{name,
extraction_task}]`. The published system keyed training categories by `name.en` and its output
by `ENE_id`; layoutja labels every page with its ENE id, so that predictions, dev F1 and gold
speak of the same categories, whichever way the directories are named.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from layoutja.common import UserError, read_jsonl
from layoutja.shinra.labels import Annotation

ENE_ID = re.compile(r"\d+(\.\d+)*")  # "1.6.5.3"; a directory named so is its own id
DIST = "_dist.jsonl"  # annotation/<category>_dist.jsonl (`_dist_for_view.jsonl` is for viewing)


@dataclass(frozen=True)
class Definitions:
    """The ENE definitions of a JSONL file."""

    path: Path
    attributes: dict[str, set[str]]  # ENE id → its attributes with extraction_task true
    ids: dict[str, str]  # name.en → ENE id


def read_definitions(path: str | Path) -> Definitions:
    """The ENE definitions JSONL (`ENE_id`, `name{ja,en}`, `attributes[{name,
    extraction_task}]`); an ENE without `attributes` has none to extract."""
    attributes, ids = {}, {}

    def add(record: dict) -> None:
        ene = str(record["ENE_id"] if "ENE_id" in record else record["ENE"])
        attributes[ene] = {a["name"] for a in record.get("attributes", ())
                           if a.get("extraction_task", True)}  # fmt: skip
        name = record.get("name")
        if isinstance(name, dict) and name.get("en"):
            ids[str(name["en"])] = ene

    read_jsonl(path, add, "an ENE definition")
    return Definitions(Path(path), attributes, ids)


def find_definitions(root: Path) -> Path | None:
    """An ENE definitions file in `root` (`*definition*.jsonl`, any case, as SHINRA spells it
    `..._ENE_Definition_...`), None without one."""
    found = sorted(p for p in root.glob("*.jsonl") if "definition" in p.name.lower())
    return found[0] if found else None


def annotation_files(root: Path) -> list[Path]:
    """The annotation files of `root/annotation`: `<category>_dist.jsonl` where there are such,
    else every `.jsonl` (the viewing copies `*_dist_for_view.jsonl` never: they repeat the
    records)."""
    files = sorted((root / "annotation").glob("*.jsonl"))
    dist = [p for p in files if p.name.endswith(DIST)]
    return dist or [p for p in files if not p.name.endswith("_for_view.jsonl")]


def annotated_ids(annotations: Iterable[Annotation]) -> dict[str, set[str]]:
    """Category → the ENE ids its annotation file's records carry (the category named by the
    file, `annotation/<category>_dist.jsonl`)."""
    ids = defaultdict(set)
    for a in annotations:
        if a.file.endswith(DIST):
            ids[a.file[: -len(DIST)]].add(a.ene)
    return dict(ids)


class Categories:
    """Category directory name → ENE id: the name itself where it is an ENE id, else the ENE
    whose definition's `name.en` it is, or the one its annotation file's records carry; where
    both say, they must agree. `where` (the html/ directory) names the category in errors."""

    def __init__(self, where: Path, definitions: Definitions | None,
                 annotated: dict[str, set[str]]):  # fmt: skip
        self.where, self.definitions, self.annotated = where, definitions, annotated
        self._ids: dict[str, str] = {}

    def ene_id(self, category: str) -> str:
        if category not in self._ids:
            self._ids[category] = self._resolve(category)
        return self._ids[category]

    def _resolve(self, category: str) -> str:
        place = self.where / category if category else self.where
        if not category:
            raise UserError(f"{place}: pages outside a category directory (html/<category>/): "
                            "their ENE comes from a leaderboard input (--pages)")  # fmt: skip
        defined = self.definitions.ids.get(category) if self.definitions else None
        known = set(self.definitions.attributes) if self.definitions else set()
        if category in known or (ENE_ID.fullmatch(category) and defined is None):
            return category
        annotated = self.annotated.get(category, set())
        if len(annotated) > 1:
            several = ", ".join(sorted(annotated))
            raise UserError(f"annotation/{category}{DIST}: records of several ENEs ({several}): "
                            f"cannot tell the ENE of {place}")  # fmt: skip
        from_file = next(iter(annotated), None)
        if defined and from_file and defined != from_file:
            raise UserError(
                f"{place}: the ENE definitions ({self.definitions.path}) name {category!r} "
                f"{defined}, its annotations (annotation/{category}{DIST}) say {from_file}"
            )
        if defined or from_file:
            return defined or from_file
        given = f"no definition in {self.definitions.path} has name.en {category!r}" if \
            self.definitions else "no ENE definitions were given"  # fmt: skip
        raise UserError(
            f"{place}: cannot tell the ENE id of category {category!r}: {given} and no "
            f"annotation/{category}{DIST} names it; give the ENE definitions with --definitions "
            "FILE (SHINRA 2022: Shinra2022_ENE_Definition_*.jsonl of the leaderboard input)"
        )
