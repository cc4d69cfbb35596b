"""The published post-processing, rule by rule: per token the first of the top-k labels that is
the page category's (`allowed_labels`), then the gap fixing of `fix_o_tags` (`bridge_gaps`).

The expected tags are worked out by hand from the rule as the published shinra_inference.py
states it (an I-x after an O looks back at positions i-2, i-3, i-4; the same I-x first: the gap
becomes I-x; any other tag first: B-x; the page start reached: B-x; only O: unchanged).
"""

from __future__ import annotations

import numpy as np
import pytest

from layoutja.shinra.labels import allowed_labels, bridge_gaps, label_names

NAMES = label_names({"所在地", "国"})  # O, B-国, I-国, B-所在地, I-所在地
INDEX = {name.replace("-", "").replace("所在地", "所"): i for i, name in enumerate(NAMES)}


def fixed(tags: str, max_gap: int = 3) -> str:
    """bridge_gaps on a space-separated tag string ("I-国" written "I国", "I-所在地" "I所")."""
    back = {i: t for t, i in INDEX.items()}
    return " ".join(back[i] for i in bridge_gaps([INDEX[t] for t in tags.split()], NAMES, max_gap))


@pytest.mark.parametrize(
    "tags, expected",
    [
        # the same I-x first: the gap (1 to 3 O) becomes I-x
        ("O O O O B国 I国 O I国", "O O O O B国 I国 I国 I国"),
        ("O O O O B国 I国 O O O I国", "O O O O B国 I国 I国 I国 I国 I国"),
        # 4 O: the look-back (i-2..i-4) meets only O, and does not reach the page start
        ("O O O O B国 I国 O O O O I国", "O O O O B国 I国 O O O O I国"),
        # another attribute first: a new value (B-)
        ("O O O O B国 I国 O I所", "O O O O B国 I国 O B所"),
        ("O O O O O I所 O O I国", "O O O O O B所 O O B国"),  # (the I所 is fixed too)
        # B-x of the same attribute first: a new value too, not a bridge
        ("O O O O O B国 O I国", "O O O O O B国 O B国"),
        # the page start reached (position 0 is never read): B-x
        ("O O I国", "O O B国"),
        ("I国 O I国", "I国 O B国"),
        ("O O O O O I国", "O O O O O B国"),
        ("O O O O O O I国", "O O O O O O I国"),  # i = 6: the look-back stops at position 2
        # later positions see earlier rewrites
        ("B国 O I国 O I国", "B国 O B国 O B国"),  # three values, not one
        ("O O O O O B国 O I国 O I国", "O O O O O B国 O B国 O B国"),
        ("O O O O O B国 I国 O I国 O O I国", "O O O O O B国 I国 I国 I国 I国 I国 I国"),
        # only an I- right after an O is looked at: B- after O, I- after a tag are left alone
        ("O O O O B国 I国 O B国 I国", "O O O O B国 I国 O B国 I国"),
        ("O O O O B国 I所 I国", "O O O O B国 I所 I国"),
    ],
)
def test_the_published_gap_fixing(tags, expected):
    assert fixed(tags) == expected


def test_the_gap_length_is_a_parameter_and_0_turns_it_off():
    tags = "O O O O O O B国 I国 O O O O I国"
    assert fixed(tags, max_gap=3) == tags  # 4 O: longer than the published look-back
    assert fixed(tags, max_gap=4) == "O O O O O O B国 I国 I国 I国 I国 I国 I国"
    assert fixed(tags, max_gap=0) == tags
    assert fixed("O O I国", max_gap=0) == "O O I国"  # off: no B- at the page start either
    ids = [INDEX["I国"], 0, INDEX["I国"]]
    assert bridge_gaps(ids, NAMES, 3) == [INDEX["I国"], 0, INDEX["B国"]]
    assert ids == [INDEX["I国"], 0, INDEX["I国"]]  # the input is not changed


def test_the_first_of_the_top_labels_that_is_the_categorys():
    allowed = np.array(
        [name == "O" or name.endswith("国") for name in NAMES]
    )  # 所在地: another ENE's
    b, i, b_other, i_other = INDEX["B国"], INDEX["I国"], INDEX["B所"], INDEX["I所"]
    top = np.array([
        [b_other, 0, i],  # O comes before I-国: O
        [i_other, i, 0],  # the best is another ENE's: the next one, I-国
        [b, i, 0],  # the best is the category's
        [i_other, b_other, i],  # past the others: the third
    ])  # fmt: skip
    assert allowed_labels(top, allowed).tolist() == [0, i, b, i]
    assert allowed_labels(top[:, :2], allowed).tolist() == [0, i, b, 0]  # top 2: none of them
    assert allowed_labels(top[:, :1], allowed).tolist() == [0, 0, b, 0]  # the argmax, or O
    everything = np.ones(len(NAMES), bool)
    assert allowed_labels(top, everything).tolist() == top[:, 0].tolist()
    assert allowed_labels(np.array([b_other, i]), allowed).tolist() == [0, i]  # (n,): k = 1


def test_label_names_are_nfkc_and_stripped_in_a_fixed_order():
    assert label_names({" ＩＡＴＡ（空港コード）", "国"}) == [
        "O", "B-IATA(空港コード)", "I-IATA(空港コード)", "B-国", "I-国"]  # fmt: skip
