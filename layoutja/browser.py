"""Headless Chromium through Playwright, set up so that rendering a page is reproducible and safe.

- Debian's Chromium (`/usr/bin/chromium`, or `$LAYOUTJA_CHROMIUM`): Playwright's own browser
  download is not needed.
- A 1280×854 layout viewport at device scale factor 1, set through Playwright's viewport (a
  `--window-size` flag gives a smaller viewport in headless mode). Headless Chromium draws no
  scrollbars, so long pages are laid out at the full 1280 px; `RenderResult.layout` records the
  width actually measured.
- The page's own scripts are off; our box-reading script still runs (`page.evaluate` uses
  Playwright's own context).
- Nothing leaves the browser: every URL is blocked through the DevTools protocol
  (`Network.setBlockedURLs`), inside Chromium, so a page with hundreds of images costs no round
  trips to Python. Pages are loaded with `set_content` (no URL of their own, so no `file://`
  access either).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from layoutja.errors import UserError

CHROMIUM = os.environ.get("LAYOUTJA_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = (1280, 854)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
_JS = Path(__file__).with_name("js")


@cache
def script(name: str) -> str:
    """The text of one of the package's browser scripts (layoutja/js/NAME.js)."""
    return (_JS / f"{name}.js").read_text(encoding="utf-8")


@dataclass
class RenderResult:
    """Token boxes in document CSS pixels (all zeros: not rendered) and the page geometry."""

    boxes: list[tuple[float, float, float, float]]
    body: tuple[float, float, float, float] | None  # document.body's rect, None without a body
    layout: tuple[float, float, float, float]  # viewport width, height; document width, height


class Browser:
    """One Chromium with one page, reused across documents; `restart` after any failure."""

    def __init__(self, timeout_s: float = 60.0, viewport: tuple[int, int] = VIEWPORT):
        self.timeout_ms = timeout_s * 1000
        self.viewport = viewport
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
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=FLAGS, timeout=self.timeout_ms
        )
        self._new_page()

    def _new_page(self) -> None:
        if self._page is not None:
            self._page.context.close()
        width, height = self.viewport
        context = self._browser.new_context(
            viewport={"width": width, "height": height},
            device_scale_factor=1,
            java_script_enabled=False,
            service_workers="block",
        )
        page = context.new_page()
        page.set_default_timeout(self.timeout_ms)
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.setBlockedURLs", {"urls": ["*"]})
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

    def load(self, html: str) -> None:
        """Load a document (its images and styles blocked) and wait for its load event."""
        # A fresh page now and then keeps a long batch from accumulating renderer state.
        if self.pages_rendered and self.pages_rendered % 500 == 0:
            self._new_page()
        self.pages_rendered += 1
        self._page.set_content(html, wait_until="load")

    def render(self, html: str, count: int) -> RenderResult:
        """Load `html` (token spans carry `data-layoutja` = 0..count-1); read all boxes at once."""
        self.load(html)
        got = self._page.evaluate(script("boxes"), count)
        flat = [float(v) for v in got["boxes"].split()] if count else []
        boxes = [tuple(flat[k : k + 4]) for k in range(0, 4 * count, 4)]
        return RenderResult(boxes, tuple(got["body"]) if got["body"] else None, got["layout"])

    def screenshot(self, boxes: list, out: Path, tile_height: int | None = None) -> list[Path]:
        """Draw `boxes` over the loaded page and save it: one tall PNG, or viewport-high tiles."""
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
