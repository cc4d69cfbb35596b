"""The localization geometry: the published localizer's (a classic scrollbar beside pages taller
than the viewport, the body measured with its form after the page) and the clean one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layoutja.common import UserError
from layoutja.localize.browser import Browser
from layoutja.localize.config import LocalizeConfig
from layoutja.localize.page import localize_html, normalize_boxes
from layoutja.localize.pool import localize_corpus
from layoutja.text.tokenizer import JapaneseTokenizer

from .conftest import SHINRA, SHINRA_MISSING, make_corpus

# 31 × 東京 + 東 in 20 px full-width glyphs: 1,260 px, which fits the body of a page laid out at
# 1280 px (1264 px inside its margins) and not that of one beside a scrollbar (1249 px).
LINE = "<p style='font:20px monospace;margin:0'>" + "東京" * 31 + "東</p>"
PAGES = {
    "short": "<!DOCTYPE html><body><p>東京</p><p>空港</p></body>",
    "tall": f"<!DOCTYPE html><body>{LINE}<div style='height:2000px'></div><p>空港</p></body>",
}
SETTINGS = {
    "published": LocalizeConfig(),
    "clean": LocalizeConfig(geometry="clean"),
    # The published layout without its scrollbar and form: the clean geometry at 1265 px.
    "clean-1265": LocalizeConfig(geometry="clean", viewport_width=1265),
}


@pytest.fixture(scope="module")
def records(unidic_dir) -> dict[str, dict[str, dict]]:
    """Every page of PAGES (and the real sample's, where it is) in every setting, by setting
    and name; one browser at a time (one Playwright per process)."""
    tok = JapaneseTokenizer.from_pretrained(unidic_dir)
    pages = {name: html.encode() for name, html in PAGES.items()}
    pages.update({p.name: p.read_bytes() for p in sorted(SHINRA.glob("Airport_HTML/*.html"))})
    out: dict = {}
    for setting, config in SETTINGS.items():
        out[setting] = {}
        with Browser(config, timeout_s=60) as browser:
            for name, data in pages.items():
                out[setting][name] = localize_html(data, tok, browser)
                if (setting, name) == ("published", "short"):  # the form's line, laid out here
                    out["form_height"] = browser.evaluate(
                        "document.body.lastElementChild.getBoundingClientRect().height"
                    )
    return out


def lines(record: dict) -> int:
    return len({round(y0) for _, y0, _, _ in record["px"]})


def test_the_published_geometry_is_the_default_and_known_by_name():
    assert LocalizeConfig().geometry == "published"
    with pytest.raises(UserError, match="geometry must be one of"):
        LocalizeConfig(geometry="sideways")
    with pytest.raises(UserError, match="--hide-scrollbars is the geometry setting's"):
        LocalizeConfig(chromium_flags=("--no-sandbox", "--hide-scrollbars"))


def test_a_tall_page_is_laid_out_beside_a_scrollbar_in_the_published_geometry(records):
    published, clean = records["published"]["tall"], records["clean"]["tall"]
    assert published["viewport_width"] == 1265 and clean["viewport_width"] == 1280
    assert published["body"][2] - published["body"][0] == 1249
    assert clean["body"][2] - clean["body"][0] == 1264
    # The long line fits beside no scrollbar, and wraps beside one.
    assert lines(clean) == 2 and lines(published) == 3
    # A page no taller than the viewport has no scrollbar in either geometry.
    for setting in ("published", "clean"):
        assert records[setting]["short"]["viewport_width"] == 1280


def test_the_published_body_has_the_published_forms_height_and_scales_y(records):
    published, clean = records["published"]["short"], records["clean"]["short"]
    assert published["px"] == clean["px"]  # the form, after the page, moves none of it
    assert published["body"][:3] == clean["body"][:3]
    # The body now ends below the form's line, and below the last paragraph's bottom margin
    # (16 px), which no longer collapses through the body's bottom.
    extra = published["body"][3] - clean["body"][3]
    assert records["form_height"] > 0 and extra == records["form_height"] + 16
    taller = [*clean["body"][:3], clean["body"][3] + extra]
    assert published["bbox"] == normalize_boxes(np.array(clean["px"]), taller).tolist()
    assert published["bbox"][-1][3] < clean["bbox"][-1][3] == 1000


def test_real_pages_have_the_published_localizers_layout_width_and_body(records):
    """On the real pages the published localizer's body is 1249 px wide and 37 px taller than
    the page's own (measured side by side: bench/bench_geometry.py): the published geometry is
    the clean layout at 1265 px with a body 37 px taller, token for token."""
    names = [name for name in records["published"] if name.endswith(".html")]
    if not names:
        pytest.skip(SHINRA_MISSING)
    for name in names:
        published, narrow = records["published"][name], records["clean-1265"][name]
        assert published["viewport_width"] == 1265, name
        assert published["px"] == narrow["px"], name
        x0, y0, x1, y1 = published["body"]
        assert (x1 - x0, y1 - narrow["body"][3]) == (1249, 37), name
        assert [x0, y0, x1] == narrow["body"][:3], name
        assert records["clean"][name]["viewport_width"] == 1280, name


def test_the_manifest_records_the_geometry_and_a_run_keeps_to_it(unidic_dir, tmp_path):
    corpus = make_corpus(tmp_path / "corpus", pages=1)
    out = tmp_path / "out"
    clean = LocalizeConfig(geometry="clean", workers=1)
    localize_corpus(str(corpus), str(unidic_dir), out, clean, progress=False)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["geometry"] == manifest["config"]["geometry"] == "clean"
    # More pages in another geometry would mix two kinds of boxes in one directory.
    with pytest.raises(UserError, match="made with geometry='clean', not 'published'"):
        localize_corpus(str(corpus), str(unidic_dir), out, progress=False)
    # An output made before the setting existed was laid out clean: it goes on as clean
    for path in out.glob("manifest*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        record.pop("geometry", None)
        record.get("config", {}).pop("geometry", None)
        path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(UserError, match="geometry='clean', not 'published'.*localize/clean.yaml"):
        localize_corpus(str(corpus), str(unidic_dir), out, progress=False)
    localize_corpus(str(corpus), str(unidic_dir), out, clean, progress=False)
