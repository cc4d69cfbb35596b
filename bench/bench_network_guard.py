"""What the network protection costs: rendering with layoutja's Browser (context routing, the
browser-level flags, the render deadline) against a bare Chromium with the DevTools block alone
(the protection before), on the same pre-wrapped real pages, in one run.

Pages: the real SHINRA sample ($LAYOUTJA_SHINRA_SAMPLE, else ../shared/shinra-sample) and,
when installed (`make bench`), Debian's Japanese documentation. Both sides load each page and
read every box with the same script; the boxes must agree.

    python bench/bench_network_guard.py [--pages 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_localize import real_pages  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from layoutja.localize.browser import CHROMIUM, Browser, script
    from layoutja.localize.config import LocalizeConfig
    from layoutja.localize.page import wrap_tokens
    from layoutja.text.htmlpage import decode_html, parse_html
    from layoutja.text.tokenizer import JapaneseTokenizer
    from layoutja.text.vocab import VocabConfig, train_vocab

    pages = real_pages(args.pages)
    with tempfile.TemporaryDirectory() as tmp:
        train_vocab(pages, Path(tmp), VocabConfig(vocab_size=8000, workers=2))
        tokenizer = JapaneseTokenizer.from_pretrained(tmp)
    wrapped = [wrap_tokens(parse_html(*decode_html(p.read_bytes())), tokenizer) for p in pages]
    tokens = sum(len(w.tokens) for w in wrapped)
    # The clean geometry: the bare browser hides scrollbars (Playwright's default) and appends
    # no published form: both lay the pages out alike, and the time compared is the protection's.
    config = LocalizeConfig(geometry="clean")

    def guarded() -> tuple[float, list]:
        with Browser(config) as browser:
            browser.render(wrapped[0].html, len(wrapped[0].tokens))  # warm up
            start, boxes = time.perf_counter(), []
            for _ in range(args.rounds):
                boxes = [browser.render(w.html, len(w.tokens)).boxes for w in wrapped]
            return time.perf_counter() - start, boxes

    def devtools_only() -> tuple[float, list]:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, args=list(config.chromium_flags)
            )
            width, height = config.viewport
            context = chromium.new_context(
                viewport={"width": width, "height": height},
                device_scale_factor=config.device_scale_factor,
                java_script_enabled=False,
            )
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.send("Network.setBlockedURLs", {"urls": ["*"]})

            def render(w) -> list:
                page.set_content(w.html, wait_until="load")
                flat = [
                    float(v) for v in page.evaluate(script("boxes"), len(w.tokens))["boxes"].split()
                ]
                return [tuple(flat[k : k + 4]) for k in range(0, len(flat), 4)]

            render(wrapped[0])
            start, boxes = time.perf_counter(), []
            for _ in range(args.rounds):
                boxes = [render(w) for w in wrapped]
            seconds = time.perf_counter() - start
            chromium.close()
            return seconds, boxes

    bare, reference = devtools_only()
    ours, boxes = guarded()
    assert boxes == reference, "the protection changed the boxes"
    n = len(wrapped) * args.rounds
    print(f"{len(pages)} real pages, {tokens} tokens, {args.rounds} rounds; boxes identical")
    print(f"{'DevTools block only':<32} {n / bare:6.2f} pages/s")
    print(f"{'two layers + deadline':<32} {n / ours:6.2f} pages/s  ({ours / bare - 1:+.1%} time)")


if __name__ == "__main__":
    main()
