"""The order of training windows: one global sequence, the same on any number of processes.

The index lists every window of the corpus as (part, page, start, end), from the pages' lengths
alone. Epoch e is a pure function of (seed, e): the parts are shuffled, taken in blocks of
`shuffle_parts` parts, and the windows of a block are shuffled together, so a global batch mixes
windows of that many parts from anywhere in the corpus. Epochs follow each other in one endless
sequence, and global batch s is windows [s·G, (s+1)·G) of it (G: the global batch size).

A global batch is cut into chunks of `per_device` windows; chunk c is micro-batch c // world of
rank c % world. Which windows a step trains on therefore depends on the step and G alone: a run
checkpointed on W processes goes on with the same global batches on W' (the loss is normalized
by the global batch's token counts, so the split does not change it either), and every rank is
always in the same epoch.

A reader (one per rank and DataLoader worker) reads the parts of the current block and keeps
only the pages its own windows need: every reader reads the corpus once per epoch, and holds
about `shuffle_parts` / (processes × workers) parts' worth of pages (twice that at most).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layoutja.common import UserError
from layoutja.localize.parts import page_lengths


def window_spans(length: int, max_tokens: int = 510, margin: int = 128) -> list[tuple[int, int]]:
    """[start, end) token ranges of the windows of a page of `length` tokens: consecutive windows
    overlap by `margin` tokens (stride 510 - 128 = 382 by default)."""
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


def window_counts(lengths: np.ndarray, max_tokens: int, stride: int) -> np.ndarray:
    """How many windows `window_spans` cuts from pages of these lengths (stride = max_tokens -
    margin): one for a page that fits, none for an empty one."""
    lengths = np.asarray(lengths, dtype=np.int64)
    longer = -(-(lengths - max_tokens) // stride) + 1
    return np.where(lengths > max_tokens, longer, (lengths > 0).astype(np.int64))


def micro_batch_slice(rank: int, world: int, micro: int, per_device: int) -> slice:
    """The windows of a global batch that are micro-batch `micro` of `rank`."""
    chunk = micro * world + rank
    return slice(chunk * per_device, (chunk + 1) * per_device)


@dataclass(frozen=True)
class Corpus:
    """Every window of the corpus as a row (part, page, start, end), sorted by part."""

    files: list[Path]
    windows: np.ndarray  # (n, 4) int64
    part_rows: np.ndarray  # (parts + 1,): the rows of part p are part_rows[p]:part_rows[p + 1]

    @classmethod
    def index(
        cls,
        files: list[Path],
        max_tokens: int,
        margin: int,
        lengths: Callable[[list[Path]], list[np.ndarray]] | None = None,
    ) -> Corpus:
        """The windows of `files`; `lengths` gives each file's page lengths (by default read
        here; a data-parallel job reads a share of the files per rank and gathers them)."""
        if max_tokens <= margin:
            raise UserError(f"margin {margin} must be smaller than max_length - 2 ({max_tokens})")
        per_part = (lengths or (lambda fs: [page_lengths(f) for f in fs]))(files)
        stride = max_tokens - margin
        # Array operations, part by part, into one array allocated once: at a million pages a
        # list of row tuples peaked at six times the array it became.
        counts = [window_counts(pages, max_tokens, stride) for pages in per_part]
        bounds = np.zeros(len(files) + 1, dtype=np.int64)
        bounds[1:] = np.cumsum([c.sum() for c in counts])
        if not bounds[-1]:
            raise UserError(f"{files[0].parent}: the data holds no tokens")
        windows = np.empty((bounds[-1], 4), dtype=np.int64)
        for part, (pages, count) in enumerate(zip(per_part, counts)):
            rows = windows[bounds[part] : bounds[part + 1]]
            page = np.repeat(np.arange(len(pages)), count)
            # the k-th window of a page starts at k × stride
            k = np.arange(len(page)) - np.repeat(np.cumsum(count) - count, count)
            rows[:, 0], rows[:, 1], rows[:, 2] = part, page, k * stride
            rows[:, 3] = np.minimum(rows[:, 2] + max_tokens, np.asarray(pages)[page])
        return cls(files, windows, bounds)

    def __len__(self) -> int:
        return len(self.windows)

    def pages(self) -> np.ndarray:
        """The (part, page) of every page with at least one window, sorted."""
        return np.unique(self.windows[:, :2], axis=0)

    def without(self, pages: np.ndarray) -> tuple[Corpus, np.ndarray]:
        """This corpus without the windows of `pages` ((part, page) rows), and those windows."""
        keys = self.windows[:, 0] << 32 | self.windows[:, 1]
        held = np.isin(keys, pages[:, 0] << 32 | pages[:, 1])
        kept = self.windows[~held]
        bounds = np.searchsorted(kept[:, 0], np.arange(len(self.files) + 1))
        return Corpus(self.files, kept, bounds), self.windows[held]


GROUPED_BATCHES = 64  # length grouping sorts this many global batches' windows at a time


class Order:
    """The endless sequence of window rows: epoch after epoch, each a seeded shuffle.

    With `group_by_length` (a global batch size), the windows of every GROUPED_BATCHES global
    batches (aligned to the global batches) are sorted by length and dealt out as global batches
    in a seeded order: each micro-batch holds windows of similar length, so little of it is
    padding, and an epoch still holds every window once.
    """

    def __init__(self, corpus: Corpus, seed: int, shuffle_parts: int,
                 group_by_length: int = 0):  # fmt: skip
        if shuffle_parts < 1:
            raise UserError("data.shuffle_parts must be at least 1")
        self.corpus, self.seed, self.shuffle_parts = corpus, seed, shuffle_parts
        self.group_by_length = group_by_length
        self._cached: tuple[int, np.ndarray] | None = None

    def epoch(self, epoch: int) -> np.ndarray:
        """The window rows of `epoch`, in order: blocks of parts, each block's windows shuffled."""
        if self._cached and self._cached[0] == epoch:
            return self._cached[1]
        bounds = self.corpus.part_rows
        parts = np.random.default_rng([self.seed, epoch]).permutation(len(bounds) - 1)
        blocks = []
        for b in range(0, len(parts), self.shuffle_parts):
            rows = np.concatenate([np.arange(bounds[p], bounds[p + 1])
                                   for p in parts[b : b + self.shuffle_parts]])  # fmt: skip
            blocks.append(np.random.default_rng([self.seed, epoch, b]).permutation(rows))
        rows = np.concatenate(blocks)
        if self.group_by_length:
            rows = self._grouped(rows, epoch)
        self._cached = (epoch, rows)
        return rows

    def _grouped(self, rows: np.ndarray, epoch: int) -> np.ndarray:
        """`rows` with every GROUPED_BATCHES global batches sorted by window length, their
        global batches in a seeded order; cut where global batches start."""
        batch, windows = self.group_by_length, self.corpus.windows
        lengths = windows[rows, 3] - windows[rows, 2]
        first = -epoch * len(rows) % batch  # where the epoch's first whole global batch starts
        last = first + (len(rows) - first) // batch * batch  # and where its last one ends
        out = rows.copy()
        for start in range(first, last, batch * GROUPED_BATCHES):
            stop = min(start + batch * GROUPED_BATCHES, last)
            group = rows[start:stop][np.argsort(-lengths[start:stop], kind="stable")]
            batches = group.reshape(-1, batch)
            order = np.random.default_rng([self.seed, epoch, start]).permutation(len(batches))
            out[start:stop] = batches[order].reshape(-1)
        return out

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The window rows at global positions (windows counted from the first step)."""
        n = len(self.corpus)
        epochs = positions // n
        out = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(epochs).tolist():
            here = epochs == epoch
            out[here] = self.epoch(epoch)[positions[here] - epoch * n]
        return out


@dataclass(frozen=True)
class Owner:
    """Which micro-batches a reader prepares: rank `rank` of `world`, DataLoader worker
    `worker` of `workers`, in a run that (re)started at `start_step`."""

    rank: int = 0
    world: int = 1
    worker: int = 0
    workers: int = 1
    start_step: int = 0

    def owns(self, positions: np.ndarray, global_batch: int, per_device: int) -> np.ndarray:
        """Which of the global positions this reader takes."""
        step, within = np.divmod(positions, global_batch)
        chunk = within // per_device
        micro = (step - self.start_step) * (global_batch // (per_device * self.world))
        micro = micro + chunk // self.world
        return (chunk % self.world == self.rank) & (micro % self.workers == self.worker)


class PageReader:
    """The pages of windows, read a part at a time; of each part only the pages this reader's
    windows need in that epoch are kept, for the parts of about one block."""

    def __init__(self, order: Order, owner: Owner, global_batch: int, per_device: int,
                 read: Callable[[Path, np.ndarray], dict[int, tuple]]):  # fmt: skip
        """`read(path, pages)` returns {page: (source, input_ids, bbox or None)}."""
        self.order, self.owner, self.read = order, owner, read
        self.global_batch, self.per_device = global_batch, per_device
        self.parts: OrderedDict[tuple[int, int], dict[int, tuple]] = OrderedDict()
        self._needed: tuple[int, dict[int, np.ndarray]] | None = None

    def _needed_pages(self, epoch: int) -> dict[int, np.ndarray]:
        """Part → the pages this reader's windows of `epoch` come from."""
        if self._needed is None or self._needed[0] != epoch:
            n = len(self.order.corpus)
            positions = np.arange(epoch * n, (epoch + 1) * n)
            mine = self.owner.owns(positions, self.global_batch, self.per_device)
            windows = self.order.corpus.windows[self.order.epoch(epoch)[mine]]
            keys = np.unique(windows[:, 0] << 32 | windows[:, 1])  # sorted by part, then page
            parts, starts = np.unique(keys >> 32, return_index=True)
            pages = np.split(keys & 0xFFFFFFFF, starts[1:])
            self._needed = (epoch, dict(zip(parts.tolist(), pages, strict=True)))
        return self._needed[1]

    def page(self, position: int, row: int) -> tuple:
        """(source, input_ids, bbox) of the page of window `row` (`Order.rows` at `position`;
        the window is tokens start:end of the page, corpus.windows[row])."""
        epoch = position // len(self.order.corpus)  # which pages of the part are kept
        part, page = self.order.corpus.windows[row, :2].tolist()
        key = (epoch, part)
        if key not in self.parts:
            wanted = self._needed_pages(epoch).get(part, np.array([page]))
            self.parts[key] = self.read(self.order.corpus.files[part], wanted)
            # Positions only grow, so the parts of two blocks at most are in use at once (where
            # length grouping mixes the end of one block with the start of the next).
            while len(self.parts) > 2 * self.order.shuffle_parts:
                self.parts.popitem(last=False)
        return self.parts[key][page]
