"""Slide readers: the in-memory twin, OpenSlide on a synthetic tiled TIFF and on CMU-1."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from wsi_saliency.errors import InputError, SlideError
from wsi_saliency.slide.reader import ArrayReader, OpenSlideReader, composite_on_white, open_slide


def _image(h: int = 64, w: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 2 % 256, yy * 3 % 256, (xx + yy) % 256], -1).astype(np.uint8)


def write_tiff(path: Path, image: np.ndarray, mpp: float, factors=(1, 2, 4), tile=128) -> Path:
    """A JPEG tiled pyramidal TIFF that OpenSlide reads as generic-tiff with mpp."""
    import tifffile

    with tifffile.TiffWriter(path) as tw:
        for i, f in enumerate(factors):
            res = 1e4 / (mpp * f)  # pixels per centimetre
            tw.write(
                image[::f, ::f],
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 95},
                tile=(tile, tile),
                subfiletype=0 if i == 0 else 1,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
            )
    return path


def test_composite_on_white() -> None:
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, :3] = 100
    rgba[0, :, 3] = (0, 255, 128)
    out = composite_on_white(rgba)
    assert out.shape == (1, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [255] * 3
    assert out[0, 1].tolist() == [100] * 3
    assert abs(int(out[0, 2, 0]) - round(100 * 128 / 255 + 255 * 127 / 255)) <= 1


def test_array_reader_pyramid_and_reads() -> None:
    img = _image()
    with ArrayReader(img, 0.25, levels=(1, 2, 4), name="syn") as r:
        assert r.dimensions == (96, 64)
        assert r.level_count == 3
        assert r.level_dimensions == ((96, 64), (48, 32), (24, 16))
        assert r.level_downsamples == (1.0, 2.0, 4.0)
        assert r.mpp == (0.25, 0.25)
        assert r.objective_power is None
        assert np.array_equal(r.read_region((10, 5), 0, (7, 4)), img[5:9, 10:17])
        lv1 = r.read_region((20, 10), 1, (3, 2))  # level-0 (20, 10) -> level-1 (10, 5)
        expect = img[10:14, 20:26].reshape(2, 2, 3, 2, 3).mean(axis=(1, 3)) + 0.5
        assert np.array_equal(lv1, expect.astype(np.uint8))
        # out of bounds reads are white
        edge = r.read_region((90, -2), 0, (10, 4))
        assert edge.shape == (4, 10, 3)
        assert (edge[:2] == 255).all() and (edge[:, 6:] == 255).all()
        assert np.array_equal(edge[2:, :6], img[0:2, 90:96])
        thumb = r.get_thumbnail((32, 32))
        assert thumb.shape == (21, 32, 3) and thumb.dtype == np.uint8
    assert "syn" in repr(r)


def test_array_reader_metadata_and_validation() -> None:
    r = ArrayReader(_image(), None, objective_power=20)
    assert r.mpp is None and r.objective_power == 20.0
    assert ArrayReader(_image(), (0.5, 0.52)).mpp == (0.5, 0.52)
    with pytest.raises(InputError):
        ArrayReader(np.zeros((8, 8, 3), np.float32), 0.5)
    with pytest.raises(InputError):
        ArrayReader(_image(), 0.5, levels=(2, 4))


def test_pure_import_does_not_load_openslide() -> None:
    import subprocess

    code = (
        "import sys, wsi_saliency.slide, wsi_saliency.scan;"
        "import wsi_saliency.slide.tissue, wsi_saliency.slide.loader;"
        "bad = [m for m in ('openslide', 'tensorflow') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_openslide_reader_tiff(tmp_path: Path) -> None:
    img = np.full((300, 400, 3), (200, 120, 170), np.uint8)
    path = write_tiff(tmp_path / "syn.tif", img, mpp=0.25)
    with open_slide(path) as r:
        assert isinstance(r, OpenSlideReader)
        assert r.dimensions == (400, 300)
        assert r.level_downsamples == (1.0, 2.0, 4.0)
        assert r.mpp == pytest.approx((0.25, 0.25))
        region = r.read_region((390, 290), 0, (20, 20))
        assert region.shape == (20, 20, 3) and region.dtype == np.uint8
        assert (region[:10, :10].astype(int) < 250).all()  # slide content (JPEG rings at its edge)
        inner = r.read_region((100, 100), 0, (8, 8)).astype(int)
        assert np.abs(inner - (200, 120, 170)).max() <= 4
        assert (region[10:, :] == 255).all() and (region[:, 10:] == 255).all()
        outside = r.read_region((-50, -50), 0, (30, 30))
        assert outside.shape == (30, 30, 3) and (outside == 255).all()
        left = r.read_region((-8, 100), 0, (16, 4))
        assert (left[:, :8] == 255).all() and np.abs(
            left[:, 12:].astype(int) - (200, 120, 170)
        ).max() <= 6
        lv2 = r.read_region((0, 0), 2, (100, 75))
        assert lv2.shape == (75, 100, 3)
        thumb = r.get_thumbnail((100, 100))
        assert thumb.shape == (75, 100, 3)
    r.close()  # idempotent
    with pytest.raises(SlideError, match="closed"):
        r.read_region((0, 0), 0, (1, 1))


@pytest.mark.parametrize("content", [b"", b"not a slide at all" * 100, b"II*\x00garbage"])
def test_openslide_reader_bad_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.svs"
    path.write_bytes(content)
    with pytest.raises(SlideError) as info:
        OpenSlideReader(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg


def test_openslide_reader_missing(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "nope.svs")


@pytest.mark.realdata
def test_cmu_slide(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as r:
        assert r.dimensions == (2220, 2967)
        assert r.level_count == 1
        assert r.mpp == pytest.approx((0.499, 0.499))
        assert r.objective_power == 20.0
        region = r.read_region((1000, 2000), 0, (64, 48))
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8
        corner = r.read_region((2200, 2950), 0, (40, 40))
        assert (corner[20:, :] == 255).all()
        thumb = r.get_thumbnail((139, 186))
        assert thumb.shape == (186, 139, 3)
