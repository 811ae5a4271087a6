"""``scan.h5``: per-patch results and stitched heatmaps of one slide.

Datasets: ``coords`` int64 [N, 2] level-0 (x, y) of each scored patch's top-left;
``grid_rc`` int64 [N, 2]; ``prob`` float32 [N]; ``gradcam`` float32 [N, h, w] (raw Grad-CAM,
not normalised); ``tissue_fraction`` float32 [N]; ``heatmap_prob`` float32 [H, W] (NaN where
not scored); ``heatmap_gradcam`` float32 [H', W']; ``tissue_mask`` uint8 [h, w].
Attributes: ``patch_size_l0``, ``stride_l0``, ``heatmap_prob_downsample`` and
``heatmap_gradcam_downsample`` (level-0 pixels per heatmap cell), ``tissue_mask_downsample``,
``target_mpp``, ``slide_mpp``, ``slide_dimensions`` (level-0 width, height), ``read_level``,
``model_path``, ``model_card`` (JSON), ``config`` (JSON), ``versions`` (JSON),
``format_version`` and ``gradcam_map`` / ``gradcam_map_method`` (how ``heatmap_gradcam`` was
made: ``"dense"`` or ``"patches"``, and that in words; ``""`` without Grad-CAM),
``dtype_policy`` (the Keras policy the backbone computed under: ``float32``, or
``mixed_bfloat16`` / ``mixed_float16`` with ``scan.mixed_precision``),
``batch_norm_folded`` (BatchNormalization layers folded into their convolutions,
``scan.fold_batch_norm``; 0 in files written before it), ``batch_size`` (patches per model
batch on this slide, at most ``scan.batch_size``; 0 in files written before it).

``format_version`` 3: ``heatmap_gradcam`` is by default the dense Grad-CAM map
(``gradcam_map = "dense"``: no patch grid; same formula and scale as the per-patch maps, see
``wsi_saliency.scan.dense``), computed densely around the patches whose own map reaches
``scan.gradcam_dense_min`` of the slide's scale and taken from the per-patch maps elsewhere
(all but zero there); attribute ``gradcam_dense_patches`` says how many patches were computed
densely (-1: not dense). Version 2 computed every patch densely and had no such attribute;
version 1 (no ``format_version``) always stitched the per-patch maps. The per-patch
``gradcam`` dataset means what it meant in version 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsi_saliency.outputs.atomic import _plain, atomic_path

FORMAT_VERSION = 3


def write_scan_h5(
    path: str | Path,
    result,
    *,
    model_path: str,
    model_card: dict[str, Any],
    config: dict[str, Any],
    versions: dict[str, str],
) -> Path:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        comp = {"compression": "gzip", "compression_opts": 4}
        f.create_dataset("coords", data=result.coords.astype(np.int64))
        f.create_dataset("grid_rc", data=result.grid_rc.astype(np.int64))
        f.create_dataset("prob", data=result.prob.astype(np.float32))
        f.create_dataset(
            "gradcam",
            data=result.gradcam.astype(np.float32),
            **(comp if result.gradcam.size else {}),
        )
        f.create_dataset("tissue_fraction", data=result.tissue_fraction.astype(np.float32))
        f.create_dataset("heatmap_prob", data=result.heatmap_prob.astype(np.float32))
        f.create_dataset(
            "heatmap_gradcam",
            data=result.heatmap_gradcam.astype(np.float32),
            **(comp if result.heatmap_gradcam.size else {}),
        )
        f.create_dataset("tissue_mask", data=result.tissue_mask.astype(np.uint8), **comp)
        a = f.attrs
        a["frame"] = "coords: level-0 (x, y) pixels; arrays: [row, col]"
        a["format_version"] = FORMAT_VERSION
        a["gradcam_map"] = str(getattr(result, "gradcam_map", ""))
        a["gradcam_map_method"] = str(getattr(result, "gradcam_map_method", ""))
        a["gradcam_dense_patches"] = int(getattr(result, "gradcam_dense_patches", -1))
        a["dtype_policy"] = str(getattr(result, "dtype_policy", "float32"))
        a["batch_norm_folded"] = int(getattr(result, "batch_norm_folded", 0))
        a["batch_size"] = int(getattr(result, "batch_size", 0))
        a["patch_size_l0"] = float(result.patch_size_l0)
        a["stride_l0"] = float(result.stride_l0)
        a["heatmap_prob_downsample"] = float(result.heatmap_prob_downsample)
        a["heatmap_gradcam_downsample"] = float(result.heatmap_gradcam_downsample)
        a["tissue_mask_downsample"] = np.asarray(result.thumbnail_downsample, np.float64)
        a["target_mpp"] = float(result.target_mpp)
        a["slide_mpp"] = float(result.slide_mpp)
        a["slide_dimensions"] = np.asarray(result.slide_dimensions, np.int64)
        a["read_level"] = int(result.plan.level)
        a["slide_path"] = str(result.path)
        a["model_path"] = str(model_path)
        a["model_card"] = json.dumps(_plain(model_card))
        a["config"] = json.dumps(_plain(config))
        a["versions"] = json.dumps(_plain(versions))
    return Path(path)


def read_scan_h5(path: str | Path, datasets: Iterable[str] | None = None) -> dict[str, Any]:
    """Datasets as arrays (all, or those of ``datasets`` the file has: the per-patch
    ``gradcam`` maps are the bulk of the file) and attributes as values (JSON decoded)."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        for key in f if datasets is None else [k for k in datasets if k in f]:
            out[key] = f[key][()]
        for key, value in f.attrs.items():
            if key in ("model_card", "config", "versions"):
                value = json.loads(value)
            out[key] = value
    return out
