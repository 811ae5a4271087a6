"""A sample PatchCamelyon-style patch set cut from synthetic tissue fields.

Patches are 96x96 px at 0.972 um/px (PCam's 10x), labelled exactly like PCam: 1 iff the centre
32x32 holds at least one tumour-mask pixel. Arrays are indexed ``[row, col]``. Nothing here
imports TensorFlow.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from wsi_saliency.data.annotations import rasterize
from wsi_saliency.synthetic.tissue import (
    CENTRE_SIZE,
    PATCH_SIZE,
    PCAM_MPP,
    random_blob_polygon,
    render_tissue,
)

__all__ = ["make_patch_dataset", "write_sample_dataset"]

_FIELD = 640  # field side in pixels at PCam mpp


def _field_masks(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Tumour mask (bool [size, size]) with 1-4 blobs of varied size, and maybe a glass edge."""
    polys = []
    for _ in range(int(rng.integers(1, 5))):
        kind = rng.random()
        if kind < 0.20:
            radius = rng.uniform(8.0, 22.0)  # a few cells: hard, small positives
        elif kind < 0.60:
            radius = rng.uniform(25.0, 90.0)
        else:
            radius = rng.uniform(90.0, 280.0)
        c = rng.uniform(0.1 * size, 0.9 * size, 2)
        polys.append(
            random_blob_polygon(rng, (c[0], c[1]), radius, irregularity=rng.uniform(0.2, 0.6))
        )
    tumour = rasterize(polys, (size, size), 1.0)
    tissue = None
    if rng.random() < 0.12:
        # Tissue edge on glass: a wavy line, glass on one side.
        ang = rng.uniform(0, 2 * math.pi)
        off = rng.uniform(0.15, 0.45) * size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        d = (xx - size / 2) * math.cos(ang) + (yy - size / 2) * math.sin(ang)
        along = -(xx - size / 2) * math.sin(ang) + (yy - size / 2) * math.cos(ang)
        d += 14.0 * np.sin(along / rng.uniform(25, 60) + rng.uniform(0, 6.3))
        tissue = d < off
    return tumour, tissue


def _window_sums(mask: np.ndarray, k: int) -> np.ndarray:
    """Sum of ``mask`` over every k x k window, [H-k+1, W-k+1] (top-left indexed)."""
    ii = np.pad(mask.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return ii[k:, k:] - ii[:-k, k:] - ii[k:, :-k] + ii[:-k, :-k]


def make_patch_dataset(
    n: int, rng_seed: int, *, return_masks: bool = False
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A balanced PatchCamelyon-like patch set cut from synthetic fields at 0.972 mpp.

    Fields of 640x640 px get 1-4 random tumour blobs (radius 8-280 um) and sometimes a tissue
    edge on glass; 96x96 patches are cut and labelled exactly like PCam: 1 iff the centre 32x32
    holds at least one tumour-mask pixel. Hard cases are deliberate: about a third of the
    negatives have tumour in the patch but outside the centre, and a quarter or more of the
    positives have only a little tumour (< 15% of the centre region).

    Args:
        n: number of patches (half positive, half negative; an odd n gets one more negative).
        rng_seed: seed; the same seed gives identical arrays.
        return_masks: also return the tumour masks of the patches.

    Returns:
        ``x`` uint8 ``[n, 96, 96, 3]`` RGB, ``y`` uint8 ``[n]`` (0/1), and with ``return_masks``
        ``masks`` bool ``[n, 96, 96]`` (``y == masks[:, 32:64, 32:64].any((1, 2))``).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(rng_seed)
    n_pos = n // 2
    n_neg = n - n_pos
    per_field = 8  # patches of each class taken from one field at most (diversity)
    xs: list[np.ndarray] = []
    ys: list[int] = []
    ms: list[np.ndarray] = []
    got_pos = got_neg = 0
    ps, cs = PATCH_SIZE, CENTRE_SIZE
    lo = (ps - cs) // 2
    size = _FIELD
    while got_pos < n_pos or got_neg < n_neg:
        frng = np.random.default_rng([rng_seed % 2**63, len(xs) + 1, int(rng.integers(2**31))])
        tumour, tissue = _field_masks(frng, size)
        img = render_tissue(
            (size, size),
            PCAM_MPP,
            tumour,
            frng,
            origin_xy=(int(frng.integers(0, 10**6)), int(frng.integers(0, 10**6))),
            tissue_mask=tissue,
        )
        centre = _window_sums(tumour, cs)  # top-left of centre window
        patch = _window_sums(tumour, ps)
        tis = (
            _window_sums(tissue, ps)
            if tissue is not None
            else np.full(patch.shape, ps * ps, dtype=np.int32)
        )
        cen = centre[lo : lo + patch.shape[0], lo : lo + patch.shape[1]]  # index by patch top-left
        pos_main = np.argwhere(cen >= 0.15 * cs * cs)
        pos_small = np.argwhere((cen > 0) & (cen < 0.15 * cs * cs))
        neg_hard = np.argwhere((cen == 0) & (patch > 0))
        neg_clean = np.argwhere((patch == 0) & (tis > 0.25 * ps * ps))
        neg_glass = np.argwhere((patch == 0) & (tis <= 0.25 * ps * ps))

        # Shuffled candidate lists, taken without repeats.
        pos_small, pos_main, neg_hard, neg_clean, neg_glass = (
            c[frng.permutation(len(c))]
            for c in (pos_small, pos_main, neg_hard, neg_clean, neg_glass)
        )
        want_pos = min(per_field, n_pos - got_pos)
        k_small = min(len(pos_small), round(want_pos * 0.25))
        k_main = min(len(pos_main), want_pos - k_small)
        k_more = min(len(pos_small) - k_small, want_pos - k_small - k_main)  # small blobs only
        picks_pos = [*pos_small[: k_small + k_more], *pos_main[:k_main]]
        want_neg = min(per_field, n_neg - got_neg)
        k_hard = min(len(neg_hard), round(want_neg * 0.35))
        k_glass = min(len(neg_glass), 1 if frng.random() < 0.3 else 0, want_neg - k_hard)
        k_clean = min(len(neg_clean), want_neg - k_hard - k_glass)
        picks_neg = [*neg_hard[:k_hard], *neg_glass[:k_glass], *neg_clean[:k_clean]]
        for label, picks in ((1, picks_pos), (0, picks_neg)):
            for r, c in picks:
                xs.append(img[r : r + ps, c : c + ps])
                ms.append(tumour[r : r + ps, c : c + ps])
                ys.append(label)
        got_pos += len(picks_pos)
        got_neg += len(picks_neg)
    order = rng.permutation(len(xs))
    x = np.stack(xs)[order] if xs else np.zeros((0, ps, ps, 3), np.uint8)
    y = np.asarray(ys, dtype=np.uint8)[order]
    m = np.stack(ms)[order] if ms else np.zeros((0, ps, ps), bool)
    assert np.array_equal(y.astype(bool), m[:, lo : lo + cs, lo : lo + cs].any(axis=(1, 2)))
    if return_masks:
        return x, y, m
    return x, y


def write_sample_dataset(
    folder: str | os.PathLike[str],
    *,
    n_train: int = 800,
    n_valid: int = 128,
    n_test: int = 128,
    seed: int = 0,
) -> list[Path]:
    """Write train/valid/test splits of :func:`make_patch_dataset` in the PCam HDF5 layout.

    Files: ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`` in ``folder`` (created),
    written by :func:`wsi_saliency.data.pcam.write_pcam_split`. Split seeds are derived from
    ``seed`` (``seed*1000 + 1/2/3``) so the splits never share a field.

    Returns:
        The paths written (as returned by ``write_pcam_split``, flattened).
    """
    from wsi_saliency.data.pcam import write_pcam_split

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for k, (split, n) in enumerate((("train", n_train), ("valid", n_valid), ("test", n_test))):
        x, y = make_patch_dataset(n, seed * 1000 + k + 1)
        res = write_pcam_split(folder, split, x, y, compression="gzip", compression_opts=9)
        if isinstance(res, (list, tuple)):
            written.extend(Path(p) for p in res)
        elif res is not None:
            written.append(Path(res))
    return written
