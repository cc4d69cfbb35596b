"""The Parquet parts of a localized directory (or of a packed text corpus): written with every
row's token count in the footer, read with one clear error for a damaged part.

Each part records its rows' token counts in its footer when it is written, so that a training
job learns the length of every page from the footers alone: without them every start (and every
requeue) read every token of the corpus, at 1.1 M pages 2.7 billion ids.

Every reader of parts (localize's resume, pretrain, finetune, predict) goes through here, so that
a part that cannot be read (cut short by a full disk or an interrupted copy, emptied, not Parquet
at all) is one clear error naming the file and the reason, not a traceback from Arrow's depths.
`layoutja localize` into the directory again moves such a part aside and localizes its pages
again (`store`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from layoutja.common import UserError

LOCALIZED_PART = re.compile(r"part-\d{5}-of-\d{5}-\d{5}\.parquet")
LENGTHS = (
    b"layoutja.page_lengths"  # footer key: the rows' token counts, int32 little-endian, base64
)


class DamagedPart(UserError):
    """A part that cannot be read; `reason` is why, in Arrow's words without the path."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        fix = (
            f"; `layoutja localize` into {path.parent} again moves it aside and localizes its "
            "pages again"
            if LOCALIZED_PART.fullmatch(path.name)
            else ""
        )
        super().__init__(f"{path}: damaged Parquet part: {reason}{fix}")


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        # Arrow names the file in its message and goes on with advice that is no help here:
        # "Could not open Parquet input source '<path>': <reason>. Either the file is ...".
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        text = re.sub(r"^Could not open Parquet input source '.*?': ", "", text)
        raise DamagedPart(path, text.split(". Either the file")[0].rstrip(".")) from None


def read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The part's table (only `columns`, if given), or `DamagedPart`."""
    with _reading(path):
        return pq.read_table(path, columns=columns)


def part_columns(path: Path) -> list[str]:
    """The names of the part's columns (read from its footer), or `DamagedPart`."""
    with _reading(path):
        return pq.read_schema(path).names


def with_page_lengths(table: pa.Table) -> pa.Table:
    """`table` (with an `input_ids` list column) with its rows' token counts in its metadata,
    which Parquet keeps in the file's footer."""
    lengths = table.column("input_ids").combine_chunks().value_lengths()
    counts = lengths.to_numpy(zero_copy_only=False).astype("<i4")
    return table.replace_schema_metadata(
        {**(table.schema.metadata or {}), LENGTHS: base64.b64encode(counts.tobytes())}
    )


def page_lengths(path: Path) -> np.ndarray:
    """The token count of every row of a part: from its footer, or (a part written without them)
    its `input_ids` column read; `DamagedPart` where it cannot be read."""
    with _reading(path):
        metadata = pq.read_schema(path).metadata or {}
    if LENGTHS in metadata:
        return np.frombuffer(base64.b64decode(metadata[LENGTHS]), dtype="<i4").astype(np.int64)
    column = read_part(path, ["input_ids"]).column("input_ids").combine_chunks()
    return column.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
