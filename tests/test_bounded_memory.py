"""Memory that does not grow with slide pixels: thumbnails from bounded block reads, and every
array sized by what a file or an option declares checked before it is allocated.

The big slides here are sparse single-level tiled TIFFs: they declare 10^5 x 10^5 px (or
10^7) but hold a few JPEG tiles, the rest absent (byte count 0, which OpenSlide reads as
transparent), so the files are small and quick to write.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wsi_saliency.cli import app

runner = CliRunner()
TILE = 512
MPP = 0.243  # Camelyon16's level-0 microns per pixel
GIB = 2**30


def write_sparse_tiff(path: Path, side: int, tissue_tiles: tuple[slice, slice]) -> Path:
    """A single-level JPEG tiled TIFF of ``side`` x ``side`` px at ``MPP`` whose only tiles are
    H&E-like tissue at tile rows/cols ``tissue_tiles`` (and a white tile at (0, 0), which
    tifffile needs first); every other tile is absent."""
    import tifffile

    from wsi_saliency.synthetic.tissue import render_tissue

    tissue = render_tissue((TILE, TILE), MPP, None, np.random.default_rng(0), texture_seed=1)
    white = np.full((TILE, TILE, 3), 255, np.uint8)
    n = -(-side // TILE)
    rows, cols = tissue_tiles

    def tiles():
        for r in range(n):
            for c in range(n):
                if rows.start <= r < rows.stop and cols.start <= c < cols.stop:
                    yield tissue
                else:
                    yield white if (r, c) == (0, 0) else None

    res = 1e4 / MPP  # pixels per centimetre: OpenSlide then reports openslide.mpp-x/y
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(
            tiles(),
            shape=(side, side, 3),
            dtype=np.uint8,
            tile=(TILE, TILE),
            photometric="rgb",
            compression="jpeg",
            resolution=(res, res),
            resolutionunit="CENTIMETER",
        )
    return path


def _address_space(limit_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


def _run(args: list[str], limit_bytes: int, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, *args],
        preexec_fn=_address_space(limit_bytes),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def sparse_100k(tmp_path_factory) -> Path:
    # 196 x 196 tiles of 512 px: 100,352 px a side, 6 x 6 tiles of tissue (0.75 mm square)
    path = tmp_path_factory.mktemp("sparse") / "sparse100k.tif"
    write_sparse_tiff(path, 196 * TILE, (slice(90, 96), slice(100, 106)))
    assert path.stat().st_size < 8 * 2**20  # a few MB declaring 10^10 px
    return path


def test_thumbnail_and_coarse_tiles_of_a_sparse_single_level_slide_fit_2_gib(tmp_path):
    # 40,960 px a side: OpenSlide's own get_thumbnail, and its Deep Zoom tile of the whole
    # slide, would decode the level whole (6.7 GB of RGBA); block reads fit 2 GiB.
    path = write_sparse_tiff(tmp_path / "sparse40k.tif", 80 * TILE, (slice(40, 44), slice(20, 26)))
    out = tmp_path / "thumb.npy"
    code = (
        "import sys, numpy as np; from wsi_saliency.slide import open_slide;"
        "from wsi_saliency.review.deepzoom import open_deepzoom, tile_jpeg;"
        "r = open_slide(sys.argv[1]); np.save(sys.argv[2], r.get_thumbnail((1024, 1024)));"
        "dz = open_deepzoom(sys.argv[1]); assert dz.level_tiles[8] == (1, 1);"
        "assert tile_jpeg(dz, 8, 0, 0)[:2] == bytes([255, 216])"  # a JPEG of 160 x 160 px
    )
    res = _run(["-c", code, str(path), str(out)], 2 * GIB, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    thumb = np.load(out)
    assert thumb.shape == (1024, 1024, 3)  # 40 level-0 px per thumbnail px
    tissue = (thumb < 235).any(axis=2)
    rr, cc = np.nonzero(tissue)
    # tissue tiles: rows 40-43, cols 20-25 -> thumbnail rows 512-563, cols 256-332
    assert rr.min() >= 510 and rr.max() <= 565 and cc.min() >= 254 and cc.max() <= 334
    assert tissue[515:560, 260:328].mean() > 0.9
    assert (thumb[:500] == 255).all() and (thumb[600:] == 255).all()  # absent tiles: white


def test_scan_of_a_sparse_100k_single_level_slide_fits_a_6_gib_address_space(
    sparse_100k, tiny_model, tmp_path
):
    out = tmp_path / "out"
    args = ["-m", "wsi_saliency", "scan", str(sparse_100k), "--model", str(tiny_model)]
    res = _run([*args, "--out", str(out), "--quiet"], 6 * GIB, timeout=280)
    assert res.returncode == 0, res.stderr[-3000:]
    folder = out / "sparse100k"
    for name in ("scan.h5", "heatmap.png", "gradcam.tiff", "summary.json"):
        assert (folder / name).is_file(), name
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["patches_candidates"] > 60_000  # 100,352 px / (96 * 0.972 / 0.243 px)
    assert 9 <= summary["patches_scored"] <= 100  # the 3,072 px square: <= 10 x 10 patches
    import h5py

    with h5py.File(folder / "scan.h5") as f:
        coords = f["coords"][()]
        mask = f["tissue_mask"][()].astype(bool)
    assert (coords[:, 0] >= 100 * TILE - 384).all() and (coords[:, 0] < 106 * TILE).all()
    assert (coords[:, 1] >= 90 * TILE - 384).all() and (coords[:, 1] < 96 * TILE).all()
    assert 0 < mask.mean() < 0.002  # 36 of 38,416 tiles hold tissue


def _small_slide(path: Path) -> Path:
    import tifffile

    image = np.full((1024, 1024, 3), 235, np.uint8)
    image[200:800, 200:800] = (200, 120, 170)
    res = 1e4 / 0.5
    tifffile.imwrite(
        path,
        image,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        resolution=(res, res),
        resolutionunit="CENTIMETER",
    )
    return path


def test_slide_mpp_1e_9_is_refused_in_one_line_before_any_allocation(tiny_model, tmp_path):
    slide = _small_slide(tmp_path / "small.tif")
    out = tmp_path / "out"
    args = ["scan", str(slide), "--model", str(tiny_model), "--out", str(out), "--quiet"]
    res = runner.invoke(app, [*args, "--slide-mpp", "1e-9"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: --slide-mpp 1e-09 would make region reads of ")
    assert "ZiB" in lines[0] and "over the limit of" in lines[0] and "e.g. 0.25 for 40x" in lines[0]
    assert not out.exists()  # refused before any work


def test_a_header_declaring_10_million_px_a_side_is_refused_in_one_line(tiny_model, tmp_path):
    import tifffile

    side, tile = 10_000_000, 65536  # no tile present: a 0.4 MB file
    path = tmp_path / "huge.tif"
    n = (-(-side // tile)) ** 2
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(
            (b"" for _ in range(n)),
            shape=(side, side, 3),
            dtype=np.uint8,
            tile=(tile, tile),
            photometric="rgb",
            compression="jpeg",
            resolution=(1e4 / 0.25, 1e4 / 0.25),
            resolutionunit="CENTIMETER",
        )
    args = ["scan", str(path), "--model", str(tiny_model), "--out", str(tmp_path / "o"), "-q"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line
    assert line.startswith(
        "error: huge.tif (10,000,000 x 10,000,000 px at 0.25 um/px from openslide.mpp-x/y) "
        "would make a Grad-CAM heatmap of 321,504 x 321,504 cells"
    )
    assert "--no-gradcam" in line
    res = runner.invoke(app, [*args, "--no-gradcam"])
    assert res.exit_code == 2 and "would make a patch grid of 26,792 x 26,792 patches" in res.output
    # In a cohort the bad header fails its slide only: the others are scanned, exit 1.
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "slide" / "sample_slide.tif"
    res = runner.invoke(app, [*args[:1], str(sample), *args[1:], "--no-gradcam"])
    assert res.exit_code == 1, res.output
    rows = (tmp_path / "o" / "cohort.csv").read_text().splitlines()
    assert any("sample_slide.tif," in r and ",done," in r for r in rows), rows
    assert any("huge.tif," in r and ",failed," in r and "patch grid" in r for r in rows), rows


def test_memory_limit_is_set_by_the_environment(monkeypatch, tmp_path):
    from wsi_saliency.config import ScanConfig
    from wsi_saliency.errors import InputError
    from wsi_saliency.scan.budget import check_scan_memory, format_bytes, memory_limit
    from wsi_saliency.slide import open_slide, plan_resolution

    monkeypatch.setenv("WSI_SALIENCY_MAX_MEMORY", "8G")
    assert memory_limit()[0] == 8 * GIB
    with open_slide(_small_slide(tmp_path / "small.tif")) as r:
        plan = plan_resolution(r, 0.972)
        kw = dict(patch_t=96, cfg=ScanConfig(workers=2), name="small.tif")
        allocations = check_scan_memory(r.dimensions, plan, **kw)
        assert sum(a.nbytes for a in allocations) < 256 * 2**20  # an ordinary slide passes
        monkeypatch.setenv("WSI_SALIENCY_MAX_MEMORY", "1M")
        with pytest.raises(InputError, match=r"^small.tif \(1,024 x 1,024 px at 0.5 um/px"):
            check_scan_memory(r.dimensions, plan, **kw)
    monkeypatch.setenv("WSI_SALIENCY_MAX_MEMORY", "lots")
    with pytest.raises(InputError, match="WSI_SALIENCY_MAX_MEMORY='lots' is not a size"):
        memory_limit()
    assert format_bytes(475 * 2**40) == "475 TiB" and format_bytes(17.6 * GIB) == "17.6 GiB"


def test_thumbnail_is_openslides_pixel_for_pixel_from_blocks(tmp_path, monkeypatch):
    import openslide
    from test_reader import write_tiff

    import wsi_saliency.slide.reader as reader_mod

    rng = np.random.default_rng(3)
    image = np.full((1100, 1500, 3), 240, np.uint8)
    image[100:900, 200:1300] = rng.integers(60, 230, (800, 1100, 3))
    path = write_tiff(tmp_path / "pyr.tif", image, mpp=0.5, factors=(1, 4), tile=128)
    theirs = openslide.OpenSlide(str(path))
    monkeypatch.setattr(reader_mod, "THUMBNAIL_BLOCK", 96)  # many blocks, ragged edges
    with reader_mod.open_slide(path) as r:
        for size in ((100, 100), (300, 120), (700, 700), (1000, 1000), (1499, 1099)):
            ours = r.get_thumbnail(size)
            expected = np.asarray(theirs.get_thumbnail(size))
            assert np.array_equal(ours, expected), size
        # a level within 25 % coarser than asked is taken as it is (OpenSlide: level 0 whole)
        snapped = r.get_thumbnail((400, 400))
        assert snapped.shape == (275, 375, 3)
        assert np.array_equal(snapped, r.read_region((0, 0), 1, (375, 275)))


def test_thumbnail_geometry_bounds_the_intermediate_image():
    from wsi_saliency.slide.reader import thumbnail_geometry

    dims = ((100_000, 100_000),)
    g = thumbnail_geometry(dims, (1.0,), (1536, 1536))
    assert g.level == 0 and g.size_wh == (1536, 1536) and g.reduce_xy == (32, 32)  # as PIL
    g = thumbnail_geometry(dims, (1.0,), (8192, 8192), max_intermediate_px=32 * 2**20)
    assert g.reduce_xy == (12, 12)  # not 6: 16,667^2 px would be 4 times the output's pixels
    g = thumbnail_geometry(((6000, 4800), (1500, 1200)), (1.0, 4.0), (1536, 1536))
    assert (g.level, g.size_wh, g.reduce_xy) == (1, (1500, 1200), (1, 1))


def test_tissue_mask_in_bands_equals_one_band(monkeypatch):
    import wsi_saliency.slide.tissue as tissue

    rng = np.random.default_rng(0)
    image = np.full((300, 200, 3), 238, np.uint8)
    image[50:250, 40:160] = rng.integers(80, 230, (200, 120, 3))
    image[20:30, 10:190] = (40, 140, 190)  # pen
    whole = tissue.tissue_mask(image, thumb_mpp=8.0)
    monkeypatch.setattr(tissue, "_HSV_CHUNK_PX", 1000)  # 5 rows per band
    assert np.array_equal(tissue.tissue_mask(image, thumb_mpp=8.0), whole)
    assert whole.any() and not whole[20:30].all()


def test_tissue_mask_of_a_nanometre_thumbnail_keeps_its_disks_small():
    from wsi_saliency.slide.tissue import tissue_mask

    # A slide declaring 1e-9 um/px makes a thumbnail of ~1e-5 um/px: a 20 um closing would be a
    # disk of millions of pixels (30 TiB); it is clipped to the image.
    pink = np.full((3, 4, 3), (200, 120, 170), np.uint8)
    assert tissue_mask(pink, thumb_mpp=8e-6).shape == (3, 4)


def test_deep_zoom_tiles_from_blocks_are_openslides(monkeypatch):
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    from wsi_saliency.review import deepzoom

    slide = Path(__file__).resolve().parents[1] / "sample_data" / "slide" / "sample_slide.tif"
    ours = deepzoom.open_deepzoom(slide)
    theirs = DeepZoomGenerator(
        openslide.OpenSlide(str(slide)), tile_size=254, overlap=1, limit_bounds=False
    )
    monkeypatch.setattr(deepzoom, "MAX_TILE_READ_PX", 1000)  # every tile from blocks
    for level in (3, 8, 10, 11):
        cols, rows = ours.level_tiles[level]
        for address in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
            a, b = ours.get_tile(level, address), theirs.get_tile(level, address)
            assert np.array_equal(np.asarray(a), np.asarray(b)), (level, address)


def test_a_tiff_mask_is_read_at_the_level_it_needs_and_refused_when_huge(tmp_path):
    import tifffile

    from wsi_saliency.errors import InputError
    from wsi_saliency.slide.tissue import load_mask

    mask = np.zeros((4000, 6000), np.uint8)
    mask[1000:3000, 2000:5000] = 255
    pyramid = tmp_path / "pyramid_mask.tif"
    with tifffile.TiffWriter(pyramid) as tw:  # levels as OpenSlide's generic TIFFs have them
        for i, f in enumerate((1, 4, 16)):
            tw.write(mask[::f, ::f], tile=(256, 256), subfiletype=int(i > 0), compression="zlib")
    small = load_mask(pyramid, (300, 450))  # from the 1500 x 1000 level
    assert small.shape == (300, 450) and small.mean() == 0.25
    assert small[75:225, 150:375].all()
    # A sparse single-level mask declaring 40,960^2 px (1.7 G px, a 20 kB file): refused first.
    side, n = 40_960, 160
    huge = tmp_path / "huge_mask.tif"
    first = np.zeros((256, 256), np.uint8)
    with tifffile.TiffWriter(huge, bigtiff=True) as tw:
        tw.write(
            (first if i == 0 else None for i in range(n * n)),
            shape=(side, side),
            dtype=np.uint8,
            tile=(256, 256),
            compression="zlib",
        )
    with pytest.raises(InputError, match=r"huge_mask.tif is 40,960 x 40,960 px .* over "):
        load_mask(huge, (300, 300))
