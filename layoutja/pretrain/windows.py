"""Training windows from localized pages, masked and batched for one rank.

A page longer than a window is cut into overlapping windows as the published recipe does: 510
tokens + `[CLS]` (box 0,0,0,0) + `[SEP]` (box 1000,1000,1000,1000), consecutive windows
overlapping by `margin` tokens. Padding has box 0,0,0,0. Which windows a step takes is the
global order's (`layoutja.pretrain.order`); this module reads their pages (a Parquet part at a
time, as numpy arrays), masks each window and collates a rank's micro-batches.

A window's masks (and ELECTRA's sampling draws) are seeded by its position in the global order,
so they are the same whichever rank, micro-batch or DataLoader worker prepares it.

Parts without a `bbox` column (a plain-text corpus packed by `textcorpus`, for text-only
ELECTRA) give windows without boxes. Boxes are validated as pages are read (HF LayoutLM only
catches coordinates > 1000, and on GPU as a device-side assert): a bad box is an error naming
the file and the page.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layoutja.common import UserError
from layoutja.localize.parts import part_columns, read_part
from layoutja.pretrain.order import Order, Owner, PageReader, micro_batch_slice

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


def read_pages(path: Path, pages: np.ndarray | None = None) -> dict[int, tuple]:
    """{page: (source, input_ids (n,) int32, bbox (n, 4) int16 or None)} of the pages of a part
    (all, or those numbered in `pages`), as numpy arrays copied out of Arrow; boxes checked."""
    columns = ["source", "input_ids"]
    if "bbox" in part_columns(path):
        columns.append("bbox")
    table = read_part(path, columns)
    numbers = np.arange(table.num_rows) if pages is None else np.asarray(pages)
    table = table.take(numbers).combine_chunks()
    ids_column = table.column("input_ids").chunk(0)
    ids = ids_column.flatten().to_numpy().astype(np.int32)
    offsets = ids_column.offsets.to_numpy()
    boxes = None
    if "bbox" in columns:
        boxes = table.column("bbox").chunk(0).flatten().flatten().to_numpy()
        boxes = boxes.astype(np.int16).reshape(-1, 4)
    out = {}
    for i, (number, source) in enumerate(zip(numbers.tolist(), table.column("source").to_pylist(),
                                             strict=True)):  # fmt: skip
        cut = slice(offsets[i], offsets[i + 1])
        bbox = None if boxes is None else boxes[cut]
        if bbox is not None:
            check_boxes(bbox, f"{path.name}: page {source}")
        out[number] = (source, ids[cut], bbox)
    return out


@dataclass(frozen=True)
class Masking:
    """Which tokens a masked LM must predict: `probability` of the non-special tokens are
    selected; of those, `to_mask` become [MASK], `to_random` a random token, the rest stay."""

    probability: float = 0.15
    to_mask: float = 0.8
    to_random: float = 0.1


MVLM_MASKING = Masking(0.15, 0.8, 0.1)  # BERT's 80/10/10
ELECTRA_MASKING = Masking(0.15, 0.85, 0.0)  # ELECTRA's 85% [MASK], 15% unchanged


def cut_window(ids: np.ndarray, bbox: np.ndarray | None, start: int, end: int,
               specials: SpecialIds) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """(input_ids, bbox or None) of tokens start:end of a page, with [CLS] and [SEP]."""
    window_ids = np.concatenate([[specials.cls], ids[start:end], [specials.sep]])
    if bbox is None:
        return window_ids, None
    return window_ids, np.concatenate([[CLS_BOX], bbox[start:end], [SEP_BOX]])


def window_seed(seed: int, position: int) -> int:
    """The seed of a window's masks: its position in the global order (and the run's seed)."""
    return (seed * 1_000_003 + position) % 2**63


@dataclass(frozen=True)
class Batcher:
    """Masks windows and collates them into a micro-batch. Without `boxes` the batch has no
    bbox (text-only models); with `uniforms` each token also gets a uniform draw in [0, 1)
    (ELECTRA samples the generator's token with it)."""

    specials: SpecialIds
    vocab_size: int
    masking: Masking
    max_length: int
    boxes: bool = True
    uniforms: bool = False

    def batch(self, windows: list[tuple[int, np.ndarray, np.ndarray | None]]) -> dict:
        """The batch of windows given as (seed of its masks, input_ids, bbox)."""
        s = self.specials
        masked_windows, labels, draws = [], [], []
        for seed, ids, bbox in windows:
            ids = torch.as_tensor(ids).long()
            generator = torch.Generator().manual_seed(seed)
            masked, window_labels = mask_tokens(ids, s, self.vocab_size, generator, self.masking)
            masked_windows.append((masked, bbox if self.boxes else None))
            labels.append(window_labels)
            if self.uniforms:
                draws.append(torch.rand(len(ids), generator=generator))
        batch = collate(masked_windows, s.pad, limit=self.max_length)
        batch["labels"] = pad_rows(labels, batch["input_ids"].shape[1], -100)
        if self.uniforms:
            batch["uniforms"] = pad_rows(draws, batch["input_ids"].shape[1], 0.0)
        return batch


@dataclass(frozen=True)
class WorkerFailed:
    """A UserError of a DataLoader worker, passed to its rank as the batch it could not make
    (`raise_failure` raises it there): torch would re-raise it with the worker's traceback
    folded into the message, which is then no longer one line."""

    message: str


def raise_failure(batch: dict | WorkerFailed) -> dict:
    """`batch`, or the UserError of the worker that failed to make it."""
    if isinstance(batch, WorkerFailed):
        raise UserError(batch.message)
    return batch


class MaskedBatches(torch.utils.data.IterableDataset):
    """One rank's masked micro-batches from `start_step` on, collated, in step order. Run in
    DataLoader workers, each worker prepares every `workers`-th micro-batch (the DataLoader
    takes them from the workers in turn, so the order is kept)."""

    def __init__(self, order: Order, batcher: Batcher, *, rank: int, world: int,
                 start_step: int, global_batch: int, per_device: int):  # fmt: skip
        super().__init__()
        self.order, self.batcher = order, batcher
        self.rank, self.world, self.start_step = rank, world, start_step
        self.global_batch, self.per_device = global_batch, per_device
        self.accumulation = global_batch // (per_device * world)

    def __iter__(self) -> Iterator[dict | WorkerFailed]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        owner = Owner(self.rank, self.world, worker, workers, self.start_step)
        reader = PageReader(self.order, owner, self.global_batch, self.per_device, read_pages)
        micro = worker
        while True:
            step, j = divmod(micro, self.accumulation)
            first = (self.start_step + step) * self.global_batch
            chunk = micro_batch_slice(self.rank, self.world, j, self.per_device)
            try:
                yield self.batch(reader, range(first + chunk.start, first + chunk.stop))
            except UserError as e:
                if info is None:
                    raise
                yield WorkerFailed(str(e))  # in its place in the order: the rank raises it
                return
            micro += workers

    def batch(self, reader: PageReader, positions: range) -> dict:
        """The collated, masked windows at these global positions."""
        windows = []
        positions = np.arange(positions.start, positions.stop)
        for position, row in zip(positions.tolist(), self.order.rows(positions).tolist()):
            _, ids, bbox = reader.page(position, row)
            start, end = self.order.corpus.windows[row, 2:].tolist()
            ids, bbox = cut_window(ids, bbox, start, end, self.batcher.specials)
            windows.append((window_seed(self.order.seed, position), ids, bbox))
        return self.batcher.batch(windows)


def fixed_batches(files: list[Path], rows: np.ndarray, indices: np.ndarray, batcher: Batcher,
                  per_device: int, seed: int) -> list[dict]:  # fmt: skip
    """The windows `rows[indices]` ((part, page, start, end)) in batches of `per_device`, each
    window's masks seeded by its index in `rows`: the same at every evaluation, on any rank."""
    mine = rows[indices]
    pages = {part: read_pages(files[part], np.unique(mine[mine[:, 0] == part, 1]))
             for part in np.unique(mine[:, 0]).tolist()}  # fmt: skip
    windows = []
    for index, (part, page, start, end) in zip(indices.tolist(), mine.tolist(), strict=True):
        _, ids, bbox = pages[part][page]
        ids, bbox = cut_window(ids, bbox, start, end, batcher.specials)
        windows.append((window_seed(seed, -1 - index), ids, bbox))  # apart from training's
    return [batcher.batch(windows[i : i + per_device]) for i in range(0, len(windows), per_device)]


def pad_rows(rows: list[torch.Tensor], length: int, value: float) -> torch.Tensor:
    """1-D tensors as the rows of one tensor, padded with `value` to `length`."""
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


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
