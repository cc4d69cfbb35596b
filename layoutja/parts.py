"""Parquet parts of token sequences (localized pages, packed text): each part records the token
count of every row in its footer, so that a training job learns the length of every page from
the footers alone. Without it every start (and every requeue) reads every token of the corpus:
at 1.1 M pages, 2.7 billion ids."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LENGTHS = (
    b"layoutja.page_lengths"  # footer key: the rows' token counts, int32 little-endian, base64
)


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
    its `input_ids` column read."""
    metadata = pq.read_schema(path).metadata or {}
    if LENGTHS in metadata:
        return np.frombuffer(base64.b64decode(metadata[LENGTHS]), dtype="<i4").astype(np.int64)
    column = pq.read_table(path, columns=["input_ids"]).column("input_ids").combine_chunks()
    return column.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
