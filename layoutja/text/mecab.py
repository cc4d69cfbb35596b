"""MeCab word splitting exactly as transformers' MecabTokenizer does it, plus the nodes'
positions in the text (for offsets)."""

from __future__ import annotations

import os
import re
import unicodedata

import fugashi

from layoutja.common import UserError

DICTIONARIES = ("unidic_lite", "ipadic")


def dictionary_key(name: str) -> str:
    """`name` as DICTIONARIES spell it (`unidic-lite` → `unidic_lite`); an unknown one is a
    UserError naming the choices."""
    key = name.replace("-", "_")
    if key not in DICTIONARIES:
        raise UserError(
            f"unknown MeCab dictionary {name!r}: choose one of {', '.join(DICTIONARIES)}"
        )
    return key


def dictionary_dir(name: str) -> str:
    """Directory of a MeCab dictionary installed as a Python package (`unidic-lite`, `ipadic`)."""
    key = dictionary_key(name)
    if key == "unidic_lite":
        import unidic_lite

        return unidic_lite.DICDIR
    import ipadic

    return ipadic.DICDIR


# Ends each MeCab node in the `%M` output below. OHM SIGN never survives NFKC (it becomes Ω),
# so it cannot occur in normalized text; other text is checked.
_NODE_END = "\u2126"
_HAS_SPACE = re.compile(r"\s").search  # the characters str.split() splits on


class MecabWords:
    """NFKC + MeCab word splitting, as BertJapaneseTokenizer's MecabTokenizer does it."""

    def __init__(self, mecab_dic: str, normalize_text: bool = True, mecab_option: str = ""):
        self.mecab_dic = mecab_dic
        self.normalize_text = normalize_text
        self.mecab_option = mecab_option
        options = mecab_option
        if mecab_dic:
            d = dictionary_dir(mecab_dic)
            options = f'-d "{d}" -r "{os.path.join(d, "mecabrc")}" {options}'
        self._wakati = fugashi.GenericTagger(options + " -Owakati").parse
        # `%M` is a node's surface *with* the whitespace MeCab skipped before it, so the
        # length of what MeCab skipped comes out of C-level string operations.
        node = f"%M{_NODE_END}"
        self._spaced = fugashi.GenericTagger(
            f"{options} --output-format-type= --node-format={node} --unk-format={node} "
            "--bos-format= --eos-format="
        ).parse

    def __reduce__(self):  # the MeCab taggers cannot be pickled: rebuild them in the worker
        return MecabWords, (self.mecab_dic, self.normalize_text, self.mecab_option)

    def normalize(self, text: str) -> str:
        return unicodedata.normalize("NFKC", text) if self.normalize_text else text

    def split(self, normalized: str) -> list[str]:
        """MeCab words of already normalized text. MeCab reads a C string: NUL ends the text."""
        return self._wakati(normalized.split("\0", 1)[0]).split()

    def nodes(self, normalized: str) -> list[str]:
        """MeCab's nodes as text: each is the whitespace MeCab skipped before a surface, then
        the surface. They tile the text (up to trailing whitespace), and splitting them on
        whitespace gives exactly the words of `split`."""
        text = normalized.split("\0", 1)[0]
        if not _HAS_SPACE(text):
            words = self._wakati(text).split()
            if sum(map(len, words)) == len(text):  # MeCab skipped nothing: words are nodes
                return words
        if _NODE_END not in text:
            nodes = self._spaced(text).split(_NODE_END)
            nodes.pop()  # empty: after the last node's end mark
            return nodes
        nodes, cursor = [], 0  # the mark is in the text: rebuild nodes from the words
        for word in self.split(text):
            end = text.find(word, cursor) + len(word)
            nodes.append(text[cursor:end])
            cursor = end
        return nodes
