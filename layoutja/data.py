"""Training windows from localized pages, streamed, shuffled by seed, split across ranks.

A page longer than a window is cut into overlapping windows as the published recipe does: 510
tokens + `[CLS]` (box 0,0,0,0) + `[SEP]` (box 1000,1000,1000,1000), consecutive windows
overlapping by `margin` tokens (stride 510 - 128 = 382 by default). Padding has box 0,0,0,0.

Pages are read part by part (a Parquet part at a time), so the corpus never has to fit in
memory. The order is a pure function of (seed, epoch): parts are shuffled, then pages within a
part, then windows within a buffer of several parts. Window k of that global order goes to rank
k mod world size, so ranks see disjoint data, and a position in the stream is just
(epoch, windows taken) — which is what a checkpoint stores to resume exactly.

Boxes are validated as pages are read (HF LayoutLM only catches coordinates > 1000, and on GPU
as a device-side assert): a bad box is an error naming the file and the page.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from layoutja.errors import UserError

CLS_BOX = [0, 0, 0, 0]  # padding has this box too
SEP_BOX = [1000, 1000, 1000, 1000]


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    cls: int
    sep: int
    mask: int


def window_spans(length: int, max_tokens: int = 510, margin: int = 128) -> list[tuple[int, int]]:
    """[start, end) token ranges of the windows of a page of `length` tokens."""
    if length <= max_tokens:
        return [(0, length)] if length else []
    stride = max_tokens - margin
    spans = []
    start = 0
    while True:
        end = min(start + max_tokens, length)
        spans.append((start, end))
        if end == length:
            return spans
        start += stride


def localized_files(path: str | Path) -> list[Path]:
    """The Parquet parts of a localization output directory (or one file), sorted."""
    path = Path(path)
    files = sorted(path.glob("part-*.parquet")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise UserError(f"{path}: no localized Parquet parts (run `layoutja localize` first)")
    return files


def check_boxes(bbox: list, where: str) -> None:
    """0 <= x0 <= x1 <= 1000 and 0 <= y0 <= y1 <= 1000 for every box, or a UserError."""
    for i, (x0, y0, x1, y1) in enumerate(bbox):
        if not (0 <= x0 <= x1 <= 1000 and 0 <= y0 <= y1 <= 1000):
            raise UserError(f"{where}: token {i} has an invalid box {[x0, y0, x1, y1]}")


class WindowStream:
    """Windows (input_ids, bbox) for one rank, in a seeded order that is the same on every run."""

    def __init__(
        self,
        files: list[Path],
        specials: SpecialIds,
        *,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        max_length: int = 512,
        margin: int = 128,
        buffer_parts: int = 4,
    ):
        if max_length - 2 <= margin:
            raise UserError(f"margin {margin} must be smaller than max_length - 2 ({max_length})")
        self.files, self.specials = files, specials
        self.seed, self.rank, self.world = seed, rank, world
        self.max_tokens, self.margin = max_length - 2, margin
        self.buffer_parts = buffer_parts

    def _pages(self, path: Path, rng: random.Random) -> list[tuple[list, list]]:
        table = pq.read_table(path, columns=["source", "input_ids", "bbox"])
        pages = list(zip(*(table.column(c).to_pylist() for c in ("source", "input_ids", "bbox"))))
        rng.shuffle(pages)
        out = []
        for source, ids, bbox in pages:
            check_boxes(bbox, f"{path.name}: page {source}")
            out.append((ids, bbox))
        return out

    def _epoch(self, epoch: int) -> Iterator[tuple[list[int], list[list[int]]]]:
        """Every window of the corpus in this epoch's order (all ranks' windows)."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        files = list(self.files)
        rng.shuffle(files)
        for i in range(0, len(files), self.buffer_parts):
            buffer = []
            for path in files[i : i + self.buffer_parts]:
                for ids, bbox in self._pages(path, rng):
                    for start, end in window_spans(len(ids), self.max_tokens, self.margin):
                        buffer.append((ids, bbox, start, end))
            rng.shuffle(buffer)
            for ids, bbox, start, end in buffer:
                yield self._window(ids[start:end], bbox[start:end])

    def _window(self, ids: list[int], bbox: list) -> tuple[list[int], list[list[int]]]:
        s = self.specials
        return [s.cls, *ids, s.sep], [CLS_BOX, *bbox, SEP_BOX]

    def windows(self, epoch: int = 0, skip: int = 0):
        """This rank's windows from (epoch, skip) on, forever (epoch after epoch).

        Yields (window, epoch, index within the epoch of the next window).
        """
        while True:
            taken = 0
            for k, window in enumerate(self._epoch(epoch)):
                if k % self.world != self.rank:
                    continue
                taken += 1
                if taken > skip:
                    yield window, epoch, taken
            if taken == 0:
                raise UserError("the localized data holds no tokens (or fewer windows than ranks)")
            epoch, skip = epoch + 1, 0


def collate(
    windows: list[tuple[list[int], list]], pad_id: int, multiple: int = 8, limit: int = 512
) -> dict:
    """Pad a batch to its longest window (rounded up to `multiple`, for tensor cores, but never
    beyond `limit`, the model's positions)."""
    length = max(len(ids) for ids, _ in windows)
    length = min(-(-length // multiple) * multiple, max(limit, length))
    input_ids = torch.full((len(windows), length), pad_id, dtype=torch.long)
    bbox = torch.zeros((len(windows), length, 4), dtype=torch.long)
    attention = torch.zeros((len(windows), length), dtype=torch.long)
    for row, (ids, boxes) in enumerate(windows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        bbox[row, : len(ids)] = torch.tensor(boxes)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "bbox": bbox, "attention_mask": attention}


def mvlm_mask(
    input_ids: torch.Tensor,
    specials: SpecialIds,
    vocab_size: int,
    generator: torch.Generator,
    probability: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MVLM masking: (masked input ids, labels with -100 where no loss is taken).

    `probability` of the non-special tokens are selected; of those 80% become [MASK], 10% a random
    token and 10% stay. Boxes are not touched: a masked token keeps its 2-D position.
    """
    special = (
        (input_ids == specials.pad) | (input_ids == specials.cls) | (input_ids == specials.sep)
    )
    draw = torch.rand(input_ids.shape, generator=generator)
    selected = (draw < probability) & ~special
    # One more uniform draw splits the selected tokens 80/10/10.
    split = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (split < 0.8)
    to_random = selected & (split >= 0.8) & (split < 0.9)
    masked = input_ids.clone()
    masked[to_mask] = specials.mask
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    masked[to_random] = random_ids[to_random]
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    return masked, labels
