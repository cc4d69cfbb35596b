"""The global order of training windows: the same global batches on any number of processes and
DataLoader workers, each window once per epoch, batches mixed across the corpus."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader

from layoutja.common import UserError
from layoutja.pretrain.order import Corpus, Order, Owner, micro_batch_slice, window_spans
from layoutja.pretrain.windows import (
    MVLM_MASKING,
    Batcher,
    MaskedBatches,
    SpecialIds,
    localized_files,
)
from layoutja.text.tokenizer import load_vocab

GLOBAL = 6  # windows per global batch


@pytest.fixture(scope="module")
def order(localized_dir) -> Order:
    files = localized_files(localized_dir)
    assert len(files) >= 3
    return Order(Corpus.index(files, max_tokens=62, margin=16), seed=3, shuffle_parts=2)


def global_batches(order: Order, specials: SpecialIds, vocab: int, *, world: int,
                   per_device: int, workers: int, steps: int, start: int = 0) -> list:  # fmt: skip
    """Each step's global batch as the ranks prepare it, put back in chunk order: a list per
    step of (masked ids, labels, boxes) per window, padding cut off."""
    accumulation = GLOBAL // (per_device * world)
    per_rank = []
    for rank in range(world):
        batcher = Batcher(specials, vocab, MVLM_MASKING, max_length=64)
        dataset = MaskedBatches(order, batcher, rank=rank, world=world, start_step=start,
                                global_batch=GLOBAL, per_device=per_device)  # fmt: skip
        loader = iter(DataLoader(dataset, batch_size=None, num_workers=workers))
        per_rank.append([next(loader) for _ in range(steps * accumulation)])
    batches = []
    for step in range(steps):
        windows = []
        for chunk in range(GLOBAL // per_device):
            micro, rank = divmod(chunk, world)
            batch = per_rank[rank][step * accumulation + micro]
            for row in range(len(batch["input_ids"])):
                n = int(batch["attention_mask"][row].sum())
                windows.append(tuple(batch[k][row, :n].tolist()
                                     for k in ("input_ids", "labels", "bbox")))  # fmt: skip
        batches.append(windows)
    return batches


def test_the_same_global_batches_on_any_number_of_processes_and_workers(order, unidic_dir):
    vocab = load_vocab(unidic_dir / "vocab.txt")
    specials = SpecialIds.from_vocab(vocab)
    steps = len(order.corpus) // GLOBAL + 3  # into the second epoch
    one = global_batches(order, specials, len(vocab), world=1, per_device=6, workers=0,
                         steps=steps)  # fmt: skip
    for world, per_device, workers in [(1, 2, 2), (2, 1, 0), (2, 3, 1), (3, 1, 2), (3, 2, 0)]:
        many = global_batches(order, specials, len(vocab), world=world, per_device=per_device,
                              workers=workers, steps=steps)  # fmt: skip
        assert many == one, (world, per_device, workers)
    # A resumed run (any world) takes the same steps from where it starts.
    later = global_batches(order, specials, len(vocab), world=3, per_device=1, workers=1,
                           steps=2, start=5)  # fmt: skip
    assert later == one[5:7]
    masked = sum(label != -100 for b in one for _, labels, _ in b for label in labels)
    assert masked > 0 and one[0] != one[1]


def test_a_margin_as_wide_as_a_window_is_refused(localized_dir):
    with pytest.raises(UserError, match="margin 62 must be smaller than max_length - 2"):
        Corpus.index(localized_files(localized_dir), max_tokens=62, margin=62)


def test_the_index_is_every_pages_window_spans_in_order(tmp_path):
    """The index (array operations) lists, part by part and page by page, the windows
    window_spans cuts: lengths around the window size and the stride, empty pages and parts."""
    rng = np.random.default_rng(0)
    edges = [0, 1, 61, 62, 63, 107, 108, 109, 154, 155, 500]  # max 62, stride 46
    per_part = [np.array(edges), np.array([], dtype=np.int64), rng.integers(0, 400, 300),
                np.array([0, 0])]  # fmt: skip
    files = [tmp_path / f"part-{i:05d}" for i in range(len(per_part))]
    corpus = Corpus.index(files, 62, 16, lambda files: per_part)
    expected = [(part, page, s, e)
                for part, pages in enumerate(per_part) for page, n in enumerate(pages.tolist())
                for s, e in window_spans(n, 62, 16)]  # fmt: skip
    assert corpus.windows.tolist() == [list(w) for w in expected]
    bounds = [0, *np.cumsum([sum(len(window_spans(n, 62, 16)) for n in pages.tolist())
                             for pages in per_part])]  # fmt: skip
    assert corpus.part_rows.tolist() == bounds and corpus.windows.dtype == np.int64
    with pytest.raises(UserError, match="holds no tokens"):
        Corpus.index(files[:1], 62, 16, lambda files: [np.array([0, 0])])


def test_parts_carry_their_page_lengths_in_the_footer(localized_dir, tmp_path):
    """A training job learns the pages' lengths from the parts' footers; a part written without
    them (an older run) is read as before."""
    import pyarrow.parquet as pq

    from layoutja.localize.parts import LENGTHS, page_lengths

    part = localized_files(localized_dir)[0]
    column = pq.read_table(part, columns=["input_ids"]).column(0).combine_chunks()
    lengths = column.value_lengths().to_numpy().tolist()
    assert LENGTHS in pq.read_schema(part).metadata
    assert page_lengths(part).tolist() == lengths
    old = tmp_path / "part-00000.parquet"
    pq.write_table(pq.read_table(part).replace_schema_metadata(None), old)
    assert LENGTHS not in (pq.read_schema(old).metadata or {})
    assert page_lengths(old).tolist() == lengths


def test_each_window_once_per_epoch_and_epochs_differ(order):
    n = len(order.corpus)
    first, second = order.rows(np.arange(n)), order.rows(np.arange(n, 2 * n))
    assert sorted(first.tolist()) == list(range(n)) == sorted(second.tolist())
    assert first.tolist() != second.tolist()
    again = Order(order.corpus, seed=3, shuffle_parts=2)
    assert again.rows(np.arange(2 * n)).tolist() == [*first.tolist(), *second.tolist()]


def test_owners_split_every_global_batch_exactly(order):
    positions = np.arange(120)
    for world, per_device, workers in [(1, 6, 1), (2, 1, 3), (3, 2, 2)]:
        owned = sum(
            Owner(rank, world, worker, workers).owns(positions, GLOBAL, per_device).astype(int)
            for rank in range(world)
            for worker in range(workers)
        )
        assert owned.tolist() == [1] * len(positions)
    assert micro_batch_slice(rank=1, world=3, micro=2, per_device=4) == slice(28, 32)


def test_a_global_batch_mixes_windows_of_many_parts(tmp_path):
    """64 parts of one page each, 2 windows a page: a global batch of 16 takes its windows
    from about as many parts as the shuffle spans, not from a few adjacent ones."""
    lengths = [np.array([100])] * 64
    corpus = Corpus.index([tmp_path / f"part-{i:05d}" for i in range(64)], 62, 16,
                          lambda files: lengths)  # fmt: skip
    parts = corpus.windows[:, 0]
    for shuffle_parts, least in [(64, 12), (8, 6)]:
        rows = Order(corpus, seed=0, shuffle_parts=shuffle_parts).rows(np.arange(128))
        distinct = [len(Counter(parts[rows[i : i + 16]].tolist())) for i in range(0, 128, 16)]
        assert min(distinct) >= least, (shuffle_parts, distinct)
        assert max(distinct) <= shuffle_parts


def test_electra_batches_carry_a_uniform_draw_per_token(order, unidic_dir):
    vocab = load_vocab(unidic_dir / "vocab.txt")
    specials = SpecialIds.from_vocab(vocab)
    batcher = Batcher(specials, len(vocab), MVLM_MASKING, max_length=64, uniforms=True)
    dataset = MaskedBatches(order, batcher, rank=0, world=1, start_step=0, global_batch=GLOBAL,
                            per_device=GLOBAL)  # fmt: skip
    batch = next(iter(dataset))
    assert batch["uniforms"].shape == batch["input_ids"].shape
    assert ((batch["uniforms"] >= 0) & (batch["uniforms"] < 1)).all()
    assert not ((batch["labels"] != -100) & (batch["attention_mask"] == 0)).any()


def padding_share(order: Order, per_device: int, epoch: int = 1) -> float:
    """Padded positions / all positions of an epoch's micro-batches (whole global batches)."""
    windows = order.corpus.windows[order.epoch(epoch)]
    lengths = windows[:, 3] - windows[:, 2] + 2  # with [CLS] and [SEP]
    first = -epoch * len(lengths) % GLOBAL
    usable = (len(lengths) - first) // per_device * per_device
    chunks = lengths[first : first + usable].reshape(-1, per_device)
    return 1 - chunks.sum() / (chunks.max(1) * per_device).sum()


def test_length_grouping_keeps_each_epochs_windows_and_cuts_padding(order):
    grouped = Order(order.corpus, seed=3, shuffle_parts=2, group_by_length=GLOBAL)
    for epoch in (0, 1, 2):
        assert sorted(grouped.epoch(epoch).tolist()) == sorted(order.epoch(epoch).tolist())
    assert grouped.epoch(1).tolist() != order.epoch(1).tolist()
    before, after = padding_share(order, 2), padding_share(grouped, 2)
    assert after < before / 2, (before, after)
