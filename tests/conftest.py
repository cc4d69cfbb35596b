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


TOWNS = ["東京", "大阪", "京都", "札幌", "福岡", "那覇", "仙台", "神戸", "横浜", "名古屋"]


def make_corpus(root: Path, pages: int = 12) -> Path:
    """A SHINRA-layout corpus: html/<category>/<page_id>.html, two categories."""
    for i in range(pages):
        category = "Airport" if i % 2 else "City"
        town = TOWNS[i % len(TOWNS)]
        path = root / "html" / category / f"{1000 + i}.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = f"<h1>{town}空港</h1>" + f"<p>{town}空港は{town}にある空港である。</p>" * (i + 1)
        path.write_text(f"<html><body>{body}</body></html>", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def localized_dir(tmp_path_factory, unidic_dir) -> Path:
    """A small corpus localized in Chromium: Parquet parts for the training tests."""
    from layoutja.batch import localize_corpus

    root = tmp_path_factory.mktemp("localized")
    corpus = make_corpus(root / "corpus", pages=16)
    for page in sorted(SHINRA.glob("Airport_HTML/*.html"))[:3]:
        (corpus / "html" / "Airport" / page.name).write_bytes(page.read_bytes())
    localize_corpus(str(corpus), str(unidic_dir), root / "out", pages_per_part=6, progress=False)
    return root / "out"
