"""Reading the Parquet parts of a localized directory (or of a packed text corpus).

Every reader of parts (localize's resume, pretrain, finetune, predict) goes through here, so that
a part that cannot be read (cut short by a full disk or an interrupted copy, emptied, not Parquet
at all) is one clear error naming the file and the reason, not a traceback from Arrow's depths.
`layoutja localize` into the directory again moves such a part aside and localizes its pages
again (`store`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from layoutja.common import UserError

LOCALIZED_PART = re.compile(r"part-\d{5}-of-\d{5}-\d{5}\.parquet")


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
