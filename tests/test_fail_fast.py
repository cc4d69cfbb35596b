"""Localization jobs that fail fast and clearly: damaged parts, files that are not text, one
shard count per directory, one file per key, a full disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from layoutja.cli.main import main
from layoutja.common import UserError
from layoutja.localize.pool import localize_corpus

from .conftest import TRAIN

DAMAGES = {  # how a part is cut short, and what the readers then say about it
    "half": (lambda data: data[: len(data) // 2], "Parquet magic bytes not found in footer"),
    "empty": (lambda data: b"", "Parquet file size is 0 bytes"),
    "tail": (lambda data: data[:-100], "Parquet magic bytes not found in footer"),
}


def damage(part: Path, how: str) -> str:
    """Cut `part` short as `how` says; returns the reason a reader gives for it."""
    cut, reason = DAMAGES[how]
    part.write_bytes(cut(part.read_bytes()))
    return reason


def read_parts(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))


def test_every_reader_names_a_damaged_part_in_one_line(localized_dir, unidic_dir, tmp_path, capsys):
    from layoutja.shinra.data import read_parts as shinra_parts

    data = tmp_path / "localized"
    for how in DAMAGES:
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(localized_dir, data)
        part = sorted(data.glob("part-*.parquet"))[1]
        expected = (
            f"{part}: damaged Parquet part: {damage(part, how)}; `layoutja localize` into {data} "
            "again moves it aside and localizes its pages again"
        )
        command = ["pretrain", "--config", str(TRAIN / "mvlm-tiny.yaml"), "--data", str(data),
                   "--tokenizer", str(unidic_dir), "--out", str(tmp_path / "run")]  # fmt: skip
        assert main(command) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err  # the last line names the part (the one before: the run)
        assert err.splitlines()[-1] == f"layoutja pretrain: error: {expected}"
        # finetune and predict read the pages through this one function
        with pytest.raises(UserError) as error:
            list(shinra_parts(data, tmp_path / "html"))
        assert str(error.value) == expected, how


def test_two_files_with_one_key_are_refused_naming_both(unidic_dir, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / os.fsdecode(b"x\xff.html")).write_text("<p>東京</p>", encoding="utf-8")
    (corpus / "x\\xff.html").write_text("<p>大阪</p>", encoding="utf-8")  # the 4 characters \xff
    with pytest.raises(UserError) as error:
        localize_corpus(str(corpus), str(unidic_dir), tmp_path / "out", progress=False)
    raw, literal = (
        repr(os.fsencode(corpus) + b"/" + name) for name in (b"x\xff.html", b"x\\xff.html")
    )
    assert str(error.value) == (
        f"{literal} and {raw} (their names as bytes) would both be stored under the key "
        "x\\xff.html: rename one of them"
    )
    assert not (tmp_path / "out").exists()  # refused before anything was written
