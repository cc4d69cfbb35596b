"""Score SHINRA attribute-extraction output exactly as the official SHINRA scorer does.

The official scorer's conventions (../shared/shinra-sample/README.md), per ENE:
- the attributes scored are those in the gold file, names normalized ASCII → full width
  (`IATA（空港コード）` → `ＩＡＴＡ（空港コード）`) on both sides;
- only target pages are scored (default: the gold pages); target ids are stripped of
  whitespace (the official reader keeps the space after each comma of `target.csv`, so every id
  but the first fails to match: a bug not reproduced here);
- per attribute, TP/FP/FN count the *sets* of (page, start line, start offset, end line, end
  offset): exact match, duplicates count once; P/R/F1 are 0 when TP is 0;
- macro = the mean over attributes of P, of R and of F1, each separately; micro = P/R/F1 of the
  pooled counts. `html_offset` and `text_offset` are scored separately.
Over several ENEs (SHINRA 2022) the overall macro is the mean over ENEs of their macro scores and
the overall micro pools every count.

`score_leaderboard` computes the SHINRA 2022 leaderboard's metric instead (its docstring says how
it differs). Offsets are compared as (start line, start offset, end line, end offset) tuples of
ints; an offset that is not such a dict counts as absent.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

from layoutja import common
from layoutja.common import UserError
from layoutja.shinra.rawpage import PageFinder, RawPage

OFFSET_KINDS = ("html_offset", "text_offset")
_ASCII_TO_FULL = {c: c + 0xFEE0 for c in range(0x21, 0x7F)} | {0x20: 0x3000}


def normalize_attribute(name: str) -> str:
    """ASCII → full width, as the official scorer compares attribute names."""
    return name.translate(_ASCII_TO_FULL)


def _record(record: dict) -> dict:
    for key in ("page_id", "ENE", "attribute"):
        record[key] = str(record[key])
    return record


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a SHINRA JSONL file (page_id, ENE and attribute as strings); a malformed line
    is a UserError naming the line."""
    return common.read_jsonl(path, _record, "a SHINRA record")


def read_targets(path: str | Path) -> set[str]:
    """Page ids from a target file: comma- and/or line-separated, whitespace stripped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    return {item.strip() for item in re.split(r"[,\n]", text) if item.strip()}


def _span(record: dict, kind: str) -> tuple[int, int, int, int] | None:
    offset = record.get(kind)
    if not offset:
        return None
    try:
        start, end = offset["start"], offset["end"]
        return (
            int(start["line_id"]),
            int(start["offset"]),
            int(end["line_id"]),
            int(end["offset"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _key(record: dict, kind: str) -> tuple | None:
    span = _span(record, kind)
    return (record["page_id"], *span) if span else None


def _rates(correct: int, predicted: int, gold: int) -> dict:
    """P, R and F1; all 0 when nothing is correct."""
    precision = correct / predicted if correct else 0.0
    recall = correct / gold if correct else 0.0
    f1 = 2 * precision * recall / (precision + recall) if correct else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _prf(tp: int, fp: int, fn: int) -> dict:
    return {**_rates(tp, tp + fp, tp + fn), "tp": tp, "fp": fp, "fn": fn}


def _mean(scores: list[dict]) -> dict:
    n = len(scores) or 1
    return {k: sum(s[k] for s in scores) / n for k in ("precision", "recall", "f1")}


def score(gold: list[dict], pred: list[dict], targets: set[str] | None = None) -> dict:
    """{kind: {"macro", "micro", "per_ene": {ENE: {"macro", "micro", "attributes"}}}}."""
    result = {}
    for kind in OFFSET_KINDS:
        if not any(kind in g for g in gold):
            continue
        pages = targets if targets is not None else {g["page_id"] for g in gold}
        gold_sets: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
        for g in gold:
            key = _key(g, kind)
            gold_sets[g["ENE"]][normalize_attribute(g["attribute"])]  # the attribute exists
            if key and g["page_id"] in pages:
                gold_sets[g["ENE"]][normalize_attribute(g["attribute"])].add(key)
        pred_sets: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
        for p in pred:
            key = _key(p, kind)
            if key and p["page_id"] in pages:
                pred_sets[p["ENE"]][normalize_attribute(p["attribute"])].add(key)
        per_ene, totals = {}, [0, 0, 0]
        for ene in sorted(gold_sets):
            attributes, counts = {}, [0, 0, 0]
            for attribute in sorted(gold_sets[ene]):
                g, p = gold_sets[ene][attribute], pred_sets[ene][attribute]
                tp, fp, fn = len(g & p), len(p - g), len(g - p)
                attributes[attribute] = _prf(tp, fp, fn)
                counts = [counts[0] + tp, counts[1] + fp, counts[2] + fn]
            micro = _prf(*counts)
            per_ene[ene] = {
                "macro": _mean(list(attributes.values())),
                "micro": {k: micro[k] for k in ("precision", "recall", "f1")},
                "attributes": attributes,
            }
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
        overall = _prf(*totals)
        result[kind] = {
            "macro": _mean([e["macro"] for e in per_ene.values()]),
            "micro": {k: overall[k] for k in ("precision", "recall", "f1")},
            "per_ene": per_ene,
        }
    if not result:
        raise UserError("the gold file has no html_offset or text_offset annotations")
    return result


def score_leaderboard(gold: list[dict], pred: list[dict]) -> dict:
    """The SHINRA 2022 leaderboard's metric, "the macro average over attributes of per-attribute
    micro F1", as its scoring program computes it:

    - predictions on pages absent from the gold are ignored, and so are those whose (ENE,
      attribute) pair the gold lacks;
    - predictions are deduplicated on (page, ENE, attribute, html_offset or none, text_offset or
      none);
    - a prediction is correct when the offsets it carries equal those of a gold record of the
      same page, ENE and attribute: both when it carries both, the one it carries otherwise; one
      that carries neither counts as predicted, never as correct;
    - per pair P = correct / predicted (0 when nothing was predicted), R = correct / gold, F1;
      macro = the mean over the gold's (ENE, attribute) pairs of P, of R and of F1 (not a mean
      of per-ENE means, as in `score`); micro = P/R/F1 of the pooled counts.

    Unlike `score`: ENE and attribute are compared as the exact strings (no ASCII → full width),
    as the statement of the metric says; the two offset kinds are scored together; gold records
    are counted as given, repeats included (the real sample has 8 among its 186). Read
    literally, the statement lets one gold record match three distinct predictions (html only,
    text only, both), so a recall can pass 1; that is kept, not corrected.

    Returns {"macro", "micro", "per_ene": {ENE: {"macro", "micro", "attributes": {attribute:
    {precision, recall, f1, correct, predicted, gold}}}}}; the per-ENE averages are for reading
    only, the overall ones are over all pairs.
    """
    if not gold:
        raise UserError("the gold file has no records")
    gold_counts = Counter((g["ENE"], g["attribute"]) for g in gold)
    pages = {g["page_id"] for g in gold}
    matches = set()  # (page, ENE, attribute, html, text) as a correct prediction carries them
    for g in gold:
        html, text = _span(g, "html_offset"), _span(g, "text_offset")
        for carried in {(html, text), (html, None), (None, text)} - {(None, None)}:
            matches.add((g["page_id"], g["ENE"], g["attribute"], *carried))
    predicted = {
        (p["page_id"], p["ENE"], p["attribute"], _span(p, "html_offset"), _span(p, "text_offset"))
        for p in pred
        if p["page_id"] in pages and (p["ENE"], p["attribute"]) in gold_counts
    }
    counts = {pair: [0, 0, n] for pair, n in gold_counts.items()}  # correct, predicted, gold
    for key in predicted:
        counts[key[1:3]][0] += key in matches
        counts[key[1:3]][1] += 1
    rows: dict[str, dict[str, dict]] = defaultdict(dict)
    for (ene, attribute), (correct, n_pred, n_gold) in sorted(counts.items()):
        rows[ene][attribute] = {**_rates(correct, n_pred, n_gold), "correct": correct,
                                "predicted": n_pred, "gold": n_gold}  # fmt: skip
    per_ene = {ene: {**_averages(list(a.values())), "attributes": a} for ene, a in rows.items()}
    return {**_averages([r for a in rows.values() for r in a.values()]), "per_ene": per_ene}


def _averages(rows: list[dict]) -> dict:
    """Macro (mean of the rows' P, R, F1) and micro (pooled counts) of leaderboard rows."""
    pooled = [sum(r[k] for r in rows) for k in ("correct", "predicted", "gold")]
    return {"macro": _mean(rows), "micro": _rates(*pooled)}


def html_mismatches(records: list[dict], html_dir: str | Path) -> list[dict]:
    """Records whose html_offset does not cut out their text from the raw page (or no page).

    (The official checker's "HTML annotation errors" count includes its CSV header row: 4 for
    the sample's 3 mismatches.)
    """
    pages = PageFinder(html_dir)
    cache: dict[str, RawPage | None] = {}
    bad = []
    for r in records:
        offset = r.get("html_offset")
        if not offset:
            continue
        page = r["page_id"]
        if page not in cache:
            found = pages.find(page, r["ENE"])
            cache[page] = RawPage.read(found) if found else None
        if cache[page] is None:
            bad.append({**r, "problem": "no such page"})
            continue
        key = _key(r, "html_offset")
        text = cache[page].text(key[1:3], key[3:5]) if key else None
        if text is None:
            bad.append({**r, "problem": "offsets not on the page"})
        elif text != offset.get("text"):
            bad.append({**r, "problem": f"offsets cut out {text!r}"})
    return bad


_COUNTS = {
    "tp": "TP",
    "fp": "FP",
    "fn": "FN",
    "correct": "Corr",
    "predicted": "Pred",
    "gold": "Gold",
}


def pad(text: str, width: int) -> str:
    """`text` cut or padded to `width` terminal columns (full-width characters take two)."""
    out, used = "", 0
    for char in text:
        columns = 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if used + columns > width:
            break
        out, used = out + char, used + columns
    return out + " " * (width - used)


def format_table(result: dict[str, dict]) -> str:
    """Per attribute, per ENE and overall P/R/F1 with the counts, one block per entry of `result`
    (an offset kind of `score`, or a name for the result of `score_leaderboard`)."""
    rows = []
    for title, scores in result.items():
        first = next(iter(next(iter(scores["per_ene"].values()))["attributes"].values()))
        counts = [k for k in _COUNTS if k in first]
        rows.append(f"== {title} ==")
        rows.append(
            f"{'':40} {'P':>6} {'R':>6} {'F1':>6} " + " ".join(f"{_COUNTS[k]:>5}" for k in counts)
        )
        for ene, e in scores["per_ene"].items():
            for name, s in e["attributes"].items():
                rows.append(
                    f"{pad(f'{ene} {name}', 40)} {s['precision']:6.3f} {s['recall']:6.3f} "
                    f"{s['f1']:6.3f} " + " ".join(f"{s[k]:5d}" for k in counts)
                )
            for avg in ("macro", "micro"):
                s = e[avg]
                rows.append(
                    f"{pad(f'{ene} ({avg})', 40)} {s['precision']:6.3f} {s['recall']:6.3f} "
                    f"{s['f1']:6.3f}"
                )
        for avg in ("macro", "micro"):
            s = scores[avg]
            rows.append(
                f"{pad(f'overall {avg}', 40)} {s['precision']:6.3f} {s['recall']:6.3f} "
                f"{s['f1']:6.3f}"
            )
    return "\n".join(rows)
