"""What the layout buys: two systems' scores side by side, per attribute, by where its values sit.

Each gold value is placed by the elements around its first visible character in the page's
element tree: inside a Wikipedia infobox (a `<table>` whose class has `infobox`), another
table, a list (`<ul>`, `<ol>`, `<dl>`), or else running text; an attribute sits where most of
its values do. Both systems are scored on the same pages under both conventions
(layoutja.shinra.score: the 2019 scorer's html_offset F1 and the 2022 leaderboard's), per
attribute, per location (the mean over its attributes) and overall.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from bs4 import Tag

from layoutja.shinra.pagetree import enclosing
from layoutja.shinra.rawpage import PageFinder, RawPage
from layoutja.shinra.score import normalize_attribute, score, score_leaderboard

LOCATIONS = ("infobox", "table", "list", "running text")
_LISTS = {"ul", "ol", "dl"}


def locations(raw: RawPage, indexes: list[int | None]) -> list[str]:
    """Where each character index of the page sits (one of LOCATIONS), by the elements that
    enclose its first page-text character; None (not on the page) is running text."""
    return [_location(elements) for elements in enclosing(raw, indexes)]


def _location(elements: list[Tag]) -> str:
    # An infobox before any other table (a table nested in it included), a table before a list.
    if any(e.name == "table" and "infobox" in e.get("class", []) for e in elements):
        return "infobox"
    names = {element.name for element in elements}
    if "table" in names:
        return "table"
    return "list" if _LISTS & names else "running text"


def attribute_locations(gold: list[dict], html_dir: Path) -> dict[tuple[str, str], str]:
    """(ENE, attribute) → where most of its gold values sit (ties: the order of LOCATIONS);
    pages are looked up by id (`PageFinder`)."""
    by_page = defaultdict(list)
    for g in gold:
        by_page[(g["page_id"], g["ENE"])].append(g)
    votes: dict[tuple[str, str], Counter] = defaultdict(Counter)
    pages = PageFinder(html_dir)
    for (page_id, ene), records in by_page.items():
        path = pages.find(page_id, ene)
        raw = RawPage.read(path or html_dir / ene / f"{page_id}.html")  # the error names it
        starts = [raw.index((r["html_offset"]["start"]["line_id"],
                             r["html_offset"]["start"]["offset"]))
                  for r in records]  # fmt: skip
        for record, where in zip(records, locations(raw, starts)):
            votes[(ene, record["attribute"])][where] += 1
    return {
        pair: max(LOCATIONS, key=lambda where: (counts[where], -LOCATIONS.index(where)))
        for pair, counts in votes.items()
    }


def compare(gold: list[dict], systems: dict[str, list[dict]], html_dir: Path,
            pages: set[str] | None = None) -> dict:  # fmt: skip
    """Per attribute (grouped by location) and location, and overall: each system's F1 under
    both conventions on `pages` (default: the gold pages). Returns {"systems", "attributes":
    [rows], "locations": {where: {convention: {system: mean F1}}}, "overall": {convention:
    {system: macro F1}}}."""
    pages = pages if pages is not None else {g["page_id"] for g in gold}
    gold = [g for g in gold if g["page_id"] in pages]
    where = attribute_locations(gold, html_dir)
    counts = Counter((g["ENE"], g["attribute"]) for g in gold)
    rows = {pair: {"ENE": pair[0], "attribute": pair[1], "where": where[pair],
                   "gold": counts[pair], "2019": {}, "leaderboard-2022": {}}
            for pair in sorted(counts, key=lambda p: (LOCATIONS.index(where[p]), p))}  # fmt: skip
    overall: dict[str, dict] = {"2019": {}, "leaderboard-2022": {}}
    for name, predicted in systems.items():
        predicted = [p for p in predicted if p["page_id"] in pages]
        old = score(gold, predicted, pages)["html_offset"]
        new = score_leaderboard(gold, predicted)
        overall["2019"][name] = old["macro"]["f1"]
        overall["leaderboard-2022"][name] = new["macro"]["f1"]
        for (ene, attribute), row in rows.items():
            by_name = old["per_ene"][ene]["attributes"][normalize_attribute(attribute)]
            row["2019"][name] = by_name["f1"]
            row["leaderboard-2022"][name] = new["per_ene"][ene]["attributes"][attribute]["f1"]
    by_location = {}
    for location in LOCATIONS:
        mine = [r for r in rows.values() if r["where"] == location]
        if mine:
            by_location[location] = {
                convention: {n: sum(r[convention][n] for r in mine) / len(mine) for n in systems}
                for convention in overall
            }
    return {"systems": list(systems), "attributes": list(rows.values()),
            "locations": by_location, "overall": overall}  # fmt: skip


def format_comparison(result: dict) -> str:
    """The comparison as one Markdown table: F1 per system and the difference (first − second),
    under the 2019 scorer and the 2022 leaderboard's metric."""
    names = result["systems"]
    conventions = ("2019", "leaderboard-2022")
    head = ["ENE", "attribute", "where", "gold"]
    for convention in conventions:
        head += [f"{convention} {n}" for n in names] + (
            [f"{convention} Δ"] if len(names) > 1 else []
        )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(scores: dict) -> list[str]:
        out = []
        for convention in conventions:
            values = [scores[convention][n] for n in names]
            out += [f"{v:.3f}" for v in values]
            if len(names) > 1:
                out.append(f"{values[0] - values[1]:+.3f}")
        return out

    for row in result["attributes"]:
        first = [row["ENE"], row["attribute"], row["where"], str(row["gold"])]
        lines.append("| " + " | ".join(first + cells(row)) + " |")
    for location, scores in result["locations"].items():
        count = sum(r["gold"] for r in result["attributes"] if r["where"] == location)
        lines.append("| " + " | ".join(["all", f"**{location}** (mean)", location, str(count),
                                        *cells(scores)]) + " |")  # fmt: skip
    total = sum(r["gold"] for r in result["attributes"])
    lines.append("| " + " | ".join(["all", "**overall** (macro)", "", str(total),
                                    *cells(result["overall"])]) + " |")  # fmt: skip
    return "\n".join(lines)
