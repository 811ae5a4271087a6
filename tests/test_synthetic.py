"""Synthetic H&E rendering and the sample PCam-style patch set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from wsi_saliency.synthetic import sample, tissue
from wsi_saliency.synthetic.patches import make_patch_dataset, write_sample_dataset
from wsi_saliency.synthetic.tissue import GLASS_RGB, render_tissue


@pytest.fixture(scope="module")
def patches():
    """200 patches with their tumour masks (module-scoped: rendered once)."""
    return make_patch_dataset(200, 11, return_masks=True)


def test_no_tensorflow_import():
    code = (
        "import sys, wsi_saliency.synthetic.sample, "
        "wsi_saliency.data.annotations; assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _package_imports(path: Path) -> set[str]:
    """Every ``wsi_saliency.*`` module a file imports (at any depth in the file)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n.startswith("wsi_saliency"))
    return found


def test_generators_import_one_way():
    """data/ never imports the generators; inside synthetic/ imports point to ``tissue``."""
    pkg = Path(__file__).resolve().parents[1] / "wsi_saliency"
    for f in sorted((pkg / "data").glob("*.py")):
        bad = {m for m in _package_imports(f) if m.startswith("wsi_saliency.synthetic")}
        assert not bad, f"{f.name} imports the generators: {bad}"
    allowed = {
        "tissue": set(),
        "patches": {"tissue"},
        "slides": {"tissue"},
        "sample": {"patches", "slides"},
    }
    for name, ok in allowed.items():
        used = {
            m.split(".")[2]
            for m in _package_imports(pkg / "synthetic" / f"{name}.py")
            if m.startswith("wsi_saliency.synthetic.")
        }
        assert used <= ok, f"synthetic/{name}.py imports {used - ok}"


def test_render_shape_dtype_determinism():
    tm = np.zeros((64, 80), dtype=bool)
    tm[10:40, 20:60] = True
    a = render_tissue((64, 80), 0.972, tm, np.random.default_rng(1), origin_xy=(5, 7))
    b = render_tissue((64, 80), 0.972, tm, np.random.default_rng(1), origin_xy=(5, 7))
    c = render_tissue((64, 80), 0.972, tm, np.random.default_rng(2), origin_xy=(5, 7))
    assert a.shape == (64, 80, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 20  # another texture seed: other tissue
    # H&E-like: pink/purple, red and blue above green on average.
    m = a.reshape(-1, 3).mean(axis=0)
    assert m[0] > m[1] + 15 and m[2] > m[1] + 15


def test_render_glass_and_bad_shapes():
    tissue = np.zeros((32, 32), dtype=bool)
    tissue[:, :16] = True
    img = render_tissue((32, 32), 0.5, None, np.random.default_rng(0), tissue_mask=tissue)
    assert (img[:, 16:] == GLASS_RGB).all()
    assert (img[:, :16] != GLASS_RGB).any(axis=-1).mean() > 0.5
    glass = render_tissue(
        (8, 8), 0.5, None, np.random.default_rng(0), tissue_mask=np.zeros((8, 8), bool)
    )
    assert (glass == GLASS_RGB).all()
    with pytest.raises(ValueError, match="tumour_mask"):
        render_tissue((8, 8), 0.5, np.zeros((4, 4), bool), np.random.default_rng(0))


def test_tiles_join_seamlessly():
    """The texture is a function of world position: two tiles equal one wide render."""
    tm = np.zeros((96, 256), dtype=bool)
    tm[30:70, :] = True  # a band crossing the seam
    kw = dict(texture_seed=42)
    rng = np.random.default_rng(0)
    whole = render_tissue((96, 256), 0.486, tm, rng, origin_xy=(1000, 2000), **kw)
    left = render_tissue((96, 128), 0.486, tm[:, :128], rng, origin_xy=(1000, 2000), **kw)
    right = render_tissue((96, 128), 0.486, tm[:, 128:], rng, origin_xy=(1128, 2000), **kw)
    np.testing.assert_array_equal(whole, np.concatenate([left, right], axis=1))


def test_physical_scale_half_resolution_looks_like_downsample():
    n = 192
    tm = np.zeros((n, n), dtype=bool)
    tm[40:150, 60:170] = True
    rng = np.random.default_rng(0)
    lo = render_tissue((n, n), 0.972, tm, rng, origin_xy=(300, 400), texture_seed=9)
    hi = render_tissue(
        (2 * n, 2 * n),
        0.486,
        np.kron(tm, np.ones((2, 2), bool)),
        rng,
        origin_xy=(600, 800),
        texture_seed=9,
    )
    down = hi.astype(np.float64).reshape(n, 2, n, 2, 3).mean(axis=(1, 3))
    other = render_tissue((n, n), 0.972, tm, rng, origin_xy=(300, 400), texture_seed=10)
    same = np.corrcoef(lo.ravel(), down.ravel())[0, 1]
    diff = np.corrcoef(lo.ravel(), other.ravel().astype(np.float64))[0, 1]
    assert same > 0.8, same
    assert diff < 0.3, diff


def test_nuclear_morphology_differs_by_class():
    """Tumour nuclei are about twice the radius of lymphocytes (sizes in microns)."""
    mpp = 0.5
    lymph = tissue._stamps(0, mpp, 3)
    tumour = tissue._stamps(1, mpp, 3)
    r_lymph = np.sqrt((lymph > 0.15).sum(axis=(1, 2)) * mpp**2 / np.pi)
    r_tumour = np.sqrt((tumour > 0.15).sum(axis=(1, 2)) * mpp**2 / np.pi)
    assert 3.2 < np.median(r_lymph) < 4.8
    assert 5.8 < np.median(r_tumour) < 9.5
    # Vesicular tumour nuclei are paler on average; lymphocytes are dense throughout.
    assert tumour[tumour > 0.15].mean() < 0.75 * lymph[lymph > 0.15].mean()

    # Tumour outlines are irregular: the outline radius varies more (coefficient of variation).
    def outline_cv(stamps: np.ndarray) -> float:
        size = stamps.shape[1]
        yy, xx = np.mgrid[0:size, 0:size] - size // 2
        cvs = []
        for st in stamps:
            inside = st > 0.15
            pad = np.pad(inside, 1)
            edge = inside & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
            r = np.hypot(yy[edge], xx[edge])
            cvs.append(r.std() / r.mean())
        return float(np.median(cvs))

    assert outline_cv(tumour) > 1.5 * outline_cv(lymph)


def test_patch_dataset_labels_by_construction(patches):
    x, y, m = patches
    assert x.shape == (200, 96, 96, 3) and x.dtype == np.uint8
    assert y.shape == (200,) and y.dtype == np.uint8
    assert m.shape == (200, 96, 96) and m.dtype == bool
    assert int(y.sum()) == 100  # balanced
    centre = m[:, 32:64, 32:64]
    np.testing.assert_array_equal(y.astype(bool), centre.any(axis=(1, 2)))
    # Hard cases exist: tumour only outside the centre of a negative, little tumour in a positive.
    assert (m[y == 0].any(axis=(1, 2))).sum() >= 20
    small = centre[y == 1].sum(axis=(1, 2)) < 0.15 * 32 * 32
    assert small.sum() >= 10


def test_patch_colour_means_are_close(patches):
    """Classes differ in morphology, not in a global colour shift."""
    x, y, _ = patches
    mean_pos = x[y == 1].reshape(-1, 3).mean(axis=0)
    mean_neg = x[y == 0].reshape(-1, 3).mean(axis=0)
    assert np.abs(mean_pos - mean_neg).max() < 12, (mean_pos, mean_neg)


def test_patch_dataset_deterministic():
    a = make_patch_dataset(24, 5)
    b = make_patch_dataset(24, 5)
    c = make_patch_dataset(24, 6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    x, y = make_patch_dataset(7, 1)
    assert len(x) == 7 and int(y.sum()) == 3


def test_write_sample_dataset_pcam_layout(tmp_path):
    write_sample_dataset(tmp_path, n_train=16, n_valid=8, n_test=6, seed=2)
    for split, n, k in (("train", 16, 1), ("valid", 8, 2), ("test", 6, 3)):
        with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{split}_x.h5", "r") as f:
            x = f["x"][:]
        with h5py.File(tmp_path / f"camelyonpatch_level_2_split_{split}_y.h5", "r") as f:
            y = f["y"][:]
        assert x.shape == (n, 96, 96, 3) and x.dtype == np.uint8
        assert y.shape == (n, 1, 1, 1)
        ex, ey = make_patch_dataset(n, 2 * 1000 + k)
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y.reshape(-1), ey)


def test_main_writes_patches(tmp_path, capsys):
    rc = sample.main(
        [str(tmp_path), "--no-slide", "--n-train", "4", "--n-valid", "2", "--n-test", "2"]
    )
    assert rc == 0
    names = sorted(p.name for p in (tmp_path / "pcam").iterdir())
    assert names == sorted(
        f"camelyonpatch_level_2_split_{s}_{a}.h5"
        for s in ("train", "valid", "test")
        for a in ("x", "y")
    )
    assert "patches" in capsys.readouterr().out


def test_committed_sample_patches_regenerate():
    """sample_data/pcam is what ``python -m wsi_saliency.synthetic sample_data`` writes."""
    folder = Path(__file__).resolve().parents[1] / "sample_data" / "pcam"
    xf = folder / "camelyonpatch_level_2_split_valid_x.h5"
    if not xf.is_file():
        pytest.skip("sample_data/pcam not generated")
    with h5py.File(xf, "r") as f:
        x = f["x"][:]
    with h5py.File(folder / "camelyonpatch_level_2_split_valid_y.h5", "r") as f:
        y = f["y"][:].reshape(-1)
    ex, ey = make_patch_dataset(len(x), 0 * 1000 + 2)  # seed 0, split valid
    np.testing.assert_array_equal(y, ey)
    # Exact on this platform; a tolerance in case float32 exp/sin differ in the last bit.
    assert np.abs(x.astype(int) - ex).mean() < 0.01
