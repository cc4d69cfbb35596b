"""Shared fixtures: tokenizer directories trained by layoutja itself on real Japanese text.

No model hub is reachable, so every tokenizer the tests compare against transformers is built
here with `layoutja.vocab.train_vocab` (small vocabularies, so WordPiece splits and [UNK]s are
frequent). Real text comes from the repository's sample and, when present, from the SHINRA
sample in ../shared (tests that need only it skip without it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from layoutja.textsource import file_texts
from layoutja.vocab import VocabConfig, train_vocab

DATA = Path(__file__).parent / "data"
SHINRA = Path(__file__).resolve().parents[2] / "shared" / "shinra-sample"


def shinra_files() -> list[Path]:
    return sorted(SHINRA.glob("Airport_TEXT/*.txt")) + sorted(SHINRA.glob("Airport_HTML/*.html"))


def real_lines() -> list[str]:
    """Lines of real Japanese text: the repo sample plus SHINRA's pages when available."""
    lines = file_texts(DATA / "sample_ja.txt")
    for path in shinra_files():
        lines += file_texts(path)
    return lines


def _train(tmp_path_factory, name: str, **config) -> Path:
    out = tmp_path_factory.mktemp(name)
    settings = {"vocab_size": 3000, "alphabet": "corpus", "min_frequency": 1, **config}
    train_vocab([DATA / "sample_ja.txt", *shinra_files()], out, VocabConfig(**settings))
    return out


@pytest.fixture(scope="session")
def unidic_dir(tmp_path_factory) -> Path:
    return _train(tmp_path_factory, "tok-unidic")


@pytest.fixture(scope="session")
def ipadic_dir(tmp_path_factory) -> Path:
    return _train(tmp_path_factory, "tok-ipadic", dic="ipadic")


@pytest.fixture(scope="session")
def lower_dir(tmp_path_factory) -> Path:
    return _train(tmp_path_factory, "tok-lower", do_lower_case=True)


@pytest.fixture(scope="session", params=["unidic", "ipadic", "lower"])
def tokenizer_dir(request) -> Path:
    """Each tokenizer flavour in turn: unidic-lite, ipadic, unidic-lite lower-cased."""
    return request.getfixturevalue(f"{request.param}_dir")
