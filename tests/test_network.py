"""Untrusted pages: nothing a rendered page asks for leaves the browser, from any frame, on any
command that renders; and no page hangs a command.

Real servers on 127.0.0.1 and ::1 (random ports) count every TCP connection; hostile pages reach
for them through every vector in tests/hostile.py. Nothing else is ever contacted.
"""

from __future__ import annotations

import json
import time

import pytest
from transformers import BertForMaskedLM

from layoutja.common import UserError
from layoutja.localize.browser import CHROMIUM, PUBLISHED_FORM, Browser, RenderTimeout, script
from layoutja.localize.config import LocalizeConfig
from layoutja.localize.page import localize_html, wrap_tokens
from layoutja.localize.pool import localize_corpus
from layoutja.text.htmlpage import decode_html, parse_html
from layoutja.text.tokenizer import JapaneseTokenizer

from .conftest import SHINRA, SHINRA_MISSING, tiny_bert
from .hostile import hostile_pages, listeners
from .test_cli import layoutja


def assert_untouched(servers) -> None:
    for server in servers:
        assert (server.connections, server.requests) == (0, []), server.url


def combined(pages: dict[str, str]) -> str:
    """Every vector but the frameset in one page (for the commands that take one page)."""
    bodies = [
        p.split("<body>", 1)[1].rsplit("</body>", 1)[0]
        for n, p in pages.items()
        if n not in ("frameset", "base-href")
    ]
    return "<!DOCTYPE html><html><head></head><body>" + "".join(bodies) + "</body></html>"


def test_batch_localizes_hostile_pages_without_a_single_connection(unidic_dir, tmp_path):
    with listeners() as servers:
        src = tmp_path / "html"
        src.mkdir()
        pages = hostile_pages(servers, tmp_path)
        for name, page in pages.items():
            (src / f"{name}.html").write_text(page, encoding="utf-8")
        out = tmp_path / "out"
        start = time.monotonic()
        summary = localize_corpus(
            str(src), str(unidic_dir), out, workers=2, timeout_s=20, progress=False
        )
        assert time.monotonic() - start < 120
        time.sleep(1)  # anything the browsers started late would have arrived by now
        assert_untouched(servers)
    failures = (out / "failures.jsonl").read_text().splitlines() if summary["failed"] else []
    assert summary["ok"] + len(failures) == len(pages)
    assert summary["ok"] >= len(pages) - 1, failures  # blocking is no reason to fail a page


def test_single_page_commands_reach_nothing(unidic_dir, tmp_path):
    with listeners() as servers:
        pages = hostile_pages(servers, tmp_path)
        page = tmp_path / "hostile.html"
        page.write_text(combined(pages), encoding="utf-8")
        frameset = tmp_path / "frameset.html"
        frameset.write_text(pages["frameset"], encoding="utf-8")
        base = tmp_path / "base.html"
        base.write_text(pages["base-href"], encoding="utf-8")
        for path in (page, frameset, base):
            result = layoutja("localize", path, "--tokenizer", unidic_dir, "--timeout", "30")
            assert result.returncode == 0, result.stderr.decode()
        record = json.loads(layoutja("localize", page, "--tokenizer", unidic_dir).stdout)
        assert "".join(record["tokens"]).startswith("東京")
        png = tmp_path / "page.png"
        result = layoutja("show", page, "--tokenizer", unidic_dir, "--out", png)
        assert result.returncode == 0, result.stderr.decode()
        time.sleep(1)
        assert_untouched(servers)


def test_fill_mask_on_a_layout_model_reaches_nothing(unidic_dir, tmp_path):
    from layoutja.pretrain.fillmask import fill_mask
    from layoutja.pretrain.from_bert import init_model

    bert = tiny_bert(BertForMaskedLM, unidic_dir, tmp_path / "bert")
    init_model(bert, tmp_path / "layoutlm")
    with listeners() as servers:
        reach = "".join(f'<iframe src="{s.url}/x"></iframe><img src="{s.url}/y">' for s in servers)
        answers = fill_mask(tmp_path / "layoutlm", f"{reach}東京で[MASK]を見る", top_k=2)
        time.sleep(1)
        assert_untouched(servers)
    assert len(answers) == 1 and len(answers[0]) == 2


def test_a_page_that_hangs_ends_with_a_clear_error(unidic_dir, tmp_path):
    # Scripts are off, so a page itself cannot loop; a busy renderer looks the same from outside.
    with Browser(timeout_s=1) as browser:
        browser.load("<p>東京</p>")
        start = time.monotonic()
        with pytest.raises(RenderTimeout, match="within 1 s"):
            browser.evaluate("() => { for (;;) {} }")
        assert time.monotonic() - start < 10
        browser.restart()
        assert browser.render('<span data-layoutja="0">東京</span>', 1).boxes[0][2] > 0
    # A page too large for its deadline: every single-page path names the file and stops.
    big = tmp_path / "big.html"
    big.write_text("<p>" + "東京国際空港は大田区にある。" * 15_000 + "</p>", encoding="utf-8")
    for command in (["localize", big], ["show", big, "--out", tmp_path / "big.png"]):
        start = time.monotonic()
        result = layoutja(*command, "--tokenizer", unidic_dir, "--timeout", "0.3")
        assert time.monotonic() - start < 60
        assert result.returncode == 1
        message = result.stderr.decode()
        assert f"{big}: " in message and "Traceback" not in message, message
    with pytest.raises(UserError, match="big.html: "):
        from layoutja.localize.page import localize_file

        with Browser(timeout_s=0.5) as browser:
            localize_file(big, JapaneseTokenizer.from_pretrained(unidic_dir), browser)


def test_a_refresh_in_any_spelling_does_not_replace_the_page(unidic_dir):
    tok = JapaneseTokenizer.from_pretrained(unidic_dir)
    with Browser(timeout_s=20) as browser:
        for meta in [
            '<meta http-equiv="&#114;efresh" content="0">',
            "<meta http-equiv='REFRESH' content='0;url=about:blank'>",
            '<meta http-equiv="&#x52;efresh" content="0; url=data:text/html,x">',
        ]:
            record = localize_html(f"<head>{meta}</head><p>東京</p>".encode(), tok, browser)
            time.sleep(0.3)
            assert record["tokens"] == ["東京"] and browser._page.url == "about:blank", meta


def test_blocking_does_not_change_the_boxes_of_real_pages(unidic_dir):
    """The published localizer's layout (subresources missing) is what the new layers give."""
    pages = sorted(SHINRA.glob("Airport_HTML/*.html"))
    if not pages:
        pytest.skip(SHINRA_MISSING)
    from playwright.sync_api import sync_playwright

    tok = JapaneseTokenizer.from_pretrained(unidic_dir)
    wrapped = [wrap_tokens(parse_html(*decode_html(p.read_bytes())), tok) for p in pages]
    with Browser(timeout_s=60) as browser:
        guarded = [browser.render(w.html, len(w.tokens)).boxes for w in wrapped]
    # The reference: the DevTools block on the top page alone, as before, in the published
    # geometry (Chromium's scrollbar kept, the published form after the page).
    with sync_playwright() as playwright:
        published = LocalizeConfig()
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=list(published.chromium_flags),
            ignore_default_args=["--hide-scrollbars"],
        )
        width, height = published.viewport
        context = chromium.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=1,
            java_script_enabled=False,
        )
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.setBlockedURLs", {"urls": ["*"]})
        for w, boxes in zip(wrapped, guarded):
            page.set_content(w.html + PUBLISHED_FORM, wait_until="load")
            got = page.evaluate(script("boxes"), len(w.tokens))
            flat = [float(v) for v in got["boxes"].split()]
            reference = [tuple(flat[k : k + 4]) for k in range(0, len(flat), 4)]
            assert len(boxes) > 500 and boxes == reference
        chromium.close()


def test_file_urls_are_never_read(unidic_dir, tmp_path):
    secret = tmp_path / "secret.html"
    secret.write_text("<p>秘密</p>", encoding="utf-8")
    # The object is closed: the published geometry's form after an open one would be its
    # fallback content, and it would make no frame to test.
    url = secret.as_uri()
    page = f'<p>東京</p><iframe src="{url}"></iframe><object data="{url}"></object>'
    with Browser(timeout_s=20) as browser:
        localize_html(page.encode(), JapaneseTokenizer.from_pretrained(unidic_dir), browser)
        frames = browser._page.frames
        assert len(frames) == 3 and not any(frame.url.startswith("file:") for frame in frames)
