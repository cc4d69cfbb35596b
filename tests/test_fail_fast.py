"""Localization jobs that fail fast and clearly: damaged parts, files that are not text, one
shard count per directory, one file per key, a full disk."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from layoutja.cli.main import EXIT_PAGES_FAILED, main
from layoutja.common import UserError
from layoutja.localize.pool import localize_corpus
from layoutja.localize.sources import find_pages

from .conftest import TRAIN, make_corpus

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


def test_a_rerun_moves_damaged_parts_aside_and_localizes_their_pages_again(
    unidic_dir, tmp_path, capsys
):
    corpus = make_corpus(tmp_path / "shinra", pages=9)
    out = tmp_path / "out"
    command = ["localize", str(corpus), "--tokenizer", str(unidic_dir), "--out", str(out),
               "--workers", "1", "--quiet", "--pages-per-part", "3"]  # fmt: skip
    assert main(command) == 0
    first, kept, last = sorted(out.glob("part-*.parquet"))
    kept_pages = pq.read_table(kept, columns=["source"]).column(0).to_pylist()
    reasons = {first: damage(first, "half"), last: damage(last, "tail")}
    capsys.readouterr()
    assert main(command) == 0
    err = capsys.readouterr().err
    aside = sorted((out / "damaged").iterdir())
    for part, moved in zip((first, last), aside, strict=True):
        assert moved.name.endswith(part.name)
        assert (
            f"note: {part} is damaged ({reasons[part]}): moved to {moved}; its 3 pages are "
            "localized again\n" in err
        )
    assert "localized 6 page(s), 0 failed, 3 already done" in err  # the damaged parts' pages
    sources = read_parts(out).column("source").to_pylist()
    assert sorted(sources) == sorted(t.source for t in find_pages(str(corpus)))  # each once
    assert set(kept_pages) < set(sources)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["parts"]) == sorted(p.name for p in out.glob("part-*.parquet"))
    assert manifest["counts"]["pages"] == 9


def test_files_that_are_not_text_fail_and_empty_pages_are_counted(unidic_dir, tmp_path, capsys):
    corpus = make_corpus(tmp_path / "shinra", pages=6)
    pages = corpus / "html" / "City"
    # 200 KB of random bytes were stored as 94,058 tokens, mostly [UNK], 1.9 million px wide
    (pages / "random.html").write_bytes(random.Random(0).randbytes(200_000))
    (pages / "latin1.html").write_bytes(b"<p>" + bytes(range(0x80, 0x100)) * 4 + b"</p>")
    (pages / "korean.html").write_text("<p>" + "한국어 문장입니다. " * 20 + "</p>", "utf-8")
    (pages / "empty.html").write_bytes(b"")
    out = tmp_path / "out"
    command = ["localize", str(corpus), "--tokenizer", str(unidic_dir), "--out", str(out),
               "--workers", "1", "--quiet"]  # fmt: skip
    assert main(command) == EXIT_PAGES_FAILED  # 3 of 10 failed: more than --max-failures 0.1
    err = capsys.readouterr().err
    assert "localized 7 page(s) (1 empty: no text), 3 failed, 0 already done" in err
    lines = (out / "failures.jsonl").read_text().splitlines()
    failed = {entry["source"]: entry["reason"] for entry in map(json.loads, lines)}
    assert (
        failed["City/random.html"].startswith("not text: ")
        and " NUL character(s)" in (failed["City/random.html"])
    )
    assert failed["City/latin1.html"] == (
        "not text: 99% of its characters are bytes that utf-8 cannot decode (more than "
        "max_undecodable 0.01)"
    )
    assert failed["City/korean.html"].endswith(" tokens are [UNK] (more than max_unknown 0.5)")
    stored = read_parts(out)
    assert "City/random.html" not in stored.column("source").to_pylist()
    assert stored.num_rows == 7 and sorted(map(len, stored.column("tokens").to_pylist()))[0] == 0
    # The thresholds are settings of the localization config; --max-failures works as always.
    config = tmp_path / "lenient.yaml"
    config.write_text("max_unknown: 1\n", encoding="utf-8")
    retry = [*command, "--config", str(config), "--retry-failed", "--max-failures", "0.2"]
    assert main(retry) == 0
    assert "localized 1 page(s), 2 failed, 7 already done" in capsys.readouterr().err
    # One page given alone is refused the same way, in one line.
    one = ["localize", str(pages / "latin1.html"), "--tokenizer", str(unidic_dir)]
    assert main(one) == 1
    assert capsys.readouterr().err == (
        f"layoutja localize: error: {pages / 'latin1.html'}: not text: 99% of its characters "
        "are bytes that utf-8 cannot decode (more than max_undecodable 0.01)\n"
    )


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


def test_a_full_disk_is_one_line_and_keeps_every_page_stored(unidic_dir, tmp_path):
    """OUT on a 48 KiB tmpfs (in a mount namespace of its own): the first run fills it and
    stops in one line; after the disk is made larger, the same command finishes the rest."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare: cannot mount a small disk")
    corpus = make_corpus(tmp_path / "shinra", pages=30)
    disk, log = tmp_path / "disk", tmp_path / "log"
    disk.mkdir()
    log.mkdir()
    localize = (f"{sys.executable} -m layoutja localize {corpus} --tokenizer {unidic_dir} "
                f"--out {disk}/out --workers 1 --quiet --pages-per-part 5")  # fmt: skip
    script = f"""
mount -t tmpfs -o size=48k none {disk} || exit 42
{localize} 2> {log}/full.err; echo $? > {log}/full.rc
mount -o remount,size=16m {disk}
{localize} 2> {log}/again.err; echo $? > {log}/again.rc
cp -r {disk}/out {tmp_path}/out
"""
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    if run.returncode in (1, 42) and not (log / "full.rc").exists():
        pytest.skip(f"cannot mount a small disk here: {run.stderr.strip()[-300:]}")
    full = (log / "full.err").read_text()
    assert (log / "full.rc").read_text().strip() == "1", full
    assert len(full.splitlines()) == 1 and full.startswith(f"layoutja localize: error: {disk}/")
    assert "No space left on device" in full and "free there); the " in full
    again = (log / "again.err").read_text()
    assert (log / "again.rc").read_text().strip() == "0", again
    # Every page stored before the disk was full is kept: the rerun counts it as done.
    done = int(again.split(" already done")[0].rsplit(" ", 1)[1])
    assert done > 0 and f"failed, {done} already done" in again
    assert f"the {done} page(s) stored so far are kept" in full
    sources = read_parts(tmp_path / "out").column("source").to_pylist()
    assert sorted(sources) == sorted(t.source for t in find_pages(str(corpus)))  # each once
