"""Train a WordPiece vocabulary on MeCab-split text, written as a BertJapaneseTokenizer directory.

The recipe follows cl-tohoku/bert-japanese (and the izumi-lab ELECTRA): text is NFKC-normalized
and split into words by MeCab exactly as the tokenizer will split it, then Hugging Face
`tokenizers`' WordPiece trainer learns the subwords. The vocabulary starts with `[PAD]`, `[UNK]`,
`[CLS]`, `[SEP]`, `[MASK]` and `[unused0..9]`; with the `jis` alphabet (the default), ASCII, kana
and the 2,965 JIS level-1 kanji are always present both word-initially (`字`) and inside words
(`##字`), so common Japanese characters never become `[UNK]`, whatever the corpus.

Input is streamed file by file through a pool of MeCab workers: memory holds the word counts,
never the corpus.
"""

from __future__ import annotations

import json
import multiprocessing
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from layoutja.common import Progress, UserError
from layoutja.text.mecab import MecabWords, dictionary_key
from layoutja.text.pagetext import expand_inputs, iter_texts
from layoutja.text.tokenizer import DEFAULT_SPECIALS, JapaneseTokenizer

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # cl-tohoku's order and ids


@dataclass(frozen=True)
class VocabConfig:
    """What `layoutja vocab` trains; defaults are cl-tohoku's v2 settings."""

    vocab_size: int = 32768
    dic: str = "unidic_lite"
    do_lower_case: bool = False
    alphabet: str = "jis"  # "jis": always include kana + JIS level-1 kanji; "corpus": seen only
    limit_alphabet: int = 6129
    num_unused: int = 10
    min_frequency: int = 2
    workers: int = 1


def jis_alphabet() -> list[str]:
    """ASCII, then the NFKC forms of JIS X 0208 non-kanji (kana, symbols) and level-1 kanji."""
    chars = [chr(c) for c in range(0x21, 0x7F)]
    for row in range(0xA1, 0xD0):  # rows 1-8 (symbols, kana, Greek, Cyrillic), 16-47 (level 1)
        for col in range(0xA1, 0xFF):
            try:
                chars.append(unicodedata.normalize("NFKC", bytes([row, col]).decode("euc_jp")))
            except UnicodeDecodeError:
                continue  # unassigned cell
    return [c for c in dict.fromkeys(chars) if len(c) == 1 and not c.isspace()]


_worker_words: MecabWords | None = None


def _init_worker(words: MecabWords) -> None:
    global _worker_words
    _worker_words = words


def _split_lines(lines: list[str]) -> list[str]:
    """Each line as the tokenizer's words joined by spaces (what the trainer counts)."""
    return [" ".join(_worker_words.split(_worker_words.normalize(line))) for line in lines]


def _word_lines(
    files: list[Path], words: MecabWords, workers: int, skipped: list[str]
) -> Iterator[str]:
    """Stream the corpus as MeCab-split lines, with progress over input bytes."""
    sizes = {f: f.stat().st_size for f in files}
    bar = Progress(sum(sizes.values()), "B", "MeCab", interval=10, scale=True)

    def skip(path: Path, reason: str) -> None:
        skipped.append(reason)
        bar.write(f"layoutja vocab: skipping {reason}")

    def chunks() -> Iterator[list[str]]:
        for path, lines in iter_texts(files, skip):
            for i in range(0, len(lines), 512):
                yield lines[i : i + 512]
            bar.update(sizes[path])

    _init_worker(words)
    if workers <= 1:
        split = map(_split_lines, chunks())
        for batch in split:
            yield from batch
    else:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(words,)) as pool:
            for batch in pool.imap(_split_lines, chunks(), chunksize=4):
                yield from batch
    bar.close()


def _final_vocab(learned: list[str], required: list[str], config: VocabConfig) -> list[str]:
    """Specials and unused slots, then the trainer's vocabulary with `required` guaranteed.

    Missing required entries take the place of the last (rarest) learned merges, so the
    vocabulary keeps exactly `vocab_size` entries when the corpus allows that many.
    """
    head = SPECIAL_TOKENS + [f"[unused{i}]" for i in range(config.num_unused)]
    reserved = set(head)
    body = [t for t in learned if t not in reserved]
    have = set(body)
    missing = [t for t in required if t not in have]
    room = config.vocab_size - len(head) - len(missing)
    if room < 0:
        raise UserError(
            f"--vocab-size {config.vocab_size} is too small for the {config.alphabet!r} alphabet "
            f"({len(head) + len(missing)} entries needed); use a larger size or --alphabet corpus"
        )
    singles = [t for t in body if len(t.removeprefix("##")) == 1]
    merges = [t for t in body if len(t.removeprefix("##")) != 1]
    keep = room - len(singles)
    return (head + singles + missing + merges[: max(keep, 0)])[: config.vocab_size]


def write_tokenizer_dir(out: Path, vocab: list[str], config: VocabConfig) -> None:
    """vocab.txt + tokenizer_config.json that `AutoTokenizer` loads as BertJapaneseTokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "BertJapaneseTokenizer",
        "word_tokenizer_type": "mecab",
        "subword_tokenizer_type": "wordpiece",
        "mecab_kwargs": {"mecab_dic": config.dic},
        "do_lower_case": config.do_lower_case,
        "model_max_length": 512,
        **DEFAULT_SPECIALS,
    }
    text = json.dumps(tokenizer_config, ensure_ascii=False, indent=2) + "\n"
    (out / "tokenizer_config.json").write_text(text, encoding="utf-8")
    specials = json.dumps(DEFAULT_SPECIALS, indent=2) + "\n"
    (out / "special_tokens_map.json").write_text(specials, encoding="utf-8")


def train_vocab(inputs: list[str | Path], out: Path, config: VocabConfig) -> dict:
    """Train a vocabulary on text/HTML `inputs` and write the tokenizer directory `out`.

    Returns a summary: files read and skipped (with reasons), final vocabulary size.
    """
    dic = dictionary_key(config.dic)
    if config.alphabet not in ("jis", "corpus"):
        raise UserError(f"unknown alphabet {config.alphabet!r}: choose 'jis' or 'corpus'")
    config = VocabConfig(**{**config.__dict__, "dic": dic})
    files = expand_inputs(inputs)
    words = MecabWords(dic)
    alphabet = jis_alphabet() if config.alphabet == "jis" else []
    if config.do_lower_case:
        alphabet = list(dict.fromkeys(c.lower() for c in alphabet if len(c.lower()) == 1))
    unused = [f"[unused{i}]" for i in range(config.num_unused)]
    # The jis alphabet is required whole (too small a size is refused below); a corpus alphabet
    # is capped so that its characters and their ## forms fit in the vocabulary.
    limit_alphabet = max(config.limit_alphabet, len(alphabet))
    if not alphabet:
        room = config.vocab_size - len(SPECIAL_TOKENS) - len(unused)
        limit_alphabet = min(config.limit_alphabet, room // 2)
    trainer = trainers.WordPieceTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=SPECIAL_TOKENS + unused,
        initial_alphabet=alphabet,
        limit_alphabet=limit_alphabet,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    model = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    skipped: list[str] = []
    lines = _word_lines(files, words, config.workers, skipped)
    if config.do_lower_case:
        lines = (line.lower() for line in lines)
    model.train_from_iterator(lines, trainer=trainer)
    if len(skipped) == len(files):
        raise UserError(f"no readable input among {len(files)} file(s); first: {skipped[0]}")
    learned = sorted(model.get_vocab().items(), key=lambda kv: kv[1])
    required = [t for c in alphabet for t in (c, "##" + c)]
    vocab = _final_vocab([t for t, _ in learned], required, config)
    write_tokenizer_dir(out, vocab, config)
    JapaneseTokenizer.from_pretrained(out)  # the directory must load: fail here, not later
    return {"files": len(files), "skipped": skipped, "vocab_size": len(vocab), "out": str(out)}
