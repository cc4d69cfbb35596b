"""Localizing a corpus: Parquet output, resume, shards, failures, kill -9."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from layoutja.cli.main import EXIT_PAGES_FAILED, main
from layoutja.common import UserError
from layoutja.localize.config import LocalizeConfig
from layoutja.localize.manifest import manifest_facts, read_manifests
from layoutja.localize.pool import PAGES_AHEAD, WorkerPool, localize_corpus
from layoutja.localize.sources import PageTask, find_pages, in_shard
from layoutja.localize.store import SCHEMA, Store, record_batch
from layoutja.text.tokenizer import JapaneseTokenizer

from .conftest import SHINRA, make_corpus


def read_parts(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))


def test_find_pages_layouts_and_shards(tmp_path):
    corpus = make_corpus(tmp_path / "shinra")
    tasks = find_pages(str(corpus))
    assert len(tasks) == 12 and tasks[0].source == "Airport/1001.html"
    assert (tasks[0].page_id, tasks[0].category) == ("1001", "Airport")
    flat = find_pages(str(corpus / "html" / "City"))
    assert flat[0].category == "" and flat[0].source == "1000.html"
    assert len(find_pages(str(corpus / "html" / "*" / "100[0-3].html"))) == 4
    shards = [[t for t in tasks if in_shard(t, (i, 3))] for i in range(3)]
    assert sorted(t.source for s in shards for t in s) == sorted(t.source for t in tasks)
    with pytest.raises(UserError, match="no .html files"):
        find_pages(str(tmp_path / "shinra" / "html" / "missing*"))


def test_corpus_to_parquet_then_resume(unidic_dir, tmp_path):
    corpus = make_corpus(tmp_path / "shinra")
    for page in sorted(SHINRA.glob("Airport_HTML/*.html"))[:2]:  # real pages when available
        shutil.copy(page, corpus / "html" / "Airport" / page.name)
    out = tmp_path / "out"
    summary = localize_corpus(
        str(corpus), str(unidic_dir), out, workers=2, pages_per_part=5, progress=False
    )
    pages = len(find_pages(str(corpus)))
    assert summary["ok"] == pages and summary["failed"] == 0
    table = read_parts(out)
    assert table.schema == SCHEMA
    assert sorted(table.column("source").to_pylist()) == sorted(
        t.source for t in find_pages(str(corpus))
    )
    assert len(list(out.glob("part-*.parquet"))) == -(-pages // 5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["pages"] == pages
    assert manifest["counts"]["tokens"] == sum(len(t) for t in table.column("tokens").to_pylist())
    assert manifest["viewport"] == [1280, 854] and manifest["chromium"]
    for row in table.to_pylist():
        assert len(row["tokens"]) == len(row["bbox"]) == len(row["px"]) == len(row["html_span"])
        assert all(0 <= v <= 1000 for box in row["bbox"] for v in box)
    assert (out / "failures.jsonl").read_text() == ""  # there, empty: no page failed
    again = localize_corpus(str(corpus), str(unidic_dir), out, workers=2, progress=False)
    assert (again["ok"], again["skipped"]) == (0, pages)
    assert read_parts(out).num_rows == pages


def test_shards_share_an_output_directory_with_one_manifest(unidic_dir, tmp_path):
    corpus = make_corpus(tmp_path / "shinra", pages=8)
    out = tmp_path / "out"
    summaries = [
        localize_corpus(str(corpus), str(unidic_dir), out, shard=(index, 2), progress=False)
        for index in range(2)
    ]
    assert {p.name for p in out.glob("manifest*.json")} == {
        "manifest.json",
        "manifest-00000-of-00002.json",
        "manifest-00001-of-00002.json",
    }
    sources = read_parts(out).column("source").to_pylist()
    assert sorted(sources) == sorted(t.source for t in find_pages(str(corpus)))
    # manifest.json: the view of both shards, the directory's counts and every part.
    view = json.loads((out / "manifest.json").read_text())
    tokens = sum(len(t) for t in read_parts(out).column("tokens").to_pylist())
    assert (view["counts"]["pages"], view["counts"]["tokens"]) == (8, tokens)
    assert sorted(view["parts"]) == sorted(p.name for p in out.glob("part-*.parquet"))
    assert {tag: s["finished"] for tag, s in view["shards"].items()} == {
        "00000-of-00002": True,
        "00001-of-00002": True,
    }
    assert view["tokenizer_vocab_sha256"] and view["chromium"] and "shard" not in view
    # Each summary counts the whole directory: after the second shard, all 8 pages.
    first, second = summaries
    assert first["totals"]["pages"] == first["ok"] < 8 and first["shards_finished"] == 1
    assert second["totals"]["pages"] == 8 and second["shards_finished"] == 2
    # Readers take the shards' records, not the view too: nothing counted twice.
    assert manifest_facts(out)["pages"] == 8 and len(read_manifests(out)) == 2
    assert view["shard_count"] == 2
    with pytest.raises(UserError, match="manifest-00000-of-00002.json: .*tokenizer_vocab"):
        Store(out, (1, 2), {**view, "tokenizer_vocab_sha256": "other"})  # any shard's settings


def test_a_directory_has_one_shard_count(tmp_path):
    """--shard 0/2 and --shard 0/3 at once into one OUT stored 89 pages twice (their shards
    overlap): a run of another shard count is refused, naming both, while the first runs and
    after it, and an unsharded run is one count too."""
    settings = {"tokenizer_vocab_sha256": "abc", "viewport": [1280, 854], "normalization": "body"}
    two = Store(tmp_path, (0, 2), settings)
    two.add(record_batch(fake_record("a")))
    refusal = "its pages are localized with --shard I/2 (manifest-00000-of-00002.json), this run "
    for shard, this in (((0, 3), "--shard 0/3"), ((0, 1), "without --shard")):
        with pytest.raises(UserError, match=re.escape(f"{refusal}{this}; a directory has one")):
            Store(tmp_path, shard, settings)
    assert two.close()["shard_count"] == 2
    with pytest.raises(UserError, match=re.escape(f"{refusal}--shard 1/3")):
        Store(tmp_path, (1, 3), settings)
    Store(tmp_path, (1, 2), settings).close()  # the directory's own count
    whole = tmp_path / "whole"
    Store(whole, (0, 1), settings).close()
    with pytest.raises(UserError, match=r"without --shard \(manifest.json\), this run --shard 1/2"):
        Store(whole, (1, 2), settings)
    assert {p.name for p in whole.glob("manifest*")} == {"manifest.json"}


def test_a_run_of_another_count_starting_while_a_shard_recovers_is_refused(tmp_path, monkeypatch):
    """A shard's record is claimed before its (long) journal recovery: a run of another shard
    count that starts meanwhile sees it, and is refused."""
    settings = {"tokenizer_vocab_sha256": "abc", "viewport": [1280, 854], "normalization": "body"}
    recover, beside = Store._recover_journal, []

    def recovering(self: Store) -> None:
        if self.tag == "00000-of-00002":
            with pytest.raises(UserError, match="one shard count") as refused:
                Store(tmp_path, (0, 1), settings)
            beside.append(refused)
        recover(self)

    monkeypatch.setattr(Store, "_recover_journal", recovering)
    Store(tmp_path, (0, 2), settings).close()
    assert len(beside) == 1


def test_the_view_names_the_tokenizer_as_one_record_does(tmp_path):
    from layoutja.localize.manifest import write_view

    records = [
        {"tokenizer": "owner/name", "tokenizer_revision": "abc123", "parts": {}},
        {"tokenizer": "/data/tokenizer", "parts": {}},
    ]  # one vocabulary, two names
    for index, record in enumerate(records):
        path = tmp_path / f"manifest-{index:05d}-of-00002.json"
        path.write_text(json.dumps({**record, "shard": [index, 2]}))
    view = write_view(tmp_path)
    assert (view["tokenizer"], view.get("tokenizer_revision")) == ("owner/name", "abc123")


def fake_record(source: str, tokens: int = 3) -> dict:
    return {
        "page_id": source, "category": "", "source": source, "encoding": "utf-8",
        "tokens": ["東京"] * tokens, "input_ids": [5] * tokens, "bbox": [[0, 0, 1, 1]] * tokens,
        "px": [[0.0, 0.0, 1.0, 1.0]] * tokens, "html_span": [[0, 0, 0, 2]] * tokens,
        "dropped": 1, "viewport_width": 1280, "page_width": 1280.0, "page_height": 900.0,
        "body": [8.0, 8.0, 1272.0, 892.0],
    }  # fmt: skip


def tokens_of(batch: pa.RecordBatch) -> list[str]:
    """The tokens of a one-page batch, as the pool yields it."""
    assert batch.schema.equals(SCHEMA) and batch.num_rows == 1
    return batch.column("tokens")[0].as_py()


def test_store_recovers_a_torn_journal_and_keeps_failures(tmp_path):
    settings = {"tokenizer_vocab_sha256": "abc", "viewport": [1280, 854], "normalization": "body"}
    store = Store(tmp_path, (0, 1), settings, pages_per_part=100)
    for name in "abc":
        store.add(record_batch(fake_record(name)))
    store.fail("bad.html", "reason")
    with open(store.journal_path, "ab") as f:  # the run is killed while writing a record
        f.write(b"\xff\xff\xff\xff\x10\x00\x00")
    store._lock.close()  # the killed process's lock goes with it
    store = Store(tmp_path, (0, 1), settings)
    assert store.done == {"a", "b", "c"} and set(store.failed) == {"bad.html"}
    assert not store.journal_path.exists() and read_parts(tmp_path).num_rows == 3
    assert store.counts() == {"pages": 3, "tokens": 9, "dropped_tokens": 3, "failed": 1}
    store.close()
    retry = Store(tmp_path, (0, 1), settings, retry_failed=True)
    assert retry.failed == {}
    retry.close()
    with pytest.raises(UserError, match="tokenizer_vocab_sha256"):
        Store(tmp_path, (0, 1), {**settings, "tokenizer_vocab_sha256": "other"})


def test_pool_contains_failures_and_replaces_stuck_workers(unidic_dir, tmp_path):
    good = tmp_path / "good.html"
    good.write_text("<p>東京</p>", encoding="utf-8")
    fifo = tmp_path / "stuck.html"
    os.mkfifo(fifo)  # reading it blocks forever: a worker that stops answering
    # Each page is sent while the one before it renders: the stuck page blocks the worker's
    # preparing thread, which must cost neither the page before it nor the one after.
    tasks = [
        PageTask(good, "first.html", "first", ""),
        PageTask(tmp_path / "missing.html", "missing.html", "missing", ""),
        PageTask(fifo, "stuck.html", "stuck", ""),
        PageTask(good, "good.html", "good", ""),
    ]
    with WorkerPool(str(unidic_dir), 1, LocalizeConfig(timeout_s=5), hard_limit_s=4) as pool:
        results = {task.source: (batch, reason) for task, batch, reason in pool.run(tasks)}
    assert "cannot read" in results["missing.html"][1]
    assert "no answer in 4 s" in results["stuck.html"][1]
    assert tokens_of(results["good.html"][0]) == tokens_of(results["first.html"][0]) == ["東京"]


def test_kill_9_loses_only_pages_in_flight(unidic_dir, tmp_path):
    corpus = make_corpus(tmp_path / "shinra", pages=40)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "layoutja", "localize", str(corpus), "--tokenizer",
           str(unidic_dir), "--out", str(out), "--workers", "1", "--quiet"]  # fmt: skip
    run = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE)
    journal = out / "journal-00000-of-00001.arrows"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not journal.exists() or journal.stat().st_size < 6000):
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert journal.exists() and not list(out.glob("part-*"))
    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "already done" in finished.stderr
    sources = read_parts(out).column("source").to_pylist()
    assert sorted(sources) == sorted(t.source for t in find_pages(str(corpus)))  # each once
    assert not list(out.glob(".tmp-*")) and not journal.exists()


def test_store_lock_parts_on_disk_and_torn_failure_lines(tmp_path):
    settings = {"tokenizer_vocab_sha256": "abc", "viewport": [1280, 854], "normalization": "body"}
    store = Store(tmp_path, (0, 2), settings, pages_per_part=2)
    with pytest.raises(UserError, match="another run is writing shard 0/2"):
        Store(tmp_path, (0, 2), settings)
    Store(tmp_path, (1, 2), settings).close()  # another shard may share the directory
    for name in "abcd":
        store.add(record_batch(fake_record(name)))
    store.fail("x.html", "reason")
    with open(store.failures_path, "a", encoding="utf-8") as f:
        f.write('{"source": "torn')  # killed in the middle of a line
    store.close()
    next(tmp_path.glob("part-*-00000.parquet")).unlink()  # a part deleted by hand
    again = Store(tmp_path, (0, 2), settings)
    assert again.done == {"c", "d"} and again.counts()["pages"] == 2
    again.fail("y.html", "reason")
    again.close()
    assert set(Store(tmp_path, (0, 2), settings).failed) == {"x.html", "y.html"}


def test_workers_hold_the_next_page_while_rendering(unidic_dir, tmp_path):
    page = tmp_path / "p.html"
    page.write_text("<p>東京と大阪</p>", encoding="utf-8")
    tasks = [PageTask(page, f"p{i}.html", f"p{i}", "") for i in range(6)]
    held, order = [], []
    with WorkerPool(str(unidic_dir), 2, LocalizeConfig(timeout_s=10)) as pool:
        for task, batch, reason in pool.run(tasks):
            held.append(max(len(slot.tasks) for slot in pool.slots))
            order.append((task.source, tokens_of(batch) if batch else reason))
    # Each worker was sent the next page before it answered the current one (so it prepares
    # it while Chromium renders), never more, and every page came back once, localized.
    assert max(held) == PAGES_AHEAD + 1
    tokens = JapaneseTokenizer.from_pretrained(unidic_dir).tokenize("東京と大阪")
    assert sorted(order) == [(f"p{i}.html", tokens) for i in range(6)]


def test_a_worker_that_died_while_idle_is_replaced(unidic_dir, tmp_path):
    page = tmp_path / "p.html"
    page.write_text("<p>東京</p>", encoding="utf-8")
    tasks = [PageTask(page, f"p{i}.html", f"p{i}", "") for i in range(3)]
    with WorkerPool(str(unidic_dir), 1, LocalizeConfig(timeout_s=10)) as pool:
        os.killpg(pool.slots[0].process.pid, signal.SIGKILL)  # e.g. the OOM killer
        time.sleep(0.5)
        results = list(pool.run(tasks))
    assert [reason for _, _, reason in results] == ["", "", ""]


def test_odd_file_names_and_chromium_version_in_the_manifest(unidic_dir, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "東京.html").write_text("<p>東京</p>", encoding="utf-8")
    (corpus / os.fsdecode(b"caf\xe9.html")).write_text("<p>大阪</p>", encoding="utf-8")
    out = tmp_path / "out"
    summary = localize_corpus(str(corpus), str(unidic_dir), out, progress=False)
    assert summary["ok"] == 2
    assert sorted(read_parts(out).column("source").to_pylist()) == ["caf\\xe9.html", "東京.html"]
    chromium = json.loads((out / "manifest.json").read_text())["chromium"]
    localize_corpus(str(corpus), str(unidic_dir), out, progress=False)  # nothing left to do
    assert json.loads((out / "manifest.json").read_text())["chromium"] == chromium


def test_config_file_flags_manifest_and_plain_progress_lines(unidic_dir, tmp_path):
    corpus = make_corpus(tmp_path / "shinra", pages=4)
    config = tmp_path / "mine.yaml"
    config.write_text("timeout_s: 30\npages_per_part: 2\nworkers: 2\n", encoding="utf-8")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "layoutja", "localize", str(corpus), "--tokenizer",
           str(unidic_dir), "--out", str(out), "--config", str(config), "--workers", "1",
           "--pages-per-part", "3"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, timeout=300)  # stderr: a pipe, not a TTY
    stderr = run.stderr.decode()  # bytes: text mode would turn "\r" into "\n"
    assert run.returncode == 0, stderr
    recorded = json.loads((out / "manifest.json").read_text())["config"]
    # The file's values, with the explicit flags on top; the rest is the published setting.
    published = LocalizeConfig().as_dict()
    assert recorded == {**published, "timeout_s": 30.0, "pages_per_part": 3, "workers": 1}
    assert len(list(out.glob("part-*.parquet"))) == 2  # 4 pages, 3 per part
    # Not a terminal: plain progress lines (the rate so far, ETA), no carriage-return redraws;
    # the summary's rate is the whole run's.
    assert "\r" not in stderr
    assert "localize: 4/4 pages, " in stderr and " pages/s so far, ETA" in stderr
    assert "pages/s over the whole run, browser start included" in stderr


def unreadable(page: Path) -> None:
    """Make `page` a file that every read fails on (EIO), as a failing disk would."""
    page.unlink()
    page.symlink_to("/proc/self/mem")


def test_exit_status_by_the_share_of_failed_pages_and_a_rerun_names_them(
    unidic_dir, tmp_path, capsys
):
    corpus = make_corpus(tmp_path / "shinra", pages=10)
    bad = corpus / "html" / "City" / "1000.html"
    text = bad.read_bytes()
    unreadable(bad)
    out = tmp_path / "out"
    command = ["localize", str(corpus), "--tokenizer", str(unidic_dir), "--out", str(out),
               "--workers", "1", "--quiet"]  # fmt: skip
    assert main(command) == 0  # 1 page of 10 failed: at most the default share (0.1)
    err = capsys.readouterr().err
    assert "localized 9 page(s), 1 failed, 0 already done" in err
    assert "cannot read" in (out / "failures.jsonl").read_text()
    # A rerun skips the failed page and says so: not "already done".
    assert main([*command, "--max-failures", "0.05"]) == EXIT_PAGES_FAILED
    err = capsys.readouterr().err
    assert (
        "localized 0 page(s), 0 failed, 9 already done; 0 tokens (0 not rendered, dropped)\n" in err
    )
    assert "pages/s" not in err  # no rate where nothing was rendered
    assert "skipped 1 page(s) that failed on an earlier run" in err and "--retry-failed" in err
    assert "1 of 10 pages failed, more than --max-failures 0.05" in err
    bad.unlink()
    bad.write_bytes(text)
    assert main([*command, "--retry-failed"]) == 0
    assert "localized 1 page(s), 0 failed, 9 already done" in capsys.readouterr().err
    assert read_parts(out).num_rows == 10 and (out / "failures.jsonl").read_text() == ""
    # Every page failed: never 0, whatever share is allowed.
    two = make_corpus(tmp_path / "two", pages=2)
    for page in list((two / "html").rglob("*.html")):
        unreadable(page)
    command = ["localize", str(two), "--tokenizer", str(unidic_dir), "--out", str(tmp_path / "2"),
               "--workers", "1", "--quiet", "--max-failures", "1"]  # fmt: skip
    assert main(command) == EXIT_PAGES_FAILED
    assert "2 of 2 pages failed" in capsys.readouterr().err


def test_the_manifest_names_the_tokenizer_from_anywhere(unidic_dir, tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path / "shinra", pages=1)
    monkeypatch.chdir(unidic_dir.parent)
    localize_corpus(str(corpus), unidic_dir.name, tmp_path / "out", progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tokenizer"] == str(unidic_dir.resolve())  # not the relative name given
    assert "tokenizer_revision" not in manifest  # a directory has none


def test_record_batches_from_arrays_equal_from_pylist():

    for tokens in (3, 0):
        record = fake_record("a.html", tokens)
        expected = pa.RecordBatch.from_pylist([record], schema=SCHEMA)
        assert record_batch(record).equals(expected)
        arrays = dict(record, input_ids=np.array(record["input_ids"], np.int32))
        for key, dtype in (("bbox", np.int16), ("px", np.float64), ("html_span", np.int32)):
            arrays[key] = np.array(record[key], dtype).reshape(-1, 4)
        assert record_batch(arrays).equals(expected)


def test_stored_records_are_the_single_page_records(unidic_dir, tmp_path):
    """The corpus path (arrays through the pool into Parquet) stores what `localize FILE` gives."""
    from layoutja.localize.browser import Browser
    from layoutja.localize.page import localize_file

    corpus = make_corpus(tmp_path / "shinra", pages=4)
    for page in sorted(SHINRA.glob("Airport_HTML/*.html"))[:2]:  # real pages when available
        shutil.copy(page, corpus / "html" / "Airport" / page.name)
    out = tmp_path / "out"
    localize_corpus(str(corpus), str(unidic_dir), out, workers=2, progress=False)
    stored = {row["source"]: row for row in read_parts(out).to_pylist()}
    tok = JapaneseTokenizer.from_pretrained(unidic_dir)
    with Browser() as browser:
        for task in find_pages(str(corpus)):
            record = localize_file(task.path, tok, browser)
            row = stored[task.source]
            # html/<category>/<id>.html: the single page gets the category a batch run gives
            assert record["category"] == row["category"] == task.path.parent.name != ""
            for key in ("tokens", "input_ids", "bbox", "html_span", "dropped", "page_height"):
                assert row[key] == record[key], (task.source, key)
            assert row["px"] == [[float(np.float32(v)) for v in box] for box in record["px"]]
