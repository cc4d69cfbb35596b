"""Training windows from localized pages, streamed, shuffled by seed, split across ranks.

A page longer than a window is cut into overlapping windows as the published recipe does: 510
tokens + `[CLS]` (box 0,0,0,0) + `[SEP]` (box 1000,1000,1000,1000), consecutive windows
overlapping by `margin` tokens (stride 510 - 128 = 382 by default). Padding has box 0,0,0,0.

Pages are read part by part (a Parquet part at a time, as numpy views of its Arrow buffers), so
the corpus never has to fit in memory. The order is a pure function of (seed, epoch, rank):
parts are shuffled and dealt out to the ranks, then pages within a part and windows within a
buffer of several parts are shuffled. Ranks see disjoint data, and a rank's position in its
stream is just (epoch, windows taken), which is what a checkpoint stores to resume exactly.

Parts without a `bbox` column (a plain-text corpus packed by `textcorpus`, for text-only
ELECTRA) give windows without boxes. Boxes are validated as pages are read (HF LayoutLM only
catches coordinates > 1000, and on GPU as a device-side assert): a bad box is an error naming
the file and the page.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from layoutja.common import UserError
from layoutja.training.trainer import step_seed

CLS_BOX = [0, 0, 0, 0]  # padding has this box too
SEP_BOX = [1000, 1000, 1000, 1000]


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def from_vocab(cls, vocab: dict[str, int]) -> SpecialIds:
        """The ids the vocabulary gives its special tokens (never assumed: cl-tohoku's has
        `[PAD]` = 0, izumi-lab's ELECTRA `[UNK]` = 0 and `[PAD]` = 3)."""
        names = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
        missing = [t for t in names if t not in vocab]
        if missing:
            raise UserError(f"the vocabulary has no {', '.join(missing)}")
        return cls(*(vocab[t] for t in names))


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


def check_boxes(bbox: np.ndarray, where: str) -> None:
    """0 <= x0 <= x1 <= 1000 and 0 <= y0 <= y1 <= 1000 for every box (n, 4), or a UserError."""
    x0, y0, x1, y1 = bbox.T
    bad = (x0 < 0) | (y0 < 0) | (x1 > 1000) | (y1 > 1000) | (x1 < x0) | (y1 < y0)
    if bad.any():
        i = int(bad.argmax())
        raise UserError(f"{where}: token {i} has an invalid box {bbox[i].tolist()}")


def read_pages(path: Path) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(source, input_ids (n,), bbox (n, 4) or None) of every page of a part, as numpy views of
    the Arrow buffers (no Python object per token)."""
    columns = ["source", "input_ids"]
    if "bbox" in pq.read_schema(path).names:
        columns.append("bbox")
    table = pq.read_table(path, columns=columns).combine_chunks()
    ids_column = table.column("input_ids").chunk(0)
    ids = ids_column.flatten().to_numpy().astype(np.int64)
    boxes = None
    if "bbox" in columns:
        boxes = table.column("bbox").chunk(0).flatten().flatten().to_numpy().astype(np.int64)
        boxes = boxes.reshape(-1, 4)
    offsets = ids_column.offsets.to_numpy()
    sources = table.column("source").to_pylist()
    return [
        (
            source,
            ids[offsets[i] : offsets[i + 1]],
            None if boxes is None else boxes[offsets[i] : offsets[i + 1]],
        )
        for i, source in enumerate(sources)
    ]


class WindowStream:
    """Windows (input_ids, bbox) for one rank, in a seeded order that is the same on every run.

    With at least as many parts as ranks, each rank reads only its own parts (the parts are
    shuffled the same way on every rank, then dealt out); otherwise every rank reads every part
    and takes every world-th window.
    """

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
        self.split_parts = len(files) >= world

    def _epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray, int, int]]:
        """(ids, bbox, start, end) of the windows this rank reads in this epoch, in order."""
        files = list(self.files)
        random.Random(self.seed * 1_000_003 + epoch).shuffle(files)  # the same on every rank
        if self.split_parts:
            files = files[self.rank :: self.world]
        # Round robin over windows needs the same order on every rank; own parts may differ.
        rank = self.rank if self.split_parts else 0
        rng = random.Random((self.seed * 1_000_003 + epoch) * 4099 + rank)
        for i in range(0, len(files), self.buffer_parts):
            buffer = []
            for path in files[i : i + self.buffer_parts]:
                pages = read_pages(path)
                rng.shuffle(pages)
                for source, ids, bbox in pages:
                    if bbox is not None:
                        check_boxes(bbox, f"{path.name}: page {source}")
                    for start, end in window_spans(len(ids), self.max_tokens, self.margin):
                        buffer.append((ids, bbox, start, end))
            rng.shuffle(buffer)
            yield from buffer

    def windows(self, epoch: int = 0, skip: int = 0):
        """This rank's windows from (epoch, skip) on, forever (epoch after epoch).

        Yields ((input_ids, bbox), epoch, windows of this epoch taken so far); a resumed stream
        skips windows without building them.
        """
        s = self.specials
        while True:
            taken = 0
            for k, (ids, bbox, start, end) in enumerate(self._epoch(epoch)):
                if not self.split_parts and k % self.world != self.rank:
                    continue
                taken += 1
                if taken > skip:
                    window_ids = np.concatenate([[s.cls], ids[start:end], [s.sep]])
                    window_bbox = None
                    if bbox is not None:
                        window_bbox = np.concatenate([[CLS_BOX], bbox[start:end], [SEP_BOX]])
                    yield (window_ids, window_bbox), epoch, taken
            if taken == 0:
                raise UserError("the localized data holds no tokens for this rank")
            epoch, skip = epoch + 1, 0


@dataclass(frozen=True)
class Masking:
    """Which tokens a masked LM must predict: `probability` of the non-special tokens are
    selected; of those, `to_mask` become [MASK], `to_random` a random token, the rest stay."""

    probability: float = 0.15
    to_mask: float = 0.8
    to_random: float = 0.1


MVLM_MASKING = Masking(0.15, 0.8, 0.1)  # BERT's 80/10/10
ELECTRA_MASKING = Masking(0.15, 0.85, 0.0)  # ELECTRA's 85% [MASK], 15% unchanged


class MaskedBatches(torch.utils.data.IterableDataset):
    """The masked micro-batches of one rank from `start_step` on, collated, each with the
    stream position after it. Run in a DataLoader worker, this prepares data while the model
    trains; the masks depend only on (seed, step, rank), as when run inline. Without `boxes`
    the batches have no bbox (text-only models)."""

    def __init__(self, stream: WindowStream, position: tuple[int, int], start_step: int,
                 accumulation: int, per_device: int, vocab_size: int, masking: Masking,
                 max_length: int, boxes: bool = True):  # fmt: skip
        super().__init__()
        self.stream, self.position, self.start_step = stream, position, start_step
        self.accumulation, self.per_device = accumulation, per_device
        self.vocab_size, self.masking = vocab_size, masking
        self.max_length, self.boxes = max_length, boxes

    def __iter__(self) -> Iterator[tuple[dict, tuple[int, int]]]:
        windows = self.stream.windows(*self.position)
        specials = self.stream.specials
        step = self.start_step
        while True:
            seed = step_seed(self.stream.seed, step, self.stream.rank)
            generator = torch.Generator().manual_seed(seed)
            for _ in range(self.accumulation):
                items = [next(windows) for _ in range(self.per_device)]
                # A text-only model gets no boxes: dropped before any tensor is built for them.
                chosen = [(ids, bbox if self.boxes else None) for (ids, bbox), _, _ in items]
                batch = collate(chosen, specials.pad, limit=self.max_length)
                batch["input_ids"], batch["labels"] = mask_tokens(
                    batch["input_ids"], specials, self.vocab_size, generator, self.masking
                )
                yield batch, items[-1][1:]
            step += 1


def collate(
    windows: list[tuple[list[int], list | None]],
    pad_id: int,
    multiple: int = 8,
    limit: int = 512,
) -> dict:
    """Pad a batch to its longest window (rounded up to `multiple`, for tensor cores, but never
    beyond `limit`, the model's positions). Windows without boxes give a batch without bbox."""
    length = max(len(ids) for ids, _ in windows)
    length = min(-(-length // multiple) * multiple, max(limit, length))
    input_ids = torch.full((len(windows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(windows), length), dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if windows[0][1] is not None:
        batch["bbox"] = torch.zeros((len(windows), length, 4), dtype=torch.long)
    for row, (ids, boxes) in enumerate(windows):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        if boxes is not None:
            batch["bbox"][row, : len(ids)] = torch.as_tensor(boxes)
        attention[row, : len(ids)] = 1
    return batch


def mask_tokens(
    input_ids: torch.Tensor,
    specials: SpecialIds,
    vocab_size: int,
    generator: torch.Generator,
    masking: Masking = MVLM_MASKING,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input ids, labels: the original token where selected, -100 elsewhere).

    Boxes are not touched: a masked token keeps its 2-D position.
    """
    special = (
        (input_ids == specials.pad) | (input_ids == specials.cls) | (input_ids == specials.sep)
    )
    draw = torch.rand(input_ids.shape, generator=generator)
    selected = (draw < masking.probability) & ~special
    # One more uniform draw splits the selected tokens into [MASK] / random / unchanged.
    split = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (split < masking.to_mask)
    random_end = masking.to_mask + masking.to_random
    to_random = selected & (split >= masking.to_mask) & (split < random_end)
    masked = input_ids.clone()
    masked[to_mask] = specials.mask
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    masked[to_random] = random_ids[to_random]
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    return masked, labels
