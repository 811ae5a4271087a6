"""The review pages in a real browser: headless Chromium (Debian's ``chromium`` package) driven
by Playwright, from disk (``file://``, tiles written by ``review``) and through ``serve``
(tiles made on demand). Skipped when Playwright or the browser is absent:
``apt-get install chromium`` and ``pip install -e '.[dev]'`` (never ``playwright install``).
Set ``WSI_SALIENCY_CHROMIUM`` to use another Chromium binary."""

import io
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from _review_data import PATCH, SIZE_XY, make_scan_out

from wsi_saliency.review import build_review, make_server

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1100, "height": 700}
SETTLED = """(() => {
  const v = review.viewer.viewport;
  return Math.abs(v.getZoom(true) / v.getZoom(false) - 1) < 1e-6
    && v.getCenter(true).distanceTo(v.getCenter(false)) < 1e-9;
})()"""


def _chromium() -> str | None:
    for candidate in (os.environ.get("WSI_SALIENCY_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')"
    )
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set WSI_SALIENCY_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two review sites of the same scan: with tiles written (file://) and without (served)."""
    scan = tmp_path_factory.mktemp("scan")
    make_scan_out(scan, tmp_path_factory.mktemp("slides"))
    on_disk = tmp_path_factory.mktemp("site") / "disk"
    served = tmp_path_factory.mktemp("site") / "served"
    shutil.copytree(scan, on_disk)
    shutil.copytree(scan, served)
    build_review(on_disk, top_k=4, tiles=True)
    build_review(served, top_k=4, tiles=False)
    return on_disk, served


@pytest.fixture(scope="module")
def server(site):
    server = make_server(site[1], port=0, log=lambda m: None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def open_page(browser, url: str, on_response=None):
    """A new page at ``url``, with every console error and page error collected."""
    page = browser.new_page(viewport=VIEWPORT)
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    if on_response is not None:
        page.on("response", on_response)
    page.goto(url)
    return page


def wait_drawn(page):
    page.wait_for_function("window.review && window.review.ready()", timeout=15000)
    page.wait_for_timeout(150)  # one more animation frame for the vector layer


def viewer_pixels(page) -> np.ndarray:
    from PIL import Image

    png = page.locator("#viewer").screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32)


def assert_not_blank(pixels: np.ndarray) -> None:
    """Most of the viewer shows the slide (not its dark background), with contrast."""
    background = np.array([0x2B, 0x2F, 0x36], np.float32)  # #viewer-wrap in review.css
    shown = np.abs(pixels - background).max(axis=2) > 30
    assert shown.mean() > 0.5 and pixels[shown].std() > 20


def check_slide_page(page):
    """Loads without errors, shows the slide, and the overlay and gallery work."""
    wait_drawn(page)
    assert page.evaluate("review.viewer.drawer.getType()") == "canvas"
    assert page.evaluate("review.viewer.world.getItemCount()") == 3  # slide + 2 heatmaps
    with_overlay = viewer_pixels(page)
    assert_not_blank(with_overlay)
    page.check("#overlay-none")
    page.wait_for_timeout(150)
    without = viewer_pixels(page)
    changed = np.abs(with_overlay - without).max(axis=2) > 30
    assert changed.mean() > 0.1  # the heatmap covers much of the view
    assert page.locator("#legend").is_hidden()
    page.check("#overlay-gradcam")
    page.wait_for_timeout(150)
    assert np.abs(viewer_pixels(page) - without).max(axis=2).mean() > 10
    assert page.locator("#legend-ticks span").count() == 3

    before = page.evaluate("review.viewer.viewport.getBounds().width")
    page.locator("button.patch").first.click()
    page.wait_for_function(SETTLED, timeout=5000)
    bounds = page.evaluate(
        "(() => { const b = review.viewer.viewport.getBounds(true);"
        " return [b.x, b.y, b.width, b.height]; })()"
    )
    g = page.evaluate("review.data.gallery[0]")
    w = SIZE_XY[0]
    cx, cy = (g["x"] + g["size"] / 2) / w, (g["y"] + g["size"] / 2) / w
    x, y, bw, bh = bounds
    assert bw < before / 2  # zoomed in
    assert x + bw / 2 == pytest.approx(cx, abs=1e-3) and y + bh / 2 == pytest.approx(cy, abs=1e-3)
    # the patch and its context (one patch each side) fill the view's shorter side
    assert min(bw, bh) == pytest.approx(3 * g["size"] / w, rel=1e-3)
    assert g["x"] == max(page.evaluate("review.data.gallery.map(g => g.x)"))  # right: most probable
    assert not page.errors, page.errors


def test_cohort_page_lists_slides_and_failures(browser, site):
    page = open_page(browser, (site[0] / "index.html").as_uri())
    rows = page.locator("tr.slide-row")
    assert rows.count() == 1 and "small.tif" in rows.first.inner_text()
    assert page.locator("tr.failed-row").inner_text().startswith("broken.svs")
    assert page.locator("img.thumb").evaluate("img => img.naturalWidth") > 0
    page.locator("a.slide-link").click()
    page.wait_for_url("**/small/review.html")
    wait_drawn(page)
    assert not page.errors, page.errors
    page.close()


def test_slide_page_from_disk(browser, site):
    page = open_page(browser, (site[0] / "small" / "review.html").as_uri())
    check_slide_page(page)
    assert page.locator("#notice").is_hidden()
    assert page.locator("li.region").count() == 1
    page.close()


@pytest.mark.network
def test_slide_page_served_with_tiles_made_on_demand(browser, site, server):
    tiles = []

    def on_response(response):
        if "/review/slide_files/" in response.url:
            tiles.append(response.status)

    page = open_page(browser, server.url + "small/review.html", on_response)
    check_slide_page(page)
    assert tiles and set(tiles) == {200}
    assert not (site[1] / "small" / "review" / "slide_files").exists()
    page.close()


def test_slide_page_from_disk_without_tiles_shows_the_overview(browser, site):
    page = open_page(browser, (site[1] / "small" / "review.html").as_uri())
    wait_drawn(page)
    assert "were not written" in page.locator("#notice").inner_text()
    assert_not_blank(viewer_pixels(page))
    assert not page.errors, page.errors
    page.close()


def test_heatmap_cells_sit_on_their_level0_pixels(browser, site):
    """Zoomed to the edge between two cells of different probability, the colour changes where
    level-0 x = c * d falls on the screen, and each side has its cell's colour."""
    from wsi_saliency.outputs.colour import PROBABILITY_SCALE, colourise
    from wsi_saliency.outputs.h5 import read_scan_h5

    heatmap = read_scan_h5(site[0] / "small" / "scan.h5")["heatmap_prob"]
    r, c, d, w = 3, 6, PATCH, SIZE_XY[0]
    page = open_page(browser, (site[0] / "small" / "review.html").as_uri())
    wait_drawn(page)
    page.uncheck("#show-tissue")
    page.uncheck("#show-regions")
    page.fill("#opacity", "1")
    page.dispatch_event("#opacity", "input")
    page.evaluate(
        f"review.viewer.viewport.fitBounds(new OpenSeadragon.Rect("
        f"{(c - 1) * d / w}, {r * d / w}, {2 * d / w}, {d / w}), true)"
    )
    wait_drawn(page)
    edge = page.evaluate(
        f"review.viewer.viewport.pixelFromPoint(new OpenSeadragon.Point("
        f"{c * d / w}, {(r + 0.5) * d / w}), true)"
    )
    row = viewer_pixels(page)[round(edge["y"])]
    left, right = colourise(heatmap[r, c - 1 : c + 1][None], PROBABILITY_SCALE)[0, :, :3]
    x = round(edge["x"])
    np.testing.assert_allclose(row[x - 20 : x - 4], np.tile(left, (16, 1)), atol=6)
    np.testing.assert_allclose(row[x + 4 : x + 20], np.tile(right, (16, 1)), atol=6)
    assert np.abs(left.astype(float) - right).max() > 40  # two colours to tell apart
    assert not page.errors, page.errors
    page.close()
