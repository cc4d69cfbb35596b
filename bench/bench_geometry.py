"""Boxes against the published localizer's, per geometry setting, on the same pages in the same
Chromium: the share of tokens whose pixel box and whose normalized 0-1000 box are identical.

The published localizer is nishiwakikazutaka/shinra2022-task2_jrird's `pretokenize.py`, the one
published with jri-advtechlab/layoutlm-wikipedia-ja. Its code is not part of layoutja: give a
checkout of that repository (`--published DIR` or $LAYOUTJA_PUBLISHED_REPO); without one this
says so and skips. It runs from the checkout, unchanged; around it, not in it:
- its tokenizer: cl-tohoku/bert-base-japanese-v2 cannot be downloaded here, so its `init` loads
  a local directory with transformers' BertJapaneseTokenizer, the directory layoutja uses too
  (`--tokenizer`; default: trained by `layoutja vocab`'s defaults on the pages). transformers 5
  dropped `unique_no_split_tokens`, which its `tokenize` reads: the tokenizer gets the value
  transformers 4.36 (its pinned version) gave it, the special tokens;
- its HTTP server on a free port (not 8099), and Chromium driven as its README says:
  `--headless --no-sandbox --disable-gpu --window-size=1280,854 --remote-debugging-port=P
  http://localhost:PORT/`, with --disable-background-networking --disable-component-update
  --disable-sync --no-first-run, a fresh profile, and no network but its server (no host name
  but localhost resolves, and every other connection, loopback included, goes to a proxy that
  does not exist: the pages are untrusted and its Chromium runs their scripts).
Its normalized boxes are its own `make_iob2_dataset.normalize_bbox` of its pixel boxes against
its `body_bbox`, all-zero boxes dropped as that script drops them. Tokens are aligned by their
raw-HTML (start line, offset, end line, offset) spans: a token both sides cut alike.

    python bench/bench_geometry.py --published DIR [--pages DIR] [--tokenizer DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The real SHINRA sample where the tests find it (README: "The real SHINRA sample").
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "shinra-sample"
SHINRA = Path(os.environ.get("LAYOUTJA_SHINRA_SAMPLE") or SAMPLE).expanduser() / "Airport_HTML"
PUBLISHED_VARIABLE = "LAYOUTJA_PUBLISHED_REPO"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_published(checkout: str, tokenizer: str, pages: list[str], out: str, port: int) -> None:
    """The published localizer's server over `pages`, until it has every page's result (run in
    a process of its own: its module globals and worker pool stay out of this one)."""
    sys.stdout = sys.stderr  # its "Server ready" lines; its progress bar is on stderr already
    # Its worker pool is forked after `init` and finds the tokenizer there (Linux's default in
    # its Python 3.8; a process started by spawn would spawn its pool too).
    multiprocessing.set_start_method("fork", force=True)
    sys.path.insert(0, checkout)
    import pretokenize
    from transformers import BertJapaneseTokenizer

    def init() -> None:
        tok = BertJapaneseTokenizer.from_pretrained(tokenizer)
        if not hasattr(tok, "unique_no_split_tokens"):
            tok.unique_no_split_tokens = tok.all_special_tokens
        pretokenize.g_tokenizer = tok

    pretokenize.init = init
    todo = [(page, str(Path(out) / f"{Path(page).stem}.json"), Path(page).stem) for page in pages]
    pretokenize.Service().run(port=port, to_be_processed=todo, output_dir=out)


def run_published(checkout: Path, tokenizer: Path, pages: list[Path], out: Path) -> None:
    """Localize `pages` with the published localizer into OUT/<stem>.json."""
    from layoutja.localize.browser import CHROMIUM

    port, debugging = free_port(), free_port()
    args = (str(checkout), str(tokenizer), [str(p) for p in pages], str(out), port)
    server = multiprocessing.get_context("spawn").Process(target=serve_published, args=args)
    server.start()
    deadline = time.monotonic() + 120
    while True:  # its server listens once its tokenizer has loaded
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if not server.is_alive() or time.monotonic() > deadline:
                server.kill()
                raise SystemExit("the published localizer's server did not start") from None
            time.sleep(0.2)
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        readme = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,854",
                  f"--remote-debugging-port={debugging}"]  # fmt: skip
        quiet = ["--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"]  # fmt: skip
        offline = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
                   "--proxy-server=socks5://255.255.255.255:1",
                   f"--proxy-bypass-list=<-loopback>;localhost:{port}"]  # fmt: skip
        chrome = subprocess.Popen(
            [CHROMIUM, *readme, *quiet, *offline, f"http://localhost:{port}/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        limit = 60 + 10 * len(pages)
        server.join(timeout=limit)  # a page that fails stalls it for good
        chrome.terminate()  # Chromium ends its own processes
        try:
            chrome.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(chrome.pid, signal.SIGKILL)  # its session: the processes it started
            chrome.wait()
    if server.exitcode != 0:
        server.kill()
        raise SystemExit(f"the published localizer did not finish within {limit} s")


def raw_text(lines: list[str], span: list[int]) -> str:
    """The raw HTML of a (start line, offset, end line, offset) span."""
    l0, c0, l1, c1 = span
    text = "\n".join(lines[l0 : l1 + 1])
    return text[c0 : len(text) - len(lines[l1]) + c1]


def agreement(records: dict, published: dict, lines: dict, normalize) -> dict:
    """Tokens aligned by raw span; how many of them have identical pixel and normalized boxes,
    and of the others, why: the published span holds markup (a token across a tag: it swallows
    the tags), the pixel box is on the same line (moved along it, or only normalized against
    another body), or else; and the pages whose body rect is identical."""
    counts = dict.fromkeys(["tokens", "aligned", "px", "bbox", "bbox_1", "body"], 0)
    counts.update(dict.fromkeys(["markup", "same line", "other"], 0))
    for name, ours in records.items():
        theirs = published[name]
        boxes = zip(ours["html_span"], ours["px"], ours["bbox"], strict=True)
        by_span = {tuple(span): (px, bbox) for span, px, bbox in boxes}
        counts["body"] += list(ours["body"]) == theirs["body_bbox"]
        for box, span in zip(theirs["bboxes"], theirs["offsets"]):
            if box == [0, 0, 0, 0]:
                continue
            counts["tokens"] += 1
            if tuple(span) not in by_span:
                continue
            px, bbox = by_span[tuple(span)]
            expected = normalize(box, theirs["body_bbox"])
            counts["aligned"] += 1
            counts["px"] += list(px) == box
            counts["bbox"] += list(bbox) == expected
            counts["bbox_1"] += max(abs(a - b) for a, b in zip(bbox, expected)) <= 1
            if list(bbox) != expected:
                same_line = (px[1], px[3]) == (box[1], box[3])
                why = "markup" if "<" in raw_text(lines[name], span) else None
                counts[why or ("same line" if same_line else "other")] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--published",
        default=os.environ.get(PUBLISHED_VARIABLE),
        help=f"checkout of the published repository (default: ${PUBLISHED_VARIABLE})",
    )
    parser.add_argument("--pages", type=Path, default=SHINRA, help="directory of .html pages")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer directory (default: train one)")
    args = parser.parse_args()
    checkout = Path(args.published) if args.published else None
    if checkout is None or not (checkout / "pretokenize.py").is_file():
        print(
            "bench_geometry: skipped: no checkout of nishiwakikazutaka/shinra2022-task2_jrird "
            f"(--published DIR or ${PUBLISHED_VARIABLE}): {checkout or 'none given'}"
        )
        return
    pages = sorted(args.pages.glob("*.html"))
    if not pages:
        print(f"bench_geometry: skipped: no .html pages in {args.pages}")
        return

    from layoutja.localize.browser import Browser
    from layoutja.localize.config import GEOMETRIES, LocalizeConfig
    from layoutja.localize.page import localize_html
    from layoutja.text.tokenizer import JapaneseTokenizer
    from layoutja.text.vocab import VocabConfig, train_vocab

    sys.path.insert(0, str(checkout))
    from make_iob2_dataset import normalize_bbox

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = args.tokenizer
        if tokenizer is None:
            tokenizer = Path(tmp) / "tokenizer"
            train_vocab(pages, tokenizer, VocabConfig())
        out = Path(tmp) / "published"
        start = time.monotonic()
        run_published(checkout, tokenizer, pages, out)
        print(f"published localizer: {len(pages)} pages in {time.monotonic() - start:.1f} s")
        published = {p.name: json.loads((out / f"{p.stem}.json").read_text()) for p in pages}
        # Lines as the published localizer counts them (its files read in text mode).
        lines = {p.name: p.read_text(encoding="utf-8-sig").split("\n") for p in pages}
        tok = JapaneseTokenizer.from_pretrained(tokenizer)
        rows = {}
        for geometry in GEOMETRIES:
            with Browser(LocalizeConfig(geometry=geometry)) as browser:
                records = {p.name: localize_html(p.read_bytes(), tok, browser) for p in pages}
                chromium = browser.version
            rows[geometry] = agreement(records, published, lines, normalize_bbox)
    print(f"Chromium {chromium}, a vocabulary of {len(tok.vocab):,}. Per geometry: the tokens")
    print("with a box on the published side, those aligned, the share of these that are identical")
    header = ["geometry", "tokens", "aligned", "px identical", "bbox identical", "bbox within 1"]
    header += ["body identical", "bbox differing: published span over markup / same line / other"]
    print(" | ".join(header))
    for geometry, c in rows.items():
        share = {k: c[k] / max(c["aligned"], 1) for k in ("px", "bbox", "bbox_1")}
        row = [geometry, f"{c['tokens']:,}", f"{c['aligned']:,}", f"{share['px']:.2%}"]
        row += [f"{share['bbox']:.2%}", f"{share['bbox_1']:.2%}", f"{c['body']}/{len(pages)}"]
        row += [f"{c['markup']:,} / {c['same line']:,} / {c['other']:,}"]
        print(" | ".join(row))


if __name__ == "__main__":
    main()
