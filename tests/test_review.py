"""`wsi-saliency review` / `serve` without a browser: the files written, the page data in
level-0 pixels, the server's answers (tiles on demand, 404s, no escape from OUT), bad input.
The pages in a real browser: tests/test_review_browser.py."""

import html
import http.client
import json
import re
import shutil
import threading
from importlib import resources

import numpy as np
import pytest
from _review_data import MASK_DS, PATCH, SIZE_XY, make_scan_out
from typer.testing import CliRunner

from wsi_saliency.cli import app
from wsi_saliency.review import build_review, layers, make_server
from wsi_saliency.review.server import ReviewServer

runner = CliRunner()


def page_data(page) -> dict:
    text = page.read_text()
    match = re.search(
        r'<script id="review-data" type="application/json">(.*?)</script>', text, re.S
    )
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def scan_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("scan")
    info = make_scan_out(out, tmp_path_factory.mktemp("slides"))
    return out, info


@pytest.fixture
def fresh_out(scan_out, tmp_path):
    """A copy of the scan folder that a test may change."""
    out = tmp_path / "out"
    shutil.copytree(scan_out[0], out)
    return out


def test_review_writes_cohort_page_and_slide_page(fresh_out, scan_out):
    info = scan_out[1]
    site = build_review(fresh_out, top_k=5)
    assert site.index == fresh_out / "index.html" and site.index.is_file()
    [page] = site.pages
    assert page.page == fresh_out / "small" / "review.html" and page.tiles_written
    assert page.gallery == 5 and page.regions == 1 and not page.warnings
    [failed] = site.failed
    assert failed.stem == "broken" and "not a supported slide format" in failed.error
    index = site.index.read_text()
    assert 'href="small/review.html"' in index and "small/review/thumb.jpg" in index
    assert "broken.svs" in index and "not a supported slide format" in index
    assert (fresh_out / "_review_static" / "openseadragon" / "openseadragon.min.js").is_file()
    assert (fresh_out / "_review_static" / "openseadragon" / "LICENSE.txt").is_file()

    assets = fresh_out / "small" / "review"
    dzi = (assets / "slide.dzi").read_text()
    assert 'Width="1536"' in dzi and 'Height="1024"' in dzi and 'TileSize="254"' in dzi
    assert (assets / "slide_files" / "11" / "0_0.jpeg").is_file()  # 2^11 >= 1536: full size
    assert not list(assets.glob(".*partial"))

    data = page_data(page.page)
    assert data["slide"]["width"] == SIZE_XY[0] and data["base"]["tiles_written"]
    assert data["base"]["dzi"]["Image"]["Url"] == "review/slide_files/"
    prob, cam = data["overlays"]
    heatmap = info["heatmap"]
    # the overlay covers exactly the heatmap's cells, in level-0 pixels
    assert prob["l0_width"] == heatmap.shape[1] * PATCH
    assert prob["l0_height"] == heatmap.shape[0] * PATCH
    assert cam["l0_width"] == heatmap.shape[1] * PATCH  # 8 Grad-CAM cells per patch, 16 px each
    assert [t["text"] for t in prob["legend"]["ticks"]] == ["0", "0.25", "0.5", "0.75", "1"]
    from PIL import Image

    rgba = np.asarray(Image.open(assets / "prob.png"))
    scale = rgba.shape[1] / heatmap.shape[1]
    assert rgba.shape[0] / heatmap.shape[0] == scale  # square cells stay square
    assert (rgba[..., 3] == 0).sum() == np.isnan(heatmap).sum() * scale**2
    # the gallery: most probable first, crops at the patches' level-0 positions
    gallery = data["gallery"]
    probs = [g["prob"] for g in gallery]
    assert probs == sorted(probs, reverse=True) and probs[0] == pytest.approx(info["prob"].max())
    for g in gallery:
        i = int(np.flatnonzero((info["coords"] == (g["x"], g["y"])).all(axis=1))[0])
        assert info["prob"][i] == pytest.approx(g["prob"]) and g["size"] == PATCH
        assert (fresh_out / "small" / g["crop"]).is_file()
        assert (fresh_out / "small" / g["cam"]).is_file()
    # the tissue outline: the mask's box, in level-0 pixels (pixel centres)
    [ring] = data["tissue"]
    xy = np.asarray(ring)
    assert xy[:, 0].min() == pytest.approx(120 + MASK_DS / 2, abs=MASK_DS)
    assert xy[:, 0].max() == pytest.approx(1400 - MASK_DS / 2, abs=MASK_DS)
    [region] = data["regions"]
    assert region["color"] == "#ff00ff" and region["bbox"] == [1152, 256, 1408, 640]
    assert region["prob_max"] == 0.95


def test_cohort_page_sorted_by_score_and_without_regions(fresh_out):
    from _review_data import write_scan

    write_scan(fresh_out / "high", scan_out_slide(fresh_out), score_shift=0.5)
    (fresh_out / "small" / "regions.geojson").unlink()
    site = build_review(fresh_out, tiles=False, top_k=0)
    assert [p.stem for p in site.pages] == ["high", "small"]  # 'high' is not in cohort.csv
    index = site.index.read_text()
    assert index.index('data-stem="high"') < index.index('data-stem="small"')
    page = site.pages[1]
    assert page.regions == 0 and page.gallery == 0 and not page.tiles_written
    assert not (fresh_out / "small" / "review" / "slide_files").exists()
    data = page_data(page.page)
    assert data["regions"] == [] and data["base"]["overview"] == "review/overview.jpg"
    result = runner.invoke(app, ["review", str(fresh_out), "--no-tiles", "--top-k", "0"])
    assert result.exit_code == 0 and "2 slide pages, 1 failed" in result.stdout, result.output


def scan_out_slide(out):
    return json.loads((out / "small" / "summary.json").read_text())["slide"]


def test_missing_slide_file_is_a_warning_and_slides_option_finds_it(fresh_out, tmp_path):
    from _review_data import write_scan

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(scan_out_slide(fresh_out), moved / "gone.tif")
    write_scan(fresh_out / "gone", tmp_path / "nowhere" / "gone.tif")
    site = build_review(fresh_out, tiles=False)
    gone = next(p for p in site.pages if p.stem == "gone")
    assert any("slide not found" in w for w in gone.warnings)
    data = page_data(gone.page)
    assert data["base"]["overview"] is None and not data["slide"]["available"]
    assert data["overlays"] and data["gallery"]  # heatmaps and Grad-CAM still shown
    site = build_review(fresh_out, tiles=False, slides_dir=moved)
    gone = next(p for p in site.pages if p.stem == "gone")
    assert not gone.warnings and gone.slide == str(moved / "gone.tif")


def test_unreadable_scan_h5_fails_that_slide_only(fresh_out):
    from _review_data import write_scan

    write_scan(fresh_out / "bad", scan_out_slide(fresh_out))
    (fresh_out / "bad" / "scan.h5").write_bytes(b"not hdf5")
    site = build_review(fresh_out, tiles=False)
    assert [p.stem for p in site.pages] == ["small"]
    [bad] = site.unbuilt
    assert bad in site.failed and bad.stem == "bad"
    assert "cannot read" in bad.error and "scan.h5" in bad.error and "--overwrite" in bad.error
    assert "cannot read" in site.index.read_text()
    result = runner.invoke(app, ["review", str(fresh_out), "--no-tiles"])
    assert result.exit_code == 1 and "error: cannot read" in result.output


def _summary_with(**fields) -> bytes:
    summary = {"slide": "bad.tif", "score_max": 0.5, "score_top10_mean": 0.4}
    summary.update(patches_scored=7, area_above_threshold_mm2=0.1)
    return json.dumps({**summary, **fields}).encode()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff\xfe{}", "summary.json: not valid UTF-8"),
        (b"[1, 2]", "summary.json: expected a JSON object, got a list"),
        (b'"done"', "summary.json: expected a JSON object, got a string"),
        (b"scan finished\n", "summary.json: not valid JSON"),
        (b"", "summary.json: not valid JSON"),
        (b"[" * 100_000, "summary.json: not valid JSON"),  # nested too deeply for the parser
        (_summary_with(patches_scored="abc"), "'patches_scored' must be an integer, got 'abc'"),
        (_summary_with(patches_scored=7.5), "'patches_scored' must be an integer, got 7.5"),
        (_summary_with(patches_scored=True), "'patches_scored' must be an integer, got true"),
        (_summary_with(patches_scored=-1), "'patches_scored' must be 0 or more, got -1"),
        (_summary_with(score_max="high"), "'score_max' must be a number, got 'high'"),
        (_summary_with(score_max=[1]), "'score_max' must be a number, got a list"),
        (b'{"score_max": NaN}', "'score_max' must be a finite number, got NaN"),
        (_summary_with(score_top10_mean={}), "'score_top10_mean' must be a number, got an object"),
        (_summary_with(area_above_threshold_mm2="1"), "'area_above_threshold_mm2' must be a"),
        (_summary_with(slide=3), "'slide' must be a string, got 3"),
    ],
    ids=lambda v: v[:24].decode("latin-1") if isinstance(v, bytes) else None,
)
def test_malformed_summary_fails_that_slide_only(fresh_out, content, reason):
    from _review_data import write_scan

    write_scan(fresh_out / "bad", scan_out_slide(fresh_out))
    (fresh_out / "bad" / "summary.json").write_bytes(content)
    site = build_review(fresh_out, tiles=False, top_k=1)
    assert [p.stem for p in site.pages] == ["small"]
    assert (fresh_out / "small" / "review.html").is_file()
    [bad] = site.unbuilt
    assert bad in site.failed and bad.stem == "bad" and bad.status == "failed"
    assert reason in bad.error and str(fresh_out / "bad" / "summary.json") in bad.error
    assert "\n" not in bad.error and "--overwrite" in bad.error
    assert not (fresh_out / "bad" / "review.html").exists()
    index = site.index.read_text()
    failures = index[index.index("<section id=failed>") :]
    assert 'data-stem="bad"' in failures and html.escape(reason) in failures
    assert 'data-stem="broken"' in failures  # the slide that failed during the scan
    assert "1 slide reviewed, 2 failed" in index


def test_cli_review_writes_the_site_and_exits_1_on_malformed_summaries(fresh_out):
    from _review_data import write_scan

    for stem, content in (("bad1", b"[]"), ("bad2", _summary_with(patches_scored="abc"))):
        write_scan(fresh_out / stem, scan_out_slide(fresh_out))
        (fresh_out / stem / "summary.json").write_bytes(content)
    result = runner.invoke(app, ["review", str(fresh_out), "--no-tiles"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines), lines
    assert "bad1" in lines[0] and "summary.json: expected a JSON object, got a list" in lines[0]
    assert "bad2" in lines[1] and "'patches_scored' must be an integer, got 'abc'" in lines[1]
    assert "1 slide page, 3 failed" in result.stdout
    index = (fresh_out / "index.html").read_text()
    assert 'data-stem="bad1"' in index and 'data-stem="bad2"' in index
    assert (fresh_out / "small" / "review.html").is_file()


def test_cli_serve_writes_pages_despite_a_malformed_summary(fresh_out, monkeypatch):
    from _review_data import write_scan

    def stop(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ReviewServer, "serve_forever", stop)
    write_scan(fresh_out / "bad", scan_out_slide(fresh_out))
    (fresh_out / "bad" / "summary.json").write_text("scan finished")
    result = runner.invoke(app, ["serve", str(fresh_out), "--port", "0"])
    assert result.exit_code == 0, result.output  # serves the pages it could write
    assert "Traceback" not in result.output
    assert "error: " in result.stderr and "summary.json: not valid JSON" in result.stderr
    assert re.search(r"serving .* at http://127\.0\.0\.1:\d+/", result.stdout)
    index = (fresh_out / "index.html").read_text()
    assert 'data-stem="bad"' in index and "small/review.html" in index


# -- layers -----------------------------------------------------------------------------------


def test_heatmap_raster_extent_reduction_and_clear_nan():
    from wsi_saliency.outputs.colour import PROBABILITY_SCALE

    hm = np.full((3, 5), 0.5, np.float32)
    hm[0, 0] = np.nan
    small = layers.heatmap_raster(hm, 100.0, PROBABILITY_SCALE, min_side=50)
    assert small.rgba.shape == (30, 50, 4) and small.l0_extent_wh == (500.0, 300.0)
    assert (small.rgba[:10, :10, 3] == 0).all() and (small.rgba[10:, :, 3] == 255).all()
    big = layers.heatmap_raster(
        np.ones((10, 9), np.float32), 4.0, PROBABILITY_SCALE, max_side=4, min_side=1
    )
    # 3x3 blocks: 4 x 3 cells of 12 level-0 px, the padding adds to the extent
    assert big.rgba.shape == (4, 3, 4) and big.l0_extent_wh == (36.0, 48.0)


def test_top_patches_skips_neighbours_of_a_chosen_patch():
    xy = np.array([[0, 0], [32, 0], [200, 0], [0, 100]], float)
    prob = np.array([0.9, 0.8, 0.7, np.nan])
    assert layers.top_patches(xy, prob, 96.0, 5) == [0, 2]
    assert layers.top_patches(xy, prob, 96.0, 1) == [0]
    assert layers.top_patches(xy, prob, 96.0, 0) == []


def test_read_regions_multipolygon_colours_and_bad_files(tmp_path):
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {
                    "type": "MultiPolygon",
                    "coordinates": [
                        [[[0, 0], [10, 0], [10, 10], [0, 0]]],
                        [[[20, 20], [30, 20], [30, 40], [20, 20]]],
                    ],
                },
                "properties": {"classification": {"name": "Tumor", "color": -65536}},
            },
            {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}},
        ],
    }
    path = tmp_path / "r.geojson"
    path.write_text(json.dumps(doc))
    regions = layers.read_regions(path)
    assert len(regions) == 2 and regions[1]["bbox"] == [20, 20, 30, 40]
    assert regions[0]["color"] == "#ff0000" and regions[0]["prob_max"] is None
    assert regions[1]["label_xy"] == [20, 20]
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="FeatureCollection"):
        layers.read_regions(path)


def test_tissue_outline_of_a_box_in_level0_pixels():
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 3:9] = 1
    [ring] = layers.tissue_outlines(mask, (4.0, 8.0))
    xy = np.asarray(ring)
    # pixel centres of columns 3..8 and rows 2..4, give or take half a pixel at the contour
    assert 3.5 * 4 - 2 <= xy[:, 0].min() <= 3.5 * 4 and 8.5 * 4 <= xy[:, 0].max() <= 8.5 * 4 + 2
    assert 2.5 * 8 - 4 <= xy[:, 1].min() <= 2.5 * 8 and 4.5 * 8 <= xy[:, 1].max() <= 4.5 * 8 + 4
    assert layers.tissue_outlines(np.zeros((4, 4)), (1.0, 1.0)) == []


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_review_and_bad_input(fresh_out, tmp_path):
    result = runner.invoke(app, ["review", str(fresh_out), "--no-tiles", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    assert "1 slide page, 1 failed" in result.output and "wsi-saliency serve" in result.output
    assert page_data(fresh_out / "small" / "review.html")["gallery"][2]["rank"] == 3

    empty = tmp_path / "empty"
    empty.mkdir()
    for args, words in (
        ([str(tmp_path / "absent")], "is not a folder"),
        ([str(empty)], "holds no scan outputs"),
        ([str(fresh_out), "--top-k", "-1"], "--top-k"),
        ([str(fresh_out), "--slides", str(tmp_path / "nope")], "--slides"),
    ):
        bad = runner.invoke(app, ["review", *args])
        assert bad.exit_code == 2, (args, bad.output)
        assert bad.output.startswith("error: ") and bad.output.count("\n") == 1
        assert words in bad.output


def test_cli_serve_writes_pages_when_missing_and_reports_its_url(fresh_out, monkeypatch):
    def stop(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ReviewServer, "serve_forever", stop)
    result = runner.invoke(app, ["serve", str(fresh_out), "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "writing them (without tiles)" in result.output
    assert re.search(r"serving .* at http://127\.0\.0\.1:\d+/", result.output)
    assert (fresh_out / "index.html").is_file()
    assert not (fresh_out / "small" / "review" / "slide_files").exists()


@pytest.mark.network
def test_cli_serve_bad_folder_and_busy_port(tmp_path, fresh_out):
    bad = runner.invoke(app, ["serve", str(tmp_path / "absent")])
    assert bad.exit_code == 2 and "is not a folder" in bad.output
    build_review(fresh_out, tiles=False)
    with make_server(fresh_out, port=0, log=lambda m: None) as server:
        busy = runner.invoke(app, ["serve", str(fresh_out), "--port", str(server.server_port)])
    assert busy.exit_code == 2 and "cannot listen" in busy.output and "--port" in busy.output


# -- the server -------------------------------------------------------------------------------


@pytest.fixture
def served(fresh_out, tmp_path):
    build_review(fresh_out, tiles=False, top_k=2)
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (fresh_out / "small" / "link").symlink_to(secret)
    logged: list[str] = []
    server = make_server(fresh_out, port=0, log=logged.append)
    server.logged = logged  # what the server reported, for the tests
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, fresh_out
    server.shutdown()
    server.server_close()


def get(server, path, method="GET"):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request(method, path)  # sent as is: no client-side normalising of '..'
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, response.getheader("Content-Type"), body


@pytest.mark.network
def test_server_serves_pages_and_makes_tiles_on_demand(served):
    server, out = served
    status, kind, body = get(server, "/")
    assert status == 200 and kind.startswith("text/html") and b"small/review.html" in body
    status, kind, body = get(server, "/small/review.html")
    assert status == 200 and b"review-data" in body
    status, kind, body = get(server, "/_review_static/openseadragon/openseadragon.min.js")
    assert status == 200 and kind.startswith("text/javascript")
    status, kind, body = get(server, "/small/review/slide.dzi")
    assert status == 200 and kind == "application/xml" and b'Width="1536"' in body
    status, kind, body = get(server, "/small/review/slide_files/11/1_2.jpeg")
    assert status == 200 and kind == "image/jpeg" and body[:2] == b"\xff\xd8"
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(body)).size == (256, 256)  # 254 + overlap on both sides
    assert get(server, "/small/review/slide_files/11/0_0.jpeg", "HEAD")[0] == 200
    assert not (out / "small" / "review" / "slide_files").exists()  # nothing written


@pytest.mark.network
@pytest.mark.parametrize(
    "path",
    [
        "/small/review/slide_files/11/99_0.jpeg",  # outside the pyramid
        "/small/review/slide_files/12/0_0.jpeg",
        "/small/review/slide_files/x/0_0.jpeg",
        "/small/review/other.dzi",
        "/nothing/review/slide.dzi",
        "/../secret.txt",
        "/small/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/small/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/small/..%5c..%5csecret.txt",
        "/small/link",  # a symlink out of OUT
        "/.write-test",
        "/small/",
    ],
)
def test_server_404s_bad_paths_and_never_leaves_out(served, path):
    status, _, body = get(served[0], path)
    assert status == 404 and b"private" not in body


LONG = "a" * 256


@pytest.mark.network
@pytest.mark.parametrize(
    "path",
    [
        f"/{LONG}",
        f"/{'a' * 255}",  # the longest file name Linux allows: not there, a plain 404
        f"/small/{LONG}",
        f"/small/review/{LONG}.png",
        f"/{LONG}/review/slide.dzi",
        f"/small/review/slide_files/11/{'1' * 300}_0.jpeg",  # a tile path, never made
        "/" + "%C3%A9" * 128,  # 128 characters, 256 bytes
        "/" + "/".join(["a" * 200] * 25),  # each name fits, the whole path does not
    ],
    ids=lambda p: f"{p[:20]}...({len(p)})",
)
def test_server_404s_overlong_names_without_traceback(served, path, capsys):
    server, _ = served
    for method in ("GET", "HEAD"):
        status, kind, body = get(server, path, method)
        assert status == 404 and kind.startswith("text/plain"), (method, status)
    assert get(server, "/small/review.html")[0] == 200  # still serving
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Errno" not in err, err
    assert server.logged == []


def test_static_files_are_package_data():
    static = resources.files("wsi_saliency.review").joinpath("static")
    for name in (
        "review.js",
        "review.css",
        "openseadragon/openseadragon.min.js",
        "openseadragon/LICENSE.txt",
        "openseadragon/images/home_rest.png",
    ):
        assert static.joinpath(name).is_file(), name
    templates = resources.files("wsi_saliency.review").joinpath("templates")
    assert templates.joinpath("index.html").is_file() and templates.joinpath("slide.html").is_file()


def test_review_of_a_real_scan(tmp_path):
    """A tiny untrained model scans the synthetic slide; the page matches scan.h5."""
    from _review_data import write_slide

    from wsi_saliency.config import ModelConfig
    from wsi_saliency.model.build import build_model
    from wsi_saliency.model.io import ModelCard, save_model
    from wsi_saliency.outputs.h5 import read_scan_h5

    cfg = ModelConfig(backbone="tiny", weights="none", patch_mpp=1.0)
    model = save_model(build_model(cfg), ModelCard.for_config(cfg), tmp_path / "model.keras")
    slide = write_slide(tmp_path / "slides" / "real.tif")
    out = tmp_path / "out"
    scan = runner.invoke(app, ["scan", str(slide), "--model", str(model), "--out", str(out), "-q"])
    assert scan.exit_code == 0, scan.output
    result = runner.invoke(app, ["review", str(out), "--top-k", "4"])
    assert result.exit_code == 0, result.output
    h5 = read_scan_h5(out / "real" / "scan.h5")
    data = page_data(out / "real" / "review.html")
    assert (
        data["overlays"][0]["l0_width"]
        == h5["heatmap_prob"].shape[1] * h5["heatmap_prob_downsample"]
    )
    assert (
        data["overlays"][1]["l0_width"]
        == h5["heatmap_gradcam"].shape[1] * h5["heatmap_gradcam_downsample"]
    )
    top = int(np.argmax(h5["prob"]))
    assert (data["gallery"][0]["x"], data["gallery"][0]["y"]) == tuple(h5["coords"][top])
    assert data["base"]["tiles_written"] and (out / "index.html").is_file()
