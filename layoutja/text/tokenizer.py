"""Japanese MeCab + WordPiece tokenizer with source offsets.

Produces exactly the tokens of `transformers.BertJapaneseTokenizer` (the tokenizer of
cl-tohoku/bert-base-japanese-v2 and of the izumi-lab ELECTRA models) for a tokenizer directory in
that format, plus each token's `(start, end)` character span in the original text. It is also
about twice as fast (docs/benchmarks.md), because:

- MeCab returns a line's nodes in one C call (layoutja.text.mecab) instead of a Python object per
  node; splitting them on whitespace gives BertJapaneseTokenizer's word list, which itself
  splits every MeCab surface on whitespace before WordPiece;
- WordPiece results are cached per MeCab node (a corpus has far fewer distinct nodes than
  nodes; the cache is bounded, `CACHE_NODES`), and offsets come from C-level passes over a line
  (see `_encode_segment`).

The steps mirror `BertJapaneseTokenizer.tokenize`: split out special tokens (`[MASK]` in text
stays one token), NFKC-normalize each remaining segment, MeCab, optional lower-casing,
WordPiece (greedy longest match, `[UNK]` for a word that cannot be matched or is longer than
100 characters).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, chain, compress, islice
from operator import not_, sub
from pathlib import Path

from layoutja.common import UserError
from layoutja.hub import resolve_tokenizer
from layoutja.text.mecab import DICTIONARIES, MecabWords
from layoutja.text.normalize import nfkc_with_offsets

MAX_WORD_CHARS = 100  # WordPiece's max_input_chars_per_word in transformers
# Distinct MeCab nodes keep coming over a million pages (numbers, names, URLs), about 300 bytes
# each cached: past this many the cache starts again (the frequent ones are back at once).
CACHE_NODES = 200_000
DEFAULT_SPECIALS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


@dataclass(frozen=True)
class TokenizerConfig:
    """The parts of a BertJapaneseTokenizer `tokenizer_config.json` that decide the tokens."""

    mecab_dic: str = "unidic_lite"
    do_lower_case: bool = False
    normalize_text: bool = True
    mecab_option: str = ""
    specials: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SPECIALS))
    # Every string the text is split on before MeCab (the special and added tokens).
    never_split: tuple[str, ...] = tuple(DEFAULT_SPECIALS.values())

    @classmethod
    def from_json(cls, data: dict, source: str) -> TokenizerConfig:
        """Read a `tokenizer_config.json` dict; `source` names the file in errors."""

        def content(token: object) -> str:
            return token["content"] if isinstance(token, dict) else str(token)

        word = data.get("word_tokenizer_type", "basic")
        sub = data.get("subword_tokenizer_type", "wordpiece")
        if word != "mecab" or sub != "wordpiece" or not data.get("do_word_tokenize", True):
            raise UserError(
                f"{source}: not a MeCab + WordPiece BertJapaneseTokenizer "
                f"(word_tokenizer_type={word!r}, subword_tokenizer_type={sub!r}); give the "
                "MeCab tokenizer the model was trained with (for jri-advtechlab/"
                "layoutlm-wikipedia-ja: cl-tohoku/bert-base-japanese-v2)"
            )
        mecab = dict(data.get("mecab_kwargs") or {})
        dic = mecab.get("mecab_dic", "unidic_lite")
        if dic is not None and dic.replace("-", "_") not in DICTIONARIES:
            raise UserError(
                f"{source}: unknown mecab_dic {dic!r} (supported: {', '.join(DICTIONARIES)})"
            )
        specials = {k: content(data.get(k, v)) for k, v in DEFAULT_SPECIALS.items()}
        extra = [content(t) for t in data.get("additional_special_tokens") or []]
        extra += [content(t) for t in (data.get("added_tokens_decoder") or {}).values()]
        return cls(
            mecab_dic=dic.replace("-", "_") if dic else "",
            do_lower_case=bool(data.get("do_lower_case", False)),
            normalize_text=bool(mecab.get("normalize_text", True)),
            mecab_option=mecab.get("mecab_option") or "",
            specials=specials,
            never_split=tuple(dict.fromkeys([*specials.values(), *extra])),
        )


@dataclass(slots=True)
class Encoding:
    """Tokens of one text, their vocabulary ids and character spans in the original text.

    Spans are kept as two flat lists: a tuple per token would make the garbage collector
    rescan millions of small objects while a corpus is encoded (about 40% of the run time).
    """

    tokens: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """`(start, end)` of each token: `text[start:end]` is where it came from."""
        return list(zip(self.starts, self.ends))


def vocab_sha256(tokenizer_dir: Path) -> str:
    """The hash that identifies a tokenizer's vocabulary (recorded with localized data)."""
    return hashlib.sha256((tokenizer_dir / "vocab.txt").read_bytes()).hexdigest()


def load_vocab(path: Path) -> dict[str, int]:
    """vocab.txt → {token: id}, one token per line (the BERT format)."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read vocabulary: {e}") from None
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise UserError(f"{path}: empty vocabulary")
    return {tok: i for i, tok in enumerate(lines)}


class JapaneseTokenizer:
    """Fast BertJapaneseTokenizer-compatible tokenizer that also returns source offsets."""

    def __init__(
        self, vocab: dict[str, int], config: TokenizerConfig, cache_nodes: int = CACHE_NODES
    ):
        self.vocab = vocab
        self.config = config
        self.cache_nodes = cache_nodes
        self.unk_token = config.specials["unk_token"]
        if self.unk_token not in vocab:
            raise UserError(f"vocabulary has no unknown token {self.unk_token!r}")
        self.unk_id = vocab[self.unk_token]
        self._longest_piece = max(len(t.removeprefix("##")) for t in vocab)
        self.words = MecabWords(config.mecab_dic, config.normalize_text, config.mecab_option)
        specials = sorted(config.never_split, key=len, reverse=True)  # longest match first
        self._special_re = re.compile("|".join(map(re.escape, specials)))
        # MeCab node → its pieces (see _node_entry): most nodes repeat, so WordPiece runs once
        # per distinct node; at most `cache_nodes` of them are kept.
        self._cache: dict[str, tuple] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> JapaneseTokenizer:
        """Load a BertJapaneseTokenizer directory (vocab.txt + tokenizer_config.json)."""
        d = resolve_tokenizer(name_or_path)
        cfg_path = d / "tokenizer_config.json"
        if not cfg_path.is_file():
            raise UserError(f"{d}: missing tokenizer_config.json (not a tokenizer directory)")
        try:
            data = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{cfg_path}: malformed tokenizer config: {e}") from None
        if not isinstance(data, dict):
            raise UserError(f"{cfg_path}: malformed tokenizer config: not a JSON object")
        vocab_path = d / "vocab.txt"
        if not vocab_path.is_file():
            raise UserError(f"{d}: missing vocab.txt")
        return cls(load_vocab(vocab_path), TokenizerConfig.from_json(data, str(cfg_path)))

    def __reduce__(self):  # pickled into worker processes; the cache stays behind
        return JapaneseTokenizer, (self.vocab, self.config, self.cache_nodes)

    def _wordpiece(self, word: str) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
        """WordPiece one MeCab word: (tokens, ids, how many characters of `word` each covers).

        The lengths tile the word, so a whole line's spans are one running sum.
        """
        text = word
        if self.config.do_lower_case and word not in self.config.never_split:
            text = word.lower()
        unknown = ((self.unk_token,), (self.unk_id,), (len(word),))
        if len(text) > MAX_WORD_CHARS:
            return unknown
        vocab = self.vocab
        tokens, ids, ends = [], [], []
        start = 0
        while start < len(text):
            end = min(len(text), start + self._longest_piece)  # no longer piece can match
            while end > start:
                piece = text[start:end] if start == 0 else "##" + text[start:end]
                if piece in vocab:
                    break
                end -= 1
            else:
                return unknown
            tokens.append(piece)
            ids.append(vocab[piece])
            ends.append(end)
            start = end
        if len(text) != len(word):
            # Lower-casing lengthened a character (İ → i̇): a piece ending inside it takes the
            # whole character, and the pieces after it within the character get none.
            lowered_starts = list(accumulate((len(c.lower()) for c in word), initial=0))
            ends = [bisect_left(lowered_starts, e) for e in ends]
        return tuple(tokens), tuple(ids), tuple(b - a for a, b in zip([0, *ends], ends))

    def encode(self, text: str) -> Encoding:
        """Tokenize `text`; offsets are character spans in `text` itself."""
        enc = Encoding()
        pos = 0
        for m in self._special_re.finditer(text):
            self._encode_segment(text, pos, m.start(), enc)
            enc.tokens.append(m.group())
            enc.ids.append(self.vocab.get(m.group(), self.unk_id))
            enc.starts.append(m.start())
            enc.ends.append(m.end())
            pos = m.end()
        self._encode_segment(text, pos, len(text), enc)
        return enc

    def _node_entry(self, node: str) -> tuple:
        """One MeCab node's pieces, interleaved: (token, id, advance, length, token, ...).

        A piece's *advance* is how far its end lies past the previous piece's end (whitespace
        before it included); its *length* is how many characters it covers. Interleaving lets a
        whole line be flattened in one pass and split with cheap strided slices.
        """
        entry = self._cache.get(node)
        if entry is not None:
            return entry
        pieces: list = []
        cursor = 0
        for word in node.split():
            at = node.find(word, cursor)
            gap = at - cursor
            for token, token_id, length in zip(*self._wordpiece(word)):
                pieces += (token, token_id, gap + length, length)
                gap = 0
            cursor = at + len(word)
        entry = tuple(pieces)
        if not node[-1:].isspace():  # see _close_nodes: only such nodes are looked up
            if len(self._cache) >= self.cache_nodes:
                self._cache.clear()  # bounded memory over a long run
            self._cache[node] = entry
        return entry

    def _encode_segment(self, text: str, begin: int, end: int, enc: Encoding) -> None:
        """Encode `text[begin:end]` (no special tokens inside) onto `enc`.

        Runs once per line of a corpus, so per node there are only C-level passes: cache
        lookups, one flattening, strided slices, and a running sum of advances for the spans
        in the NFKC text. Irregular NFKC groups (㈱ → (株)) then cost one Python step each.
        """
        segment = text[begin:end]
        if self.config.normalize_text:
            norm, nfkc_map = nfkc_with_offsets(segment)
        else:
            norm, nfkc_map = segment, None
        nodes = self.words.nodes(norm)
        entries = list(map(self._cache.get, nodes))
        if None in entries:  # cached entries are never empty, so `not_` finds the misses
            for i in compress(range(len(nodes)), map(not_, entries)):
                if nodes[i][-1].isspace():  # rare: rebuild the line with closed nodes
                    entries = list(map(self._node_entry, _close_nodes(nodes)))
                    break
                entries[i] = self._node_entry(nodes[i])
        flat = list(chain.from_iterable(entries))
        enc.tokens += flat[0::4]
        enc.ids += flat[1::4]
        ends = list(accumulate(flat[2::4]))
        starts = list(map(sub, ends, flat[3::4]))
        if nfkc_map is not None:
            starts, ends = nfkc_map.starts(starts), nfkc_map.ends(ends)
        if begin:
            starts, ends = map(begin.__add__, starts), map(begin.__add__, ends)
        enc.starts += starts
        enc.ends += ends

    def tokenize(self, text: str) -> list[str]:
        """Tokens only, like `BertJapaneseTokenizer.tokenize`."""
        return self.encode(text).tokens

    def encode_batch(
        self, texts: Iterable[str], workers: int = 1, chunk_size: int = 1024
    ) -> Iterator[Encoding]:
        """Encode many texts in order, on `workers` processes (1: in this process)."""
        if workers <= 1:
            yield from map(self.encode, texts)
            return
        lines = iter(texts)
        chunks = iter(lambda: list(islice(lines, chunk_size)), [])  # until an empty chunk
        with multiprocessing.get_context("fork").Pool(
            workers, initializer=_init_worker, initargs=(self,)
        ) as pool:
            for packed in pool.imap(_encode_packed, chunks):
                yield from _unpack(packed)


def _close_nodes(nodes: list[str]) -> list[str]:
    """Join each node that ends in whitespace to the next one.

    A node ends in whitespace when its surface is whitespace to Python but not to MeCab (e.g.
    U+001C) or holds whitespace: the characters after its last word would otherwise be lost
    from the running sum of advances. Merged, every node but the last ends with a word.
    """
    closed, carry = [], ""
    for node in nodes:
        carry += node
        if not carry[-1].isspace():
            closed.append(carry)
            carry = ""
    if carry:
        closed.append(carry)
    return closed


_worker_tokenizer: JapaneseTokenizer | None = None


def _init_worker(tokenizer: JapaneseTokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_packed(texts: list[str]) -> tuple[bytes, bytes, bytes, bytes, str]:
    """Encode in a worker and pack the results into a few flat buffers.

    Pickling an Encoding per line would make the parent unpickle every token and offset as
    its own object, which costs about as much as encoding them did.
    """
    encodings = list(map(_worker_tokenizer.encode, texts))
    counts = array("q", [len(e.ids) for e in encodings])
    ids = array("q", chain.from_iterable(e.ids for e in encodings))
    starts = array("q", chain.from_iterable(e.starts for e in encodings))
    ends = array("q", chain.from_iterable(e.ends for e in encodings))
    tokens = "\0".join(chain.from_iterable(e.tokens for e in encodings))  # MeCab drops NUL
    return counts.tobytes(), ids.tobytes(), starts.tobytes(), ends.tobytes(), tokens


def _unpack(packed: tuple[bytes, bytes, bytes, bytes, str]) -> Iterator[Encoding]:
    counts, ids, starts, ends = (array("q", buffer).tolist() for buffer in packed[:4])
    tokens = packed[4].split("\0") if ids else []
    pos = 0
    for n in counts:
        end = pos + n
        yield Encoding(tokens[pos:end], ids[pos:end], starts[pos:end], ends[pos:end])
        pos = end
