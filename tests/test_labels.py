"""Gap bridging: short runs of O between two I- tokens of one attribute become I- of it."""

from __future__ import annotations

import pytest

from layoutja.shinra.labels import bridge_gaps, label_names

NAMES = label_names({"所在地", "国"})  # O, B-国, I-国, B-所在地, I-所在地


def bridged(tags: str, max_gap: int = 5) -> str:
    """bridge_gaps on a space-separated tag string, back as one ("I-国" written "I国")."""
    index = {name.replace("-", ""): i for i, name in enumerate(NAMES)}
    ids = bridge_gaps([index[t] for t in tags.split()], NAMES, max_gap)
    return " ".join(NAMES[i].replace("-", "") for i in ids)


@pytest.mark.parametrize(
    "tags, expected",
    [
        ("B国 I国 O O O O O I国", "B国 I国 I国 I国 I国 I国 I国 I国"),  # a run of exactly 5
        ("B国 I国 O O O O O O I国", "B国 I国 O O O O O O I国"),  # 6: too long
        ("B国 I国 O I国 O O I国 O", "B国 I国 I国 I国 I国 I国 I国 O"),  # runs in a row; trailing O
        ("B国 I国 O I所在地", "B国 I国 O I所在地"),  # different attributes on the two sides
        ("B国 I国 O B国 I国", "B国 I国 O B国 I国"),  # B- on the right: a new value
        ("B国 O I国", "B国 O I国"),  # B- on the left: not between two I- tokens
        ("O O I国 O O", "O O I国 O O"),  # O's at the edges have one side only
        ("I国 I所在地 I国", "I国 I所在地 I国"),  # only O tokens are relabeled
    ],
)
def test_runs_of_at_most_n_o_between_two_i_of_one_attribute(tags, expected):
    assert bridged(tags) == expected


def test_the_gap_length_is_a_parameter_and_0_turns_it_off():
    tags = "B国 I国 O O I国"
    assert bridged(tags, max_gap=2) == "B国 I国 I国 I国 I国"
    assert bridged(tags, max_gap=1) == tags
    assert bridged(tags, max_gap=0) == tags
    i = NAMES.index("I-国")
    ids = [i, 0, i]
    assert bridge_gaps(ids, NAMES, 0) == ids and bridge_gaps(ids, NAMES, 5) == [i, i, i]
    assert ids == [i, 0, i]  # the input is not changed
