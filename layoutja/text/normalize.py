"""NFKC normalization that remembers where every normalized character came from.

MeCab sees NFKC-normalized text (as in `transformers`' MecabTokenizer), but layoutja needs token
positions in the *original* text. NFKC is not character-for-character: `㈱` becomes `(株)`,
`ﾊﾟ` becomes `パ`, `か` + U+3099 becomes `が`. We split the text into *groups* of original
characters that normalize independently of their neighbours, so that

    NFKC(text) == "".join(NFKC(group) for group in groups)

and map a normalized position back to its group. A group of one character that normalizes to one
character (full-width `Ａ` → `A`, the common case in Japanese text) keeps a 1:1 mapping; only the
other, *irregular* groups are recorded, so ordinary text costs one C-level check.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

# Characters that are NFKC-stable starters and never the second half of a composition: a group
# boundary may always be placed before them. (ASCII; CJK punctuation and brackets 、。〃々〆〇〈〉
# 「」【】〒〔〕〜; kana and ・ー; CJK ideographs with extension A.)
# tests/test_normalize.py checks each of these properties exhaustively.
SAFE_CHARS = (
    "\x20-\x7e\u3001-\u3003\u3005-\u301f\u3041-\u3096\u309d\u309e\u30a0-\u30fe"
    "\u3400-\u4dbf\u4e00-\u9fff"
)
_UNSAFE_RUN = re.compile(f"[^{SAFE_CHARS}]+")
_SAFE_CHAR = re.compile(f"[{SAFE_CHARS}]")


def _nfkc(s: str) -> str:
    return unicodedata.normalize("NFKC", s)


def _joins_group(group: str, c: str) -> bool:
    """True when `c` cannot start a new group after the characters `group`."""
    # A non-starter (combining mark, or something that decomposes to one, like half-width ﾟ)
    # may be reordered or composed with what precedes it.
    if unicodedata.combining(unicodedata.normalize("NFKD", c)[0]):
        return True
    # A starter composes only with the starter right before it, which may itself be a
    # composition of the group (Hangul L+V, then LV+T), so test against the whole group.
    return _nfkc(group + c) != _nfkc(group) + _nfkc(c)


@dataclass(frozen=True)
class OffsetMap:
    """Maps sorted span boundaries of a derived text back to the text it was derived from.

    Group `k` covers derived `[nstart[k], nend[k])` and source `[ostart[k], oend[k])`; between
    groups the two texts advance together. A group may be shorter than its source (ﾊﾟ → パ) or
    longer (`㈱` → `(株)`).
    Spans that start or end inside a group widen to the whole group.
    """

    nstart: list[int]
    nend: list[int]
    ostart: list[int]
    oend: list[int]

    def starts(self, xs: list[int]) -> list[int]:
        """Source positions of the sorted span starts `xs`."""
        return self._map(xs, bisect_left, self.ostart)

    def ends(self, xs: list[int]) -> list[int]:
        """Source positions of the sorted (exclusive) span ends `xs`."""
        return self._map(xs, bisect_right, self.oend)

    def _map(self, xs: list[int], bisect, inside_to: list[int]) -> list[int]:
        # One pass per group, not per position: slices of `xs` between groups are shifted,
        # positions inside a group go to its start (for starts) or end (for ends).
        out: list[int] = []
        lo, shift = 0, 0
        for ns, ne, target, oe in zip(self.nstart, self.nend, inside_to, self.oend):
            before = bisect(xs, ns, lo)
            inside = bisect(xs, ne, before)
            out += map(shift.__add__, xs[lo:before])
            out += [target] * (inside - before)
            lo, shift = inside, oe - ne
        out += map(shift.__add__, xs[lo:])
        return out


class _SimpleChars(dict):
    """char → True when it normalizes alone to one safe character (Ａ → A, ｶ → カ, （ → ().

    Such characters never compose with a neighbour, so a run of them maps 1:1. Memoized: a
    corpus uses a few thousand distinct characters.
    """

    def __missing__(self, c: str) -> bool:
        self[c] = bool(_SAFE_CHAR.fullmatch(_nfkc(c)))
        return self[c]


_SIMPLE = _SimpleChars()


def nfkc_with_offsets(text: str) -> tuple[str, OffsetMap | None]:
    """Return `(NFKC(text), offset map)`; the map is None when positions correspond 1:1."""
    if unicodedata.is_normalized("NFKC", text):
        return text, None
    norm = _nfkc(text)
    for quick in (True, False):
        built, groups = _groups(text, quick)
        if built == norm:
            return norm, OffsetMap(*groups) if groups[0] else None
    # Cannot happen if SAFE_CHARS is right (tests/test_normalize.py): never return wrong offsets.
    raise RuntimeError(f"NFKC offset mapping failed for {text!r}; please report this")


def _groups(text: str, quick: bool) -> tuple[str, tuple[list[int], ...]]:
    """NFKC of `text` built group by group, and the irregular groups' spans.

    With `quick`, runs of simple characters are normalized in one call (the result is checked
    by the caller, which retries character by character if it ever differs).
    """
    out: list[str] = []
    nstart: list[int] = []
    nend: list[int] = []
    ostart: list[int] = []
    oend: list[int] = []
    done = 0  # original text before this position is already in `out`
    npos = 0  # length of "".join(out)
    for run in _UNSAFE_RUN.finditer(text):
        if quick and all(map(_SIMPLE.__getitem__, run.group())):
            out.append(text[done : run.start()] + _nfkc(run.group()))
            npos += run.end() - done
            done = run.end()
            continue
        # The safe character before the run may compose with it (か + U+3099): start there.
        begin = max(run.start() - 1, done)
        out.append(text[done:begin])
        npos += begin - done
        gstart = begin
        for i in range(begin + 1, run.end() + 1):
            if i < run.end() and _joins_group(text[gstart:i], text[i]):
                continue
            for start, end, group in _split(text, gstart, i):
                out.append(group)
                if len(group) != 1 or end - start != 1:
                    nstart.append(npos)
                    nend.append(npos + len(group))
                    ostart.append(start)
                    oend.append(end)
                npos += len(group)
            gstart = i
        done = run.end()
    out.append(text[done:])
    return "".join(out), (nstart, nend, ostart, oend)


def _split(text: str, start: int, end: int) -> list[tuple[int, int, str]]:
    """The group text[start:end] as (start, end, NFKC) pieces: one per character when the
    group composed nothing, so each character keeps its own span.

    A combining mark always joins the group before it, but not every one composes: NFKC turns
    ｵﾞ into オ + U+3099 (there is no voiced オ), two characters from two characters.
    """
    source = text[start:end]
    group = _nfkc(source)
    pieces = [_nfkc(c) for c in source]
    if len(source) > 1 and "".join(pieces) == group:
        return [(start + k, start + k + 1, piece) for k, piece in enumerate(pieces)]
    return [(start, end, group)]
