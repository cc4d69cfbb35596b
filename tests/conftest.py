"""Shared fixtures: tokenizer directories trained by layoutja itself on real Japanese text.

No model hub is reachable, so every tokenizer the tests compare against transformers is built
here with `layoutja.vocab.train_vocab` (small vocabularies, so WordPiece splits and [UNK]s are
frequent). Real text comes from the repository's sample and, when present, from the real SHINRA
sample: $LAYOUTJA_SHINRA_SAMPLE, else ../shared/shinra-sample beside the clone (tests that need
only it skip without it, naming the variable).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from layoutja.text.pagetext import file_texts
from layoutja.text.vocab import VocabConfig, train_vocab

DATA = Path(__file__).parent / "data"
TRAIN = Path(__file__).resolve().parents[1] / "train"
SHINRA_VARIABLE = "LAYOUTJA_SHINRA_SAMPLE"


def shinra_sample() -> Path:
    """The real SHINRA sample's directory: $LAYOUTJA_SHINRA_SAMPLE, else ../shared/shinra-sample
    beside the clone (README: "The real SHINRA sample")."""
    given = os.environ.get(SHINRA_VARIABLE)
    if given:
        return Path(given).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "shinra-sample"


SHINRA = shinra_sample()
SHINRA_MISSING = (
    f"the real SHINRA sample is not at {SHINRA}; set {SHINRA_VARIABLE} to its directory (README)"
)


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
    from layoutja.localize.pool import localize_corpus

    root = tmp_path_factory.mktemp("localized")
    corpus = make_corpus(root / "corpus", pages=16)
    for page in sorted(SHINRA.glob("Airport_HTML/*.html"))[:3]:
        (corpus / "html" / "Airport" / page.name).write_bytes(page.read_bytes())
    localize_corpus(str(corpus), str(unidic_dir), root / "out", pages_per_part=6, progress=False)
    return root / "out"


AIRPORTS = [
    ("東京国際空港", "東京都大田区", "1931年", "HND"),
    ("成田国際空港", "千葉県成田市", "1978年", "NRT"),
    ("関西国際空港", "大阪府泉佐野市", "1994年", "KIX"),
    ("中部国際空港", "愛知県常滑市", "2005年", "NGO"),
    ("新千歳空港", "北海道千歳市", "1988年", "CTS"),
    ("福岡空港", "福岡県福岡市", "1945年", "FUK"),
    ("那覇空港", "沖縄県那覇市", "1933年", "OKA"),
    ("仙台空港", "宮城県名取市", "1957年", "SDJ"),
    ("広島空港", "広島県三原市", "1993年", "HIJ"),
    ("鹿児島空港", "鹿児島県霧島市", "1972年", "KOJ"),
    ("松山空港", "愛媛県松山市", "1960年", "MYJ"),
    ("熊本空港", "熊本県益城町", "1971年", "KMJ"),
]


def make_shinra(root: Path, pages: int = 12) -> Path:
    """A SHINRA-format data set: html/<ENE>/<id>.html in Wikipedia's shape (title, lead,
    infobox table, heading, list, prose) and annotation/<ENE>_dist.jsonl with exact offsets."""
    import json

    ene = "1.6.5.3"
    (root / "html" / ene).mkdir(parents=True, exist_ok=True)
    (root / "annotation").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(pages):
        name, place, year, iata = AIRPORTS[i % len(AIRPORTS)]
        page_id = str(2000 + i)
        lines = [
            "<!DOCTYPE html>",
            f'<html lang="ja"><head><meta charset="UTF-8"><title>{name} - Wikipedia</title>',
            '</head><body><div id="content">',
            f'<h1 class="firstHeading">{name}</h1>',
            '<table class="infobox">',
            f'<tr><th>所在地</th><td><a href="/wiki/x">{place}</a></td></tr>',
            f"<tr><th>開港</th><td>{year}</td></tr>",
            f"<tr><th>IATA</th><td>{iata}</td></tr>",
            "</table>",
            f"<p><b>{name}</b>は、{place}にある空港である。{year}に開港した。</p>",
            "<h2>概要</h2><ul><li>旅客ターミナル</li><li>貨物ターミナル</li></ul>",
            f"<p>空港コードは{iata}である。<sup>[1]</sup></p>",
            "</div></body></html>",
        ]
        (root / "html" / ene / f"{page_id}.html").write_text("\n".join(lines), encoding="utf-8")
        for attribute, value, line in [
            ("所在地", place, 5),
            ("開港年", year, 6),
            ("IATA", iata, 7),
        ]:
            col = lines[line].index(f">{value}<") + 1
            end = {"line_id": line, "offset": col + len(value)}
            offset = {"start": {"line_id": line, "offset": col}, "end": end, "text": value}
            records.append({"page_id": page_id, "title": name, "ENE": ene,
                            "attribute": attribute, "html_offset": offset})  # fmt: skip
    with open(root / "annotation" / f"{ene}_dist.jsonl", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return root


def tiny_bert(cls, tokenizer_dir: Path, out: Path, hidden: int = 32, **settings) -> Path:
    """A tiny BERT checkpoint of class `cls` with the test tokenizer, as a BERT on the hub is
    (`settings`: more BertConfig settings)."""
    import torch
    from transformers import BertConfig

    from layoutja.common import copy_tokenizer
    from layoutja.text.tokenizer import load_vocab

    torch.manual_seed(1)
    vocab_size = len(load_vocab(tokenizer_dir / "vocab.txt"))
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        **settings,
    )
    cls(config).save_pretrained(out)
    copy_tokenizer(tokenizer_dir, out)
    return out


def recipe(name: str, **settings):
    """A recipe from train/NAME.yaml with settings overridden by their bare names
    (max_steps=4 is schedule.max_steps), as a test writes them."""
    import dataclasses

    from layoutja.training.config import SECTIONS, load_config

    where = {f.name: s for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    overrides = {f"{where[k]}.{k}": str(v) for k, v in settings.items()}
    return load_config(TRAIN / f"{name}.yaml", overrides)


def model_card(directory: Path) -> tuple[dict, str, str]:
    """A model directory's card (README.md): its front matter, its text and its Python code."""
    import yaml

    text = (directory / "README.md").read_text(encoding="utf-8")
    _, front, body = text.split("---\n", 2)
    code = body.split("```python\n", 1)[1].split("```", 1)[0]
    return yaml.safe_load(front), body, code


def run_python(*codes: str, cwd: Path) -> str:
    """Run pieces of Python code, one after the other, in a fresh interpreter (as a user
    would); returns what they print."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", "\n".join(codes)], cwd=cwd,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


from .slurm_cluster import slurm  # noqa: E402, F401 (the real-SLURM fixture)
