"""The SHINRA 2022 leaderboard input: the pages to extract from, each with its category.

One JSON object per line, the output of a category classifier:

    {"page_id": "123", "title": "...", "ENEs": {"<system name>": [{"prob": 0.9, "ENE": "1.6.5.3"},
                                                                  ...]}}

The published system took each page's category from the entry with the highest `prob` and kept
only that category's attributes (`kept_attributes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from layoutja.common import read_jsonl
from layoutja.shinra.labels import attribute_name


def _page(record: dict, system: str | None) -> tuple[str, str, str]:
    systems = record["ENEs"]
    if not isinstance(systems, dict) or not systems:
        raise TypeError('"ENEs" is not a non-empty object of system name → entries')
    present = ", ".join(map(repr, sorted(systems)))
    if system is None and len(systems) > 1:
        raise ValueError(f"several systems in ENEs ({present}): choose one with --system NAME")
    if system is not None and system not in systems:
        raise ValueError(f"no system {system!r} in ENEs (present: {present})")
    entries = systems[system if system is not None else next(iter(systems))]
    if not entries:
        raise ValueError("no ENE entries")
    best = max(entries, key=lambda e: float(e["prob"]))  # the first of equal ones
    return str(record["page_id"]), str(record["title"]), str(best["ENE"])


def read_leaderboard(path: str | Path, system: str | None = None) -> dict[str, tuple[str, str]]:
    """page_id → (title, ENE id of the entry with the highest prob) of a leaderboard input JSONL.

    `system` chooses among several system names in `ENEs`; with one, it may be left out. A line
    that names several systems and no `system`, lacks the chosen one, has no entries, or gives a
    page again is a UserError naming the file, the line and, for systems, the names present.
    """
    pages: dict[str, tuple[str, str]] = {}

    def add(record: dict) -> None:
        page_id, title, ene = _page(record, system)
        if page_id in pages:
            raise ValueError(f"page {page_id} given again")
        pages[page_id] = (title, ene)

    read_jsonl(path, add, "a leaderboard page")
    return pages


def kept_attributes(
    definitions: Mapping[str, Iterable[str]], ene: str, attributes: Iterable[str]
) -> set[str]:
    """Those of `attributes` (a model's label attributes) to keep on a page classified as `ene`:
    the ENE's attributes in `definitions` (ENE → attributes with extraction_task, as
    categories.read_definitions reads them), names compared NFKC-normalized and stripped,
    as labels name attributes. An ENE the definitions lack keeps none: the published system kept
    only the chosen category's attributes."""
    wanted = {attribute_name(a) for a in definitions.get(ene, ())}
    return {a for a in attributes if attribute_name(a) in wanted}
