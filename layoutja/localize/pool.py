"""Localize a corpus: keep N browser workers busy on the pages of a shard (`sources`).

Each worker is a process with its own tokenizer and Chromium, started in its own process group so
that the whole group (Playwright's driver and Chromium included) can be killed. The parent keeps
each worker one page ahead (`PAGES_AHEAD`), so that the worker prepares that page in a thread
while Chromium renders the current one, and stores results as they come (`store`). Failures are
contained:

- a Playwright error (crashed or hung browser, per-page timeout) makes the worker restart its
  browser and try the page once more; a page that fails again is reported as failed;
- any other error on a page (e.g. it cannot be read, it is not text, or its batch cannot be
  built: "cannot store") fails that page only; an error while writing the output (a full
  disk) stops the run in one line (a rerun recovers the journal);
- a worker that dies or stops answering (past twice the page timeout plus a margin) is killed
  and replaced; the page it was on is tried once more, alone, in the new worker before it
  counts as failed, and the page it held ahead goes again, alone, without counting as a try.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING

from layoutja.common import Progress, UserError
from layoutja.localize.config import LocalizeConfig
from layoutja.localize.sources import PageTask, find_pages, in_shard, shard_tag

if TYPE_CHECKING:
    import pyarrow as pa

    from layoutja.localize.browser import Browser
    from layoutja.localize.store import Store
    from layoutja.text.tokenizer import JapaneseTokenizer


# --- worker process -------------------------------------------------------------------------
# A worker holds this many pages beyond the one it renders: it prepares the next page (read,
# scan, tokenize, wrap: all Python) in a thread while Chromium renders the current one, so
# Python's share of the work hides behind the browser's instead of adding to it.
PAGES_AHEAD = 1


def _worker(conn: Connection, tokenizer_dir: str, config: LocalizeConfig) -> None:
    os.setsid()  # its own process group: the parent can kill it with its browser
    from layoutja.localize.browser import Browser
    from layoutja.text.tokenizer import JapaneseTokenizer

    try:
        tokenizer = JapaneseTokenizer.from_pretrained(tokenizer_dir)
        browser = Browser(config)
    except Exception as e:  # e.g. no Chromium: nothing can work, tell the parent
        conn.send(("fatal", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", browser.version))
    # The preparing thread wakes this one when Chromium answers: switch threads sooner than
    # Python's default 5 ms, so a busy preparer does not delay the browser's next step.
    sys.setswitchinterval(0.001)
    prepared: queue.Queue = queue.Queue(maxsize=PAGES_AHEAD)
    args = (conn, tokenizer, config, prepared)
    threading.Thread(target=_prepare, args=args, daemon=True).start()
    while (item := prepared.get()) is not None:
        task, page = item
        # A page that could not be prepared comes as the reason it failed.
        answer = ("failed", page) if isinstance(page, str) else _render(task, page, browser)
        try:
            conn.send(answer)
        except (pickle.PicklingError, TypeError, ValueError, MemoryError) as e:
            conn.send(("failed", f"cannot send: {type(e).__name__}: {_first_line(e)}"))
    browser.close()


def _render(task: PageTask, page: tuple, browser: Browser) -> tuple[str, object]:
    """Render a prepared page, after a browser failure once more in a restarted browser; the
    answer for the parent: ("ok", the page's stored Arrow batch) or ("failed", the reason)."""
    from playwright.sync_api import Error as PlaywrightError

    from layoutja.localize.browser import RenderTimeout
    from layoutja.localize.page import render_page
    from layoutja.localize.store import record_batch

    for attempt in (1, 2):
        try:
            record = render_page(*page, browser)
            break
        except (PlaywrightError, RenderTimeout) as e:
            browser.restart()
            if attempt == 2:
                return "failed", f"browser: {_first_line(e)} (after a restart and retry)"
        except Exception as e:
            return "failed", f"{type(e).__name__}: {_first_line(e)}"
    record.update(page_id=task.page_id, category=task.category, source=task.source)
    # Built here, in parallel, the batch pickles as a few buffers, and the one parent that
    # stores every worker's pages only appends it.
    try:
        return "ok", record_batch(record)
    except Exception as e:  # e.g. a value the schema cannot hold
        return "failed", f"cannot store: {type(e).__name__}: {_first_line(e)}"


def _prepare(
    conn: Connection, tokenizer: JapaneseTokenizer, config: LocalizeConfig, prepared: queue.Queue
) -> None:
    """The worker's second thread: receive tasks, prepare each page, hand them on in order
    (the prepared page, or the reason it failed); None when the parent is done."""
    from layoutja.localize.page import NotText, prepare_page

    try:
        while (task := conn.recv()) is not None:
            try:
                page: object = prepare_page(task.path.read_bytes(), tokenizer, config)
            except OSError as e:
                page = f"cannot read: {e.strerror or e}"
            except NotText as e:
                page = str(e)
            except Exception as e:
                page = f"{type(e).__name__}: {_first_line(e)}"
            prepared.put((task, page))
    except Exception:  # the parent is gone (or the pipe broke): the worker ends
        pass
    prepared.put(None)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


@dataclass
class _Slot:
    process: multiprocessing.Process
    conn: Connection
    tasks: deque = field(default_factory=deque)  # sent, not answered; the first is rendering
    since: float = 0.0  # when the first task began
    ready: bool = False
    broken: bool = False  # a send failed: the process is gone


class WorkerPool:
    """N localizing worker processes; `run` yields (task, the page's one-row batch of the
    store's schema or None, failure reason)."""

    def __init__(
        self, tokenizer_dir: str, workers: int, config: LocalizeConfig, hard_limit_s: float = 0.0
    ):
        self.tokenizer_dir = tokenizer_dir
        self.config = config
        # Enough for a soft timeout, a browser restart and a retry, unless given.
        self.hard_limit_s = hard_limit_s or 2 * config.timeout_s + 30
        self._context = multiprocessing.get_context("spawn")  # no Playwright state is forked
        self.slots = [self._spawn() for _ in range(workers)]
        self.chromium_version = self._wait_ready()

    def _spawn(self) -> _Slot:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker, args=(child, self.tokenizer_dir, self.config), daemon=True
        )
        process.start()
        child.close()
        return _Slot(process, parent)

    def _wait_ready(self) -> str:
        version = ""
        for slot in self.slots:
            if not slot.conn.poll(self.hard_limit_s):
                raise UserError("the browser worker did not start in time")
            kind, value = self._recv(slot)
            if kind != "ready":
                raise UserError(f"the browser worker could not start: {value}")
            slot.ready, version = True, value
        return version

    @staticmethod
    def _recv(slot: _Slot) -> tuple[str, object]:
        try:
            return slot.conn.recv()
        except (EOFError, OSError):
            return "died", "the worker process died"

    def _kill(self, slot: _Slot) -> None:
        try:
            os.killpg(slot.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        slot.process.join(5)
        slot.conn.close()

    def run(self, tasks: list[PageTask]) -> Iterator[tuple[PageTask, pa.RecordBatch | None, str]]:
        todo = deque((task, 1) for task in tasks)
        attempts: dict[str, int] = {}
        alone: set[str] = set()  # pages sent to a worker with no other page (see _takes)
        while todo or any(s.tasks for s in self.slots):
            for slot in self.slots:
                while self._takes(slot, todo, alone):
                    task, attempt = todo.popleft()
                    try:
                        slot.conn.send(task)
                    except OSError:  # it died while idle (e.g. the OOM killer): the check
                        slot.broken = True  # below replaces it; the page never reached it
                        todo.appendleft((task, attempt))
                        break
                    attempts[task.source] = attempt
                    if not slot.tasks:
                        slot.since = time.monotonic()
                    slot.tasks.append(task)
            busy = [s for s in self.slots if s.tasks or s.broken]
            ready = wait([s.conn for s in busy] + [s.process.sentinel for s in busy], timeout=1.0)
            now = time.monotonic()
            for i, slot in enumerate(self.slots):
                if not (slot.tasks or slot.broken):
                    continue
                if slot.conn in ready:  # an answer, or the end of a worker that died
                    kind, value = self._recv(slot)
                    if kind in ("ok", "failed"):  # answers come in the order pages were sent
                        task = slot.tasks.popleft()
                        slot.since = time.monotonic()
                        yield (task, value, "") if kind == "ok" else (task, None, value)
                        continue
                    reason = str(value)
                elif (
                    slot.broken
                    or slot.process.sentinel in ready
                    or not slot.process.is_alive()
                    or now - slot.since > self.hard_limit_s
                ):
                    reason = (
                        "the worker process died"
                        if not slot.process.is_alive()
                        else f"no answer in {self.hard_limit_s:.0f} s (killed)"
                    )
                else:
                    continue
                # The worker is gone or stuck: replace it. The page it was on is tried once
                # more; the pages it held ahead go again as if never sent. Each goes alone, as
                # preparing a page held ahead (its memory, a long C call) may be what killed it.
                self._kill(slot)
                self.slots[i] = self._spawn()
                self._wait_one(self.slots[i])
                held = list(slot.tasks)
                alone.update(t.source for t in held)
                todo.extendleft((t, attempts[t.source]) for t in reversed(held[1:]))
                if held and attempts[held[0].source] == 1:
                    todo.appendleft((held[0], 2))
                elif held:
                    yield held[0], None, reason

    def _takes(self, slot: _Slot, todo: deque, alone: set[str]) -> bool:
        """Whether to send `slot` the next page: up to PAGES_AHEAD beyond the one it is on, but
        a page that was with a worker that died goes alone, so that a page that kills its
        worker is blamed on nothing else."""
        if not (slot.ready and todo) or slot.broken:
            return False
        if not slot.tasks:
            return True
        together = todo[0][0].source not in alone and slot.tasks[0].source not in alone
        return len(slot.tasks) <= PAGES_AHEAD and together

    def _wait_one(self, slot: _Slot) -> None:
        if slot.conn.poll(self.hard_limit_s) and self._recv(slot)[0] == "ready":
            slot.ready = True
        else:
            raise UserError("a replacement browser worker could not start")

    def close(self) -> None:
        for slot in self.slots:
            try:
                slot.conn.send(None)
            except OSError:
                pass
        for slot in self.slots:
            slot.process.join(10)
            if slot.process.is_alive():
                self._kill(slot)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def localize_corpus(
    src: str,
    tokenizer_dir: str,
    out: Path,
    config: LocalizeConfig | None = None,
    *,
    workers: int | None = None,
    shard: tuple[int, int] = (0, 1),
    timeout_s: float | None = None,
    pages_per_part: int | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> dict:
    """Localize every page of SRC in this shard that OUT does not hold yet; returns a summary.

    `config` is the setting (default: the published one); `workers`, `timeout_s` and
    `pages_per_part`, when given, override it.
    """
    from layoutja.hub import pinned, resolve_tokenizer
    from layoutja.localize.store import Store
    from layoutja.text.tokenizer import vocab_sha256

    config = (config or LocalizeConfig()).override(
        workers=workers, timeout_s=timeout_s, pages_per_part=pages_per_part
    )
    tasks = [t for t in find_pages(src) if in_shard(t, shard)]
    tokenizer_path = resolve_tokenizer(tokenizer_dir)
    # Recorded so that it resolves from any directory: `pretrain` takes it from the manifest.
    name, revision = pinned(tokenizer_dir, tokenizer_path)
    settings = {
        "tokenizer": name,
        **({"tokenizer_revision": revision} if revision else {}),
        "tokenizer_vocab_sha256": vocab_sha256(tokenizer_path),
        "viewport": list(config.viewport),
        "device_scale_factor": config.device_scale_factor,
        "normalization": config.normalization,
        "geometry": config.geometry,
        "source": str(src),
        "config": config.as_dict(),
    }
    store = Store(out, shard, settings, config.pages_per_part, retry_failed)
    for damaged in store.damaged:
        pages = f"its {damaged['pages']} pages" if damaged["pages"] is not None else "its pages"
        print(f"note: {damaged['part']} is damaged ({damaged['reason']}): moved to "
              f"{damaged['moved_to']}; {pages} are localized again", file=sys.stderr)  # fmt: skip
    pending = [t for t in tasks if t.source not in store.done and t.source not in store.failed]
    done_before = sum(t.source in store.done for t in tasks)
    summary = {"pages": len(tasks), "skipped": done_before, "ok": 0, "failed": 0}
    summary.update(failed_before=len(tasks) - len(pending) - done_before, tokens=0)
    summary.update(dropped_tokens=0, empty=0, damaged=store.damaged)
    start = time.monotonic()
    if pending:
        count = max(1, min(config.worker_count, len(pending)))
        with WorkerPool(str(tokenizer_path), count, config) as pool:
            _note_chromium(store, pool.chromium_version, out)
            with Progress(len(pending), "page", "localize", enabled=progress, interval=10) as bar:
                for task, batch, reason in pool.run(pending):
                    _store(store, task, batch, reason, summary)
                    bar.update()
                    bar.set_postfix(tokens=summary["tokens"], failed=summary["failed"])
    directory = store.close()
    elapsed = time.monotonic() - start
    recorded = directory.get("shards", {})  # by shard_tag, shards of any count
    ours = [recorded.get(shard_tag((i, shard[1])), {}) for i in range(shard[1])]
    summary.update(
        seconds=round(elapsed, 2),
        pages_per_s=round(summary["ok"] / elapsed, 2) if elapsed else 0.0,
        out=str(out),
        failures=str(store.failures_path) if store.failed else None,
        totals=directory["counts"],  # the directory's, every shard's pages
        shards_finished=sum(s.get("finished", False) for s in ours),
    )
    return summary


def _note_chromium(store: Store, version: str, out: Path) -> None:
    """Record the Chromium version in the manifest; note a change from an earlier run."""
    earlier = store.settings.get("chromium")
    if earlier and earlier != version:
        print(
            f"note: {out} was begun with Chromium {earlier}; this run uses {version} "
            "(both are in the manifest)",
            file=sys.stderr,
        )
        store.settings.setdefault("chromium_earlier", []).append(earlier)
    store.settings["chromium"] = version


def _store(
    store: Store, task: PageTask, batch: pa.RecordBatch | None, reason: str, summary: dict
) -> None:
    """Store one page's result (or its failure) and count it in `summary`."""
    if batch is None:
        store.fail(task.source, reason)
        summary["failed"] += 1
        return
    store.add(batch)
    tokens = len(batch.column("tokens")[0])
    summary["ok"] += 1
    summary["empty"] += not tokens  # stored (a rerun skips it), but nothing to train on
    summary["tokens"] += tokens
    summary["dropped_tokens"] += batch.column("dropped")[0].as_py()
