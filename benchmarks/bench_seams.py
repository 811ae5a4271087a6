"""Benchmark: the patch grid in the slide Grad-CAM map (seam index), and what removing it costs.

Seam index (``wsi_saliency.scan.stitch.seam_index``): inside the lesions of a slide, the mean
of the Grad-CAM heatmap over cells that touch a patch border divided by the mean over the
cells at patch centres (1: no grid; the goal is >= 0.9). Lesion cells: the slide's tumour
outlines (ASAP XML) rasterised onto the heatmap cells and eroded by half a patch, so that
patches only partly in a lesion do not count. As a control, the index is also computed with
the grid's phase shifted by 1 to 11 cells: on a map without a grid these values spread around
1 by the texture alone, which is the index's noise.

Slides: ``sample_data/slide/sample_slide.tif`` (its four planted lesions) and a synthetic slide
written here (3072 x 3072 at 0.486 um/px, one lesion about 12 patches across, seed 3).

Maps compared, with the trained tiny model (``--model``; default ``demo_out/model/model.keras``;
``wsi-saliency demo demo_out`` or ``wsi-saliency train --config configs/sample.yaml``):

- ``patches``: per-patch Grad-CAM maps stitched side by side (the default until now);
- ``dense``: Grad-CAM on dense features (``wsi_saliency.scan.dense``; the new default), around
  the patches whose own map reaches ``scan.gradcam_dense_min`` (1/64) of the slide's scale;
- ``dense_everywhere``: the same with ``gradcam_dense_min=0`` (every patch densely); the
  default's largest difference from it, relative to the slide's colour scale, is reported;
- ``overlap48``: stride 48 (4x the patches), per-patch maps averaged with Gaussian centre
  weights (``gradcam_centre_weighted``);
- ``centre32``: stride 32 (9x the patches, PCam's geometry), each patch's map kept for its
  centre 32 x 32 only (4 x 4 cells; stitched here from ``SlideResult.gradcam``).

Tile joins: the dense map is computed on tiles read with a margin of context; the class
activation map of a core computed from a tile with margin m is compared with the same core
inside a larger region, for several m (tiny model; ResNet50 with random weights).

Cost, side by side in one run, ``patches`` against ``dense``, alternating, for the tiny model
and ResNet50 (random weights: ImageNet weights cannot be downloaded here), ``patches``,
``dense`` and ``dense_everywhere``: the dense pass's cost grows with the share of patches whose
map is warm (``gradcam_dense_patches``), which depends on the weights (a trained PCam model's
map of normal tissue is mostly zero; random weights warm about anything), so
``dense_everywhere`` is the cost's upper bound: ``scan_slide`` with a warm scorer (median of
``--repeat``), and
the ``wsi-saliency scan`` command end to end in a fresh process (model loading and every
output file included; median of ``--cli-repeat``). Not a test: ``python
benchmarks/bench_seams.py [--figures docs]``; results go to ``benchmarks/results/seams.json``;
``--figures`` also writes the zoomed before/after PNGs of ``gradcam.png`` and of the review
page's Grad-CAM overlay.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _machine import (  # noqa: E402
    keras_versions,
    machine_end,
    machine_start,
    warn_if_contended_at_end,
    warn_if_contended_at_start,
    write_json_atomic,
)

SAMPLE_SLIDE = REPO / "sample_data" / "slide" / "sample_slide.tif"
DEFAULT_MODEL = REPO / "demo_out" / "model" / "model.keras"
CELLS = 12  # Grad-CAM heatmap cells per patch side (ScanConfig.gradcam_cells)
METHODS = {  # the slide maps whose cost is compared (ScanConfig fields)
    "patches": {"gradcam_map": "patches"},
    "dense": {"gradcam_map": "dense"},
    "dense_everywhere": {"gradcam_map": "dense", "gradcam_dense_min": 0.0},
}


# ---------------------------------------------------------------- slides


def lesion_slide(folder: Path) -> tuple[Path, Path]:
    """A synthetic slide with one lesion about 12 patches across: ``(slide, outlines.xml)``."""
    from wsi_saliency.synthetic.slides import write_synthetic_slide
    from wsi_saliency.synthetic.tissue import random_blob_polygon

    size, mpp = 3072, 0.486
    rng = np.random.default_rng(3)
    lesion = random_blob_polygon(rng, (size / 2, size / 2), 0.38 * size, irregularity=0.15)
    tissue = [np.array([[80, 80], [size - 80, 120], [size - 120, size - 80], [120, size - 100]])]
    info = write_synthetic_slide(
        folder / "lesion_slide.tif",
        l0_size_xy=(size, size),
        mpp=mpp,
        lesions=[lesion],
        seed=3,
        tile=256,
        levels=(1, 4),
        tissue=[t.astype(float) for t in tissue],
        pen_mark=False,
        dark_area=False,
    )
    return info.path, info.xml_path


def lesion_cells(xml: Path, shape_rc: tuple[int, int], l0_per_cell: float) -> np.ndarray:
    """bool [rows, cols]: heatmap cells inside the lesions, eroded by half a patch."""
    from skimage.morphology import disk, erosion

    from wsi_saliency.data.annotations import rasterize, read_asap_xml

    mask = rasterize(read_asap_xml(xml), shape_rc, l0_per_cell)
    return erosion(mask, disk(CELLS // 2)).astype(bool)


def seam_figures(heatmap: np.ndarray, period: int, mask: np.ndarray) -> dict:
    from wsi_saliency.scan.stitch import seam_index

    s = seam_index(heatmap, period, mask)
    shifted = [
        seam_index(np.roll(heatmap, (k, k), (0, 1)), period, np.roll(mask, (k, k), (0, 1))).index
        for k in range(1, period)
    ]
    return {
        "seam_index": round(s.index, 4),
        "border_mean": round(s.border_mean, 6),
        "centre_mean": round(s.centre_mean, 6),
        "border_cells": s.n_border,
        "centre_cells": s.n_centre,
        "control_shifted_phase_min_max": [round(min(shifted), 4), round(max(shifted), 4)],
    }


def centre_cell_map(res, keep: int) -> np.ndarray:
    """The stride-32 scan's map with each patch's map kept for its centre ``keep`` x ``keep``
    cells only (the stride in cells), so the centres tile the slide."""
    from wsi_saliency.scan.stitch import bilinear_resize_maps

    out = np.full(res.heatmap_gradcam.shape, np.nan, np.float32)
    lo = (CELLS - keep) // 2
    ups = bilinear_resize_maps(res.gradcam, CELLS)
    for (r, c), up in zip(res.grid_rc, ups, strict=True):
        y, x = r * keep + lo, c * keep + lo
        out[y : y + keep, x : x + keep] = up[lo : lo + keep, lo : lo + keep]
    return out


# ---------------------------------------------------------------- scans


def scan(path: Path, model, card, scorer, **cfg_kw):
    from wsi_saliency.config import ScanConfig
    from wsi_saliency.scan.pipeline import scan_slide

    return scan_slide(path, model, card, ScanConfig(workers=2, **cfg_kw), scorer=scorer)


def seams_for_slide(model, card, name: str, path: Path, xml: Path, alternatives: bool) -> dict:
    from wsi_saliency.config import ScanConfig
    from wsi_saliency.scan.pipeline import PatchScorer

    scorer = PatchScorer.from_config(model, card, ScanConfig())
    out = {"slide": name, "path": str(path), "maps": {}}
    runs = {
        "patches": {"gradcam_map": "patches"},
        "dense": {"gradcam_map": "dense"},
        "dense_everywhere": {"gradcam_map": "dense", "gradcam_dense_min": 0.0},
    }
    if alternatives:
        runs["overlap48"] = {
            "gradcam_map": "patches",
            "stride": 48,
            "gradcam_centre_weighted": True,
        }
        runs["centre32"] = {"gradcam_map": "patches", "stride": 32}
    base = default = None
    scan(path, model, card, scorer, gradcam_map="dense")  # warm-up: tracing, compilation
    for label, kw in runs.items():
        res = scan(path, model, card, scorer, **kw)
        heat = res.heatmap_gradcam
        period = CELLS * (kw.get("stride") or 96) // 96
        if label == "centre32":
            heat = centre_cell_map(res, period)
        mask = lesion_cells(xml, heat.shape, res.heatmap_gradcam_downsample)
        row = {
            "config": kw,
            "patches_scored": res.n_scored,
            "cells_per_stride": period,
            "lesion_cells": int(mask.sum()),
            **seam_figures(heat, period, mask),
            "scan_total_s": round(res.timings["total_s"], 2),
            "gradcam_dense_patches": res.gradcam_dense_patches,
        }
        if label == "patches":
            base = res
        else:
            row["scan_total_over_patches"] = round(
                res.timings["total_s"] / base.timings["total_s"], 2
            )
        if label == "dense":
            default = res
            same = np.array_equal(res.prob, base.prob) and np.array_equal(
                res.heatmap_prob, base.heatmap_prob, equal_nan=True
            )
            row["probabilities_bit_identical_to_patches"] = bool(same)
            row.update(tile_figures(res, scorer.dense()))
        if label == "dense_everywhere":
            from wsi_saliency.outputs.colour import gradcam_scale

            vmax = gradcam_scale(res.heatmap_gradcam).vmax
            diff = np.abs(default.heatmap_gradcam - res.heatmap_gradcam)
            row["default_max_abs_diff_over_colour_scale"] = round(float(np.nanmax(diff)) / vmax, 5)
            row["default_cells_differing_over_1_256_of_scale"] = int(
                np.count_nonzero(np.nan_to_num(diff) > vmax / 256)
            )
        print(json.dumps({"slide": name, "map": label, **row}), flush=True)
        out["maps"][label] = row
    return out


def tile_figures(res, dense) -> dict:
    """How the dense map's tiles were laid out for the scan ``res`` (rebuilt from its grid)."""
    from wsi_saliency.config import ScanConfig
    from wsi_saliency.scan.dense import dense_margin, dense_rows, dense_tiles
    from wsi_saliency.slide.tiling import TileGrid

    patch = dense.patch_size
    t_xy = res.grid_rc[:, ::-1] * int(round(res.stride_l0 / res.plan.l0_per_t))
    grid = TileGrid(
        l0_xy=res.coords,
        t_xy=t_xy,
        grid_rc=res.grid_rc,
        tissue_fraction=res.tissue_fraction,
        grid_shape=(int(res.grid_rc[:, 0].max()) + 1, int(res.grid_rc[:, 1].max()) + 1),
        patch_t=patch,
        stride_t=int(round(res.stride_l0 / res.plan.l0_per_t)),
        l0_per_t=res.plan.l0_per_t,
        l0_size_wh=res.slide_dimensions,
    )
    rows = dense_rows(grid, res.gradcam, ScanConfig().gradcam_dense_min)
    tiles = dense_tiles(grid, dense, ScanConfig().region, rows)
    read_px = sum(t.t_wh[0] * t.t_wh[1] for t in tiles)
    return {
        "dense_margin_px": dense_margin(dense.receptive_field, dense.stride, patch),
        "dense_tiles": len(tiles),
        "dense_read_px_over_scored_px": round(read_px / (res.n_scored * patch**2), 3),
        "dense_read_px_over_dense_patches_px": round(read_px / (max(1, len(rows)) * patch**2), 3),
    }


def margin_error(model, card, dense, slide: Path) -> dict:
    """Tile joins: the class activation map ``sum_k w_k A_k`` (before the ReLU) of a 384 px
    core computed from a tile with margin m, against the same core inside a 1152 px region
    (context everywhere). Mean and max |difference| over the core's edge cells (where tiles
    join) and the mean over all its cells, relative to the core map's standard deviation."""
    from wsi_saliency.scan.dense import dense_margin
    from wsi_saliency.slide import open_slide, plan_resolution
    from wsi_saliency.slide.loader import Region, read_target_region

    w = model.get_layer(card.logit_layer).get_weights()[0][:, 0]
    with open_slide(slide) as reader:
        plan = plan_resolution(reader, card.patch_mpp)
        region = Region((2592, 800), (1152, 1152), np.zeros(0, np.int64))
        image = read_target_region(reader, plan, region)
    s = dense.stride
    full = dense.features(image) @ w
    c0, c1 = 384, 768
    ref = full[c0 // s : c1 // s, c0 // s : c1 // s]
    used = dense_margin(dense.receptive_field, s, dense.patch_size)
    out = {"margin_used_px": used, "by_margin_px": {}}
    for m in sorted({0, s, 2 * s, used, 96, 192}):
        f = dense.features(image[c0 - m : c1 + m, c0 - m : c1 + m]) @ w
        core = f[m // s : m // s + ref.shape[0], m // s : m // s + ref.shape[1]]
        err = np.abs(core - ref) / ref.std()
        edge = np.concatenate([err[0], err[-1], err[:, 0], err[:, -1]])
        out["by_margin_px"][str(m)] = {
            "edge_mean": round(float(edge.mean()), 4),
            "edge_max": round(float(edge.max()), 4),
            "all_mean": round(float(err.mean()), 4),
        }
    return out


def cost_side_by_side(model, card, path: Path, repeat: int) -> dict:
    """``scan_slide`` with a warm scorer, ``patches`` and ``dense`` alternating."""
    from wsi_saliency.config import ScanConfig
    from wsi_saliency.scan.pipeline import PatchScorer

    scorer = PatchScorer.from_config(model, card, ScanConfig())
    for kw in METHODS.values():  # warm-up
        scan(path, model, card, scorer, **kw)
    times: dict[str, list[dict]] = {m: [] for m in METHODS}
    n, n_dense = 0, {}
    for _ in range(repeat):
        for method, kw in METHODS.items():
            res = scan(path, model, card, scorer, **kw)
            times[method].append(res.timings)
            n, n_dense[method] = res.n_scored, res.gradcam_dense_patches

    def med(method: str, key: str) -> float:
        return float(np.median([t.get(key, 0.0) for t in times[method]]))

    out = {"patches_scored": n, "repeat": repeat}
    for method in times:
        out[method] = {
            k: round(med(method, k), 3)
            for k in ("total_s", "inference_s", "model_s", "gradcam_map_s", "gradcam_map_model_s")
            if k in times[method][0]
        }
        out[method]["total_s_all"] = [round(t["total_s"], 3) for t in times[method]]
        out[method]["patches_per_s"] = round(n / out[method]["total_s"], 1)
        out[method]["gradcam_dense_patches"] = n_dense[method]
    for method in ("dense", "dense_everywhere"):
        out[f"{method}_over_patches_total"] = round(
            out[method]["total_s"] / out["patches"]["total_s"], 3
        )
        out[f"{method}_map_over_per_patch_inference"] = round(
            out[method]["gradcam_map_s"] / out[method]["inference_s"], 3
        )
    return out


def cli_side_by_side(model_path: Path, slide: Path, folder: Path, repeat: int) -> dict:
    """``wsi-saliency scan`` in a fresh process: the default (dense), ``gradcam_map=patches``
    and ``gradcam_dense_min=0``, alternating."""
    walls: dict[str, list[float]] = {m: [] for m in METHODS}
    for i in range(repeat):
        for method, kw in METHODS.items():
            out = folder / f"cli-{method}-{i}"
            cmd = [sys.executable, "-m", "wsi_saliency", "scan", str(slide)]
            cmd += ["--model", str(model_path), "--out", str(out), "--quiet", "--overwrite"]
            for key, value in kw.items():
                if key != "gradcam_map" or value != "dense":
                    cmd += ["--set", f"{key}={value}"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
            walls[method].append(round(time.perf_counter() - t0, 2))
    med = {m: float(np.median(w)) for m, w in walls.items()}
    return {
        "wall_s": walls,
        "median_s": med,
        "dense_over_patches": round(med["dense"] / med["patches"], 3),
        "dense_everywhere_over_patches": round(med["dense_everywhere"] / med["patches"], 3),
    }


def resnet50_model(folder: Path):
    import keras

    from wsi_saliency.config import ModelConfig
    from wsi_saliency.model.build import build_model
    from wsi_saliency.model.io import ModelCard, load_model, save_model

    keras.utils.set_random_seed(0)
    cfg = ModelConfig(backbone="resnet50", weights="none")
    path = save_model(build_model(cfg), ModelCard.for_config(cfg), folder / "resnet50.keras")
    model, card = load_model(path)
    return path, model, card


# ---------------------------------------------------------------- figures

FIGURE_BOX_L0 = (5184, 1536, 1920)  # (x, y, side): 10 x 10 patches of the sample slide's
# largest lesion (its outline spans x 4963-7241, y 1089-3813), on the patch grid


def _axes_box(png: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the slide image inside a matplotlib overlay PNG: the rows and the
    first run of columns (the colour bar is the second) that are mostly not the figure's
    white."""
    body = (png[..., :3].astype(int) < 250).any(axis=-1)
    rows = np.flatnonzero(body.mean(axis=1) > 0.5)
    cols = np.flatnonzero(body[rows[0] : rows[-1] + 1].mean(axis=0) > 0.5)
    run_end = cols[np.flatnonzero(np.diff(cols) > 1)[0]] if (np.diff(cols) > 1).any() else cols[-1]
    return int(cols[0]), int(rows[0]), int(run_end) + 1, int(rows[-1]) + 1


def _crop_l0(image, extent_l0_wh: tuple[float, float], box, size: int, resample):
    """The level-0 box ``(x, y, side)`` of an image that spans ``extent_l0_wh``, at ``size``."""

    x, y, side = box
    sx, sy = image.width / extent_l0_wh[0], image.height / extent_l0_wh[1]
    crop = (x * sx, y * sy, (x + side) * sx, (y + side) * sy)
    return image.resize((size, size), resample, box=crop)


def figures(model_path: Path, folder: Path, docs: Path, seams: dict) -> dict:
    """docs/gradcam_{before,after}.png: the scan's ``gradcam.png`` zoomed on the largest lesion
    of the sample slide; docs/review_gradcam_{before,after}.png: the review page's Grad-CAM
    overlay image (``wsi-saliency review``) over the slide at the page's default opacity 0.5,
    scaled bilinearly as a browser does, on the same box. Before: ``gradcam_map=patches``."""
    from PIL import Image, ImageDraw, ImageFont

    from wsi_saliency.outputs.colour import gradcam_scale
    from wsi_saliency.outputs.h5 import read_scan_h5
    from wsi_saliency.review.layers import heatmap_raster
    from wsi_saliency.slide import open_slide

    box, size = FIGURE_BOX_L0, 640
    font = ImageFont.load_default(size=14)
    with open_slide(SAMPLE_SLIDE) as reader:
        slide_wh = tuple(int(v) for v in reader.dimensions)
        under = Image.fromarray(reader.read_region(box[:2], 1, (box[2] // 4, box[2] // 4)))
    under = under.convert("RGBA").resize((size, size), Image.Resampling.LANCZOS)
    written = {}
    for tag, method in (("before", "patches"), ("after", "dense")):
        out = folder / f"figures-{method}"
        cmd = [sys.executable, "-m", "wsi_saliency", "scan", str(SAMPLE_SLIDE)]
        cmd += ["--model", str(model_path), "--out", str(out), "--quiet", "--overwrite"]
        cmd += ["--set", f"gradcam_map={method}"]
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
        cmd = [sys.executable, "-m", "wsi_saliency", "review", str(out), "--no-tiles"]
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
        index = seams[method]["seam_index"]
        label = (
            f"{tag}: {'per-patch maps stitched' if method == 'patches' else 'dense Grad-CAM'}"
            f", seam index {index:.2f}"
        )
        png = Image.open(out / "sample_slide" / "gradcam.png").convert("RGB")
        x0, y0, x1, y1 = _axes_box(np.asarray(png))
        axes = png.crop((x0, y0, x1, y1))
        zoom = _crop_l0(axes, slide_wh, box, size, Image.Resampling.NEAREST)
        overlay = Image.open(out / "sample_slide" / "review" / "gradcam.png").convert("RGBA")
        scan_h5 = read_scan_h5(out / "sample_slide" / "scan.h5", ["heatmap_gradcam"])
        heat = scan_h5["heatmap_gradcam"]  # the raster's level-0 extent, as the page has it
        extent = heatmap_raster(
            heat, float(scan_h5["heatmap_gradcam_downsample"]), gradcam_scale(heat)
        ).l0_extent_wh
        cam = _crop_l0(overlay, extent, box, size, Image.Resampling.BILINEAR)
        alpha = (np.asarray(cam)[..., 3].astype(np.float32) * 0.5).astype(np.uint8)
        cam.putalpha(Image.fromarray(alpha))
        review = Image.alpha_composite(under, cam).convert("RGB")
        for name, image in ((f"gradcam_{tag}.png", zoom), (f"review_gradcam_{tag}.png", review)):
            framed = Image.new("RGB", (size, size + 22), "white")
            framed.paste(image, (0, 22))
            ImageDraw.Draw(framed).text((6, 3), label, fill="black", font=font)
            framed = framed.convert("P", palette=Image.Palette.ADAPTIVE, dither=Image.Dither.NONE)
            framed.save(docs / name, optimize=True)
            written[name] = str(docs / name)
    return written


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the trained tiny model")
    ap.add_argument("--repeat", type=int, default=3, help="timed scan_slide pairs per case")
    ap.add_argument("--cli-repeat", type=int, default=2, help="timed CLI pairs per case")
    ap.add_argument("--no-alternatives", action="store_true", help="skip overlap48, centre32")
    ap.add_argument("--no-resnet50", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "seams.json")
    ap.add_argument(
        "--figures", type=Path, default=None, help="write the zoomed before/after PNGs here"
    )
    args = ap.parse_args()
    if not args.model.is_file():
        sys.exit(f"no model at {args.model}: run 'wsi-saliency demo demo_out' first")

    from wsi_saliency.config import ScanConfig
    from wsi_saliency.model.io import load_model
    from wsi_saliency.scan.pipeline import PatchScorer

    start = machine_start()
    warn_if_contended_at_start(start)
    t_start = time.perf_counter()
    result: dict = {"benchmark": "seams", "model": str(args.model), "cells_per_patch": CELLS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lesion, lesion_xml = lesion_slide(tmp)
        slides = [
            ("sample_slide", SAMPLE_SLIDE, SAMPLE_SLIDE.with_suffix(".xml")),
            ("synthetic_lesion_12_patches", lesion, lesion_xml),
        ]
        model, card = load_model(args.model)
        dense = PatchScorer.from_config(model, card, ScanConfig()).dense()
        result["tile_join_error"] = {"tiny": margin_error(model, card, dense, SAMPLE_SLIDE)}
        result["seams_tiny"] = [
            seams_for_slide(model, card, n, p, x, not args.no_alternatives) for n, p, x in slides
        ]
        if args.figures:
            maps = result["seams_tiny"][0]["maps"]
            result["figures"] = figures(args.model, tmp, args.figures, maps)
        result["cost"] = {"tiny": {}, "resnet50": {}}
        for name, path, _ in slides:
            row = cost_side_by_side(model, card, path, args.repeat)
            row["cli_end_to_end"] = cli_side_by_side(args.model, path, tmp, args.cli_repeat)
            print(json.dumps({"cost": "tiny", "slide": name, **row}), flush=True)
            result["cost"]["tiny"][name] = row
        if not args.no_resnet50:
            r_path, r_model, r_card = resnet50_model(tmp)
            r_dense = PatchScorer.from_config(r_model, r_card, ScanConfig()).dense()
            result["tile_join_error"]["resnet50_random_weights"] = margin_error(
                r_model, r_card, r_dense, SAMPLE_SLIDE
            )
            for name, path, _ in slides:
                row = cost_side_by_side(r_model, r_card, path, max(1, args.repeat - 1))
                row["cli_end_to_end"] = cli_side_by_side(r_path, path, tmp, 1)
                print(json.dumps({"cost": "resnet50", "slide": name, **row}), flush=True)
                result["cost"]["resnet50"][name] = row
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["machine"] = machine_end(start, keras_versions())
    write_json_atomic(args.out, result)
    warn_if_contended_at_end(result["machine"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
