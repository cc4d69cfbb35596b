"""Headless Chromium through Playwright, set up so that rendering a page is reproducible and safe.

- Debian's Chromium (`/usr/bin/chromium`, or `$LAYOUTJA_CHROMIUM`): Playwright's own browser
  download is not needed.
- The viewport, device scale factor and flags of a `LocalizeConfig` (published: 1280×854 at
  scale 1), set through Playwright's viewport (a `--window-size` flag gives a smaller viewport
  in headless mode). Its `geometry` decides the rest of the layout: "published" keeps
  Chromium's classic 15 px scrollbar, so a page taller than the viewport is laid out 1265 px
  wide, and appends the published localizer's form (`PUBLISHED_FORM`) after the page's source,
  so the body is measured as that localizer measured it; "clean" hides scrollbars and appends
  nothing. `RenderResult.layout` records the width actually laid out.
- The page's own scripts are off; our box-reading script still runs (`page.evaluate` uses
  Playwright's own context).
- Nothing leaves the browser. Pages are untrusted, and the machine rendering them sits inside
  someone's network, so two independent layers stop every request (see `NETWORK_FLAGS` and
  `Browser._new_page`): the context aborts every request of every frame, and the browser has no
  address to connect to. Pages are written into the open document, as Playwright's
  `set_content` does (no URL of their own, so no `file://` origin either), by `js/render.js`,
  which also reads the boxes once the page has settled: a page travels as its source plus the
  span edits (`Markup`), far less to pass than the wrapped HTML.
- The window is minimized (see `Browser._new_page`): Chromium then draws no frames, and the
  boxes, read from the layout in Playwright's viewport, are the same.
- Every render has a deadline (`timeout_s`): `page.evaluate` has no timeout of its own, so a
  watchdog kills the browser's processes when a page hangs, and the call fails with
  `RenderTimeout` instead of waiting forever.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import psutil

from layoutja.common import UserError
from layoutja.localize.config import LocalizeConfig

CHROMIUM = os.environ.get("LAYOUTJA_CHROMIUM", "/usr/bin/chromium")
LAUNCH_TIMEOUT_MS = 60_000  # starting Chromium is not a page's doing: not under its deadline
# The browser-level layer: no host name or address resolves (DNS is never asked), and every
# connection, loopback included (`<-loopback>` removes its implicit bypass), must go through a
# proxy that cannot be reached. It catches what never becomes a request the context could see:
# speculative preconnects, DNS prefetch, and anything a future Chromium adds.
NETWORK_FLAGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=socks5://255.255.255.255:1",
    "--proxy-bypass-list=<-loopback>",
]
_JS = Path(__file__).with_name("js")
# A plugin element (<object>, <embed>) starts loading only after layout, and nothing in the page
# tells when it has settled (shown its fallback content or not): such pages are loaded with
# Playwright's `set_content`, which returns after the load event of every frame.
_PLUGIN = re.compile(r"<(?:object|embed)[\t\n\f\r />]", re.I)
# nowrap keeps a subword on one line; with ligatures on, a glyph spanning two spans (f|i) gives
# the second span zero width, so ligatures are turned off on token spans.
SPAN_OPEN = '<span data-layoutja="{}" style="white-space:nowrap;font-variant-ligatures:none">'
SPAN_CLOSE = "</span>"
# The published localizer sends every page with its own form (three text inputs, and a script)
# after the page's source, and reads document.body's rect with the form in it: the body is
# taller by the form's line (and by the bottom margin of the page's last block, which no longer
# collapses through the body). The same markup, parsed the same way, gives the same body;
# nothing submits it (the page's scripts are off).
PUBLISHED_FORM = "\n<form><input><input><input></form>"
_HIDE_SCROLLBARS = "--hide-scrollbars"  # Playwright's headless default; the geometry decides
# Killing a hung browser leaves Playwright's driver connection with an exception nobody reads;
# asyncio would log it when it is collected. The kill is reported as RenderTimeout instead.
logging.getLogger("asyncio").addFilter(
    lambda record: "Connection closed while reading from the driver" not in str(record.exc_info)
)


@cache
def script(name: str) -> str:
    """The text of one of the package's browser scripts (layoutja/localize/js/NAME.js);
    render.js gets boxes.js where it says `(BOXES)`."""
    text = (_JS / f"{name}.js").read_text(encoding="utf-8")
    return text.replace("(BOXES)", f"({script('boxes')})") if name == "render" else text


@dataclass
class Markup:
    """A page to render: its source and the edits that wrap its tokens in spans.

    `ops` rows are (start, end, code), sorted: source[start:end] is replaced by the opening tag
    of token `code`'s span (`SPAN_OPEN`, code >= 0) or by texts[-code - 1].
    """

    source: str
    ops: np.ndarray  # int32, shape (k, 3)
    texts: list[str]

    @classmethod
    def plain(cls, html: str) -> Markup:
        """A page that is already wrapped (or has no tokens): no edits."""
        return cls(html, np.zeros((0, 3), np.int32), [])

    @property
    def html(self) -> str:
        """The wrapped HTML, as `js/render.js` assembles it."""
        out, done = [], 0
        for start, end, code in self.ops.tolist():
            out.append(self.source[done:start])
            out.append(SPAN_OPEN.format(code) if code >= 0 else self.texts[-code - 1])
            done = max(done, end)
        out.append(self.source[done:])
        return "".join(out)


class RenderTimeout(Exception):
    """A page did not render (or its boxes could not be read) within the deadline."""


@dataclass
class RenderResult:
    """Token boxes in document CSS pixels (all zeros: not rendered) and the page geometry."""

    array: np.ndarray  # float64, shape (count, 4): x0, y0, x1, y1 of each token
    body: tuple[float, float, float, float] | None  # document.body's rect, None without a body
    layout: tuple[float, float, float, float]  # viewport width, height; document width, height

    @property
    def boxes(self) -> list[tuple[float, float, float, float]]:
        return [tuple(box) for box in self.array.tolist()]


class Browser:
    """One Chromium with one page, reused across documents; `restart` after any failure."""

    def __init__(self, config: LocalizeConfig | None = None, *, timeout_s: float | None = None):
        self.config = (config or LocalizeConfig()).override(timeout_s=timeout_s)
        self.timeout_ms = self.config.timeout_s * 1000
        self.viewport = self.config.viewport
        self._playwright = None
        self._browser = None
        self._page = None
        self.pages_rendered = 0
        self.start()

    def start(self) -> None:
        from playwright.sync_api import sync_playwright

        if not Path(CHROMIUM).exists():
            raise UserError(
                f"{CHROMIUM}: no Chromium there; run `make setup` (installs Debian's chromium) "
                "or set LAYOUTJA_CHROMIUM"
            )
        before = {p.pid for p in psutil.Process().children()}
        self._playwright = sync_playwright().start()
        # Playwright's driver, whose descendants are Chromium's processes: what the watchdog kills.
        self._driver = [p for p in psutil.Process().children() if p.pid not in before]
        # Scrollbars: the published geometry drops Playwright's --hide-scrollbars (which also
        # drops it from `args`), the clean one states it rather than rely on that default.
        scrollbars = self.config.geometry == "published"
        self._browser = self._playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                *self.config.chromium_flags,
                *([] if scrollbars else [_HIDE_SCROLLBARS]),
                *NETWORK_FLAGS,  # the network flags always
            ],
            ignore_default_args=[_HIDE_SCROLLBARS] if scrollbars else None,
            timeout=LAUNCH_TIMEOUT_MS,
        )
        self._new_page()

    def _new_page(self) -> None:
        if self._page is not None:
            self._page.context.close()
        width, height = self.viewport
        context = self._browser.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=self.config.device_scale_factor,
            java_script_enabled=False,
            service_workers="block",
        )
        # The context-level layer: Playwright intercepts every request of every frame of the
        # context (iframes in other renderer processes, srcdoc and data: frames, objects, embeds,
        # fenced frames) and every navigation. "aborted" (net::ERR_ABORTED) cancels a navigation
        # without replacing the document by an error page, so a refresh cannot blank the page.
        context.route("**/*", lambda route: route.abort("aborted"))
        page = context.new_page()
        page.set_default_timeout(self.timeout_ms)
        # A shortcut, not a layer: the top document's own requests (most of a page's images and
        # styles) are refused inside the renderer, with no round trip to Python.
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.setBlockedURLs", {"urls": ["*"]})
        # Minimized, the window shows nothing, so Chromium paints, rasterizes and composites
        # (almost) no frames, about a third of its CPU on large pages; pages are still laid out
        # when boxes are read, in the viewport Playwright sets, so the boxes do not change.
        window = cdp.send("Browser.getWindowForTarget")["windowId"]
        cdp.send(
            "Browser.setWindowBounds", {"windowId": window, "bounds": {"windowState": "minimized"}}
        )
        self._page = page

    @property
    def version(self) -> str:
        return self._browser.version

    def close(self) -> None:
        for closer in (self._browser, self._playwright):
            try:
                if closer is self._playwright and closer is not None:
                    closer.stop()
                elif closer is not None:
                    closer.close()
            except Exception:  # already dead: closing is best effort
                pass
        self._browser = self._playwright = self._page = None

    def restart(self) -> None:
        self.close()
        self.start()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def deadline(self) -> Iterator[None]:
        """Run a block of browser calls within `timeout_s`, or kill the browser and raise
        `RenderTimeout` (the browser is then dead: `restart` it)."""
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            for driver in self._driver:
                try:
                    processes = [*driver.children(recursive=True), driver]
                except psutil.NoSuchProcess:
                    continue
                for process in processes:
                    try:
                        process.kill()
                    except psutil.NoSuchProcess:
                        pass

        timer = threading.Timer(self.timeout_ms / 1000, kill)
        timer.start()
        try:
            yield
        except Exception:
            if fired.is_set():
                raise RenderTimeout(
                    f"rendering did not finish within {self.timeout_ms / 1000:g} s"
                ) from None
            raise
        finally:
            timer.cancel()
        if fired.is_set():
            raise RenderTimeout(f"rendering did not finish within {self.timeout_ms / 1000:g} s")

    def load(self, html: str) -> None:
        """Load a document (every request blocked) and wait until it has settled."""
        self.render(html, 0)

    def evaluate(self, expression: str, arg: object = None) -> object:
        """Run a script in the loaded page, within the deadline."""
        with self.deadline():
            return self._page.evaluate(expression, arg)

    def render(self, page: str | Markup, count: int) -> RenderResult:
        """Load a page (HTML whose token spans carry `data-layoutja` = 0..count-1, or `Markup`)
        and read all boxes once it has settled, all within the deadline."""
        markup = Markup.plain(page) if isinstance(page, str) else page
        if self.config.geometry == "published":  # the edits end before it: they stay valid
            markup = dataclasses.replace(markup, source=markup.source + PUBLISHED_FORM)
        # A fresh page now and then keeps a long batch from accumulating renderer state.
        if self.pages_rendered and self.pages_rendered % 500 == 0:
            self._new_page()
        self.pages_rendered += 1
        ops = base64.b64encode(markup.ops.astype("<i4").tobytes()).decode("ascii")
        open_tag = SPAN_OPEN.split("{}")
        with self.deadline():
            if _PLUGIN.search(markup.source):
                self._page.set_content(markup.html, wait_until="load")
            else:
                self._page.evaluate(
                    script("render"), [markup.source, ops, open_tag, markup.texts, count]
                )
            # Then ask until it has settled (an image or a font still failing): usually once.
            while (got := self._page.evaluate(script("render"), [None, "", [], [], count])) is None:
                time.sleep(0.002)
        boxes = np.frombuffer(base64.b64decode(got["boxes"]), "<f8").reshape(count, 4)
        return RenderResult(boxes, tuple(got["body"]) if got["body"] else None, got["layout"])

    def screenshot(self, boxes: list, out: Path, tile_height: int | None = None) -> list[Path]:
        """Draw `boxes` over the loaded page and save it: one tall PNG, or viewport-high tiles."""
        with self.deadline():
            return self._screenshot(boxes, out, tile_height)

    def _screenshot(self, boxes: list, out: Path, tile_height: int | None) -> list[Path]:
        self._page.evaluate(script("overlay"), boxes)
        if not tile_height:
            self._page.screenshot(path=str(out), full_page=True)
            return [out]
        width, height = self._page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        paths = []
        for i, top in enumerate(range(0, max(int(height), 1), tile_height)):
            path = out.with_name(f"{out.stem}-{i:03d}{out.suffix}")
            clip = {"x": 0, "y": top, "width": width, "height": min(tile_height, height - top)}
            self._page.screenshot(path=str(path), full_page=True, clip=clip)
            paths.append(path)
        return paths
