"""A SHINRA attribute-extraction data set as labeled pages of arrays, split and cut into windows.

    SHINRA_DIR/annotation/<category>_dist.jsonl   gold annotations (html_offset)
    SHINRA_DIR/html/<category>/<page_id>.html     pages (or html/<page_id>.html: the leaderboard's)
    SHINRA_DIR/plain/<category>/<page_id>.txt     optional: SHINRA's plain text (for text_offset)
    ENE definitions (--definitions, else SHINRA_DIR/*definition*.jsonl): optional; the ENE ids
                                                  of named categories, extraction_task flags

A category directory is named by its ENE id (`1.6.5.3`) or, as SHINRA 2022 is downloaded, in
English (`Airport`): every page is labeled with its ENE id (layoutja.shinra.categories).
Pages are localized with the localization stage into a Parquet directory (resumable, so
already localized pages are reused) and read from it a part at a time, each page's tokens as
numpy arrays (no Python object per token): ids int32, boxes int16, raw spans int32, labels
int32 (layoutja.shinra.labels), about 32 bytes a token. The dev split is the published one: a
share of the pages of each category. Pages are cut into windows as for pretraining; at
prediction time a token takes its label from the window where it is furthest from an inner
edge: `margin // 2` tokens are dropped at each inner window edge.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from layoutja.common import UserError
from layoutja.localize.parts import read_part
from layoutja.pretrain.windows import SpecialIds, cut_window, localized_files
from layoutja.shinra.categories import (
    Categories,
    Definitions,
    annotated_ids,
    annotation_files,
    find_definitions,
    read_definitions,
)
from layoutja.shinra.labels import Annotation, label_names, page_labels, read_annotations
from layoutja.shinra.rawpage import RawPage

IGNORE = -100  # label of [CLS], [SEP] and padding: no loss
COLUMNS = ["page_id", "category", "source", "input_ids", "bbox", "html_span"]


@dataclass
class Page:
    page_id: str
    ene: str
    title: str  # "" until given (predict --pages) or read for its records (records.Decoder)
    path: Path  # the raw HTML file
    input_ids: np.ndarray  # (n,) int32
    bbox: np.ndarray  # (n, 4) int16
    html_span: np.ndarray | None  # (n, 4) int32; None where no longer needed (training pages)
    labels: np.ndarray | None = None  # (n,) int32


@dataclass(frozen=True)
class ShinraDir:
    """The files of a SHINRA directory, and its categories' ENE ids."""

    html: Path
    plain: Path
    annotations: list[Path]
    definitions: Definitions | None

    @classmethod
    def of(cls, root: Path, definitions: str | Path | None = None) -> ShinraDir:
        """The SHINRA directory `root`, with the ENE definitions of the file `definitions` (by
        default the one in `root`, if any)."""
        html = root / "html"
        if not html.is_dir():
            raise UserError(f"{root}: no html/ directory (SHINRA layout html/<category>/<id>.html)")
        path = Path(definitions) if definitions else find_definitions(root)
        return cls(html, root / "plain", annotation_files(root),
                   read_definitions(path) if path else None)  # fmt: skip

    def plain_path(self, page: Page) -> Path:
        """Where SHINRA's plain text of a page is (beside html/, same relative path)."""
        return self.plain / page.path.relative_to(self.html).with_suffix(".txt")

    def attributes(self, annotations: list[Annotation]) -> dict[str, set[str]]:
        """ENE id → its attributes as spelled: those with extraction_task in the definitions or,
        without definitions, those annotated."""
        if self.definitions:
            return self.definitions.attributes
        attributes = defaultdict(set)
        for a in annotations:
            attributes[a.ene].add(a.attribute)
        return dict(attributes)

    def categories(self, annotations: list[Annotation]) -> Categories:
        """Category directory → ENE id, from the definitions and the annotation files."""
        return Categories(self.html, self.definitions, annotated_ids(annotations))


@dataclass
class ShinraSet:
    dirs: ShinraDir
    pages: list[Page]
    names: list[str]  # label names, index = label id
    annotations: list[Annotation]
    skipped: list[tuple[str, Annotation]]  # annotations not placed, with the reason
    attributes: dict[str, set[str]]  # ENE → attributes that can be predicted for it, as spelled


def _values(column: pa.ChunkedArray, dtype: type, width: int | None = None) -> np.ndarray:
    """The values of a list column (of lists of `width` values) as one numpy array, copied out
    of Arrow."""
    values = column.combine_chunks().flatten()
    if width:
        return values.flatten().to_numpy().astype(dtype).reshape(-1, width)
    return values.to_numpy().astype(dtype)


def read_parts(localized: Path, html_dir: Path,
               ene_id: Callable[[str], str] | None = None) -> Iterator[list[Page]]:  # fmt: skip
    """The localized pages, a Parquet part at a time, their tokens as numpy arrays (views into
    one array per column and part); each page's `ene` is `ene_id` of its category (its category
    without it); titles are left empty, labels None."""
    for path in localized_files(localized):
        table = read_part(path, COLUMNS)
        lengths = table.column("input_ids").combine_chunks().value_lengths().to_numpy()
        ends = np.cumsum(lengths)
        ids = _values(table.column("input_ids"), np.int32)
        boxes = _values(table.column("bbox"), np.int16, 4)
        spans = _values(table.column("html_span"), np.int32, 4)
        rows = zip(*(table.column(c).to_pylist() for c in ("page_id", "category", "source")))
        pages = []
        for (page_id, category, source), end, n in zip(rows, ends, lengths, strict=True):
            cut = slice(end - n, end)
            ene = ene_id(category) if ene_id else category
            pages.append(Page(page_id, ene, "", html_dir / source, ids[cut], boxes[cut],
                              spans[cut]))  # fmt: skip
        yield pages


def load_pages(shinra_dir: Path, localized: Path, names: list[str] | None = None, *,
               overlaps: str, definitions: str | Path | None = None) -> ShinraSet:  # fmt: skip
    """Localized pages of a SHINRA directory with their ENE ids and labels (from its
    annotations; of overlapping ones the `overlaps` one, "first" or "longest", labels the
    tokens); `definitions`: the ENE definitions file (`ShinraDir.of`). Titles are left empty: a
    page's is read when its records are written (records.Decoder).

    `names` fixes the label set (a fine-tuned model's); by default it is built from the ENE
    definitions (attributes with extraction_task) or, without them, the annotated attributes.
    """
    dirs = ShinraDir.of(shinra_dir, definitions)
    annotations = read_annotations(dirs.annotations)
    categories = dirs.categories(annotations)
    attributes = dirs.attributes(annotations)
    names = names or label_names(set().union(*attributes.values()) if attributes else set())
    by_page = defaultdict(list)
    skipped = []
    for a in annotations:
        if dirs.definitions and a.ene not in attributes:
            skipped.append(("unknown ENE", a))
        else:
            by_page[a.page_id].append(a)
    pages = []
    for part in read_parts(localized, dirs.html, categories.ene_id):
        for page in part:
            raw = RawPage.read(page.path)
            mine = by_page.pop(page.page_id, [])
            page.labels = page_labels(page.html_span, raw, mine, names, skipped,
                                      overlaps=overlaps)  # fmt: skip
            pages.append(page)
    skipped += [("page not localized", a) for page in by_page.values() for a in page]
    return ShinraSet(dirs, pages, names, annotations, skipped, attributes)


def dev_split(pages: list[Page], fraction: float, seed: int) -> set[str]:
    """The page ids held out for dev, as the published system chose them: of each category's n
    pages, int(n × fraction), drawn (seeded) among the pages whose labels all occur on another
    page of the category, so that the dev set has no label its category's training pages lack."""
    rng = random.Random(seed)
    by_category = defaultdict(list)
    for page in pages:
        by_category[page.ene].append(page)
    dev = set()
    for category in sorted(by_category):
        group = sorted(by_category[category], key=lambda p: p.page_id)
        tags = [set(np.unique(p.labels).tolist()) - {0} for p in group]
        counts = Counter(tag for page_tags in tags for tag in page_tags)
        candidates = [p.page_id for p, t in zip(group, tags) if all(counts[x] > 1 for x in t)]
        rng.shuffle(candidates)
        dev.update(candidates[: int(len(group) * fraction)])
    return dev


def window(page: Page, start: int, end: int, specials: SpecialIds):
    """(input_ids, bbox, labels) of the window of tokens start–end of a page, with [CLS] and
    [SEP] (label IGNORE; a page without labels gets IGNORE everywhere)."""
    ids, bbox = cut_window(page.input_ids, page.bbox, start, end, specials)
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    if page.labels is not None:
        labels[1:-1] = page.labels[start:end]
    return ids, bbox, labels


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
