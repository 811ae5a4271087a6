"""Benchmark: end-to-end ``scan_slide`` throughput against the model's own throughput.

Nothing is trained: a ``weights="none"`` model per backbone is built, saved with its card
(``model.io.save_model``) into a temporary folder and loaded back with ``load_model``, as a
user's model would be, its batch norms folded as a scan folds them (``scan.fold_batch_norm``).
Per backbone and slide, one ``PatchScorer`` per Grad-CAM mode (``PatchScorer.from_config``, as
the scan makes it) is made once and reused (as ``scan.cohort`` does); its first scan is the
untimed warm-up (tracing, first calls; XLA compilation where the scan compiles, reported as
``cold_total_s``), then scans are timed with Grad-CAM on / off and 1 / 2 reader workers, the
best of ``--repeat`` kept; Grad-CAM on is the default slide map, dense. From
``SlideResult.timings``:

- end-to-end patches/s = n_scored / total_s (open, thumbnail + tissue mask + overview,
  tiling, reading + model, stitching, the dense Grad-CAM map);
- model-only patches/s = n_scored / model time, where model time is the time inside the
  scorer calls (Grad-CAM pass, or ``predict_on_batch`` with Grad-CAM off) plus, with Grad-CAM
  on, the dense map's own model time (``gradcam_map_model_s``); and the ratio end-to-end /
  model-only;
- "model alone": the same call on one fixed in-memory batch of 64 patches, repeated
  (``GradCam(model, layer)(x)`` and ``model.predict_on_batch(x)``), to compare with the
  in-pipeline model time; and "reading alone": ``iter_patch_batches`` over the scan's grid
  with no model, the most the pipeline could deliver.

Slides: ``sample_data/slide/sample_slide.tif`` (8000 x 6000 at 0.486 um/px: level 0
resampled x2) and ``../shared/data/slides/CMU-1-Small-Region.svs`` when present (0.499 um/px,
resampled x1.95). Both backbones scan both slides; with ``--quick`` ``resnet50`` scans only a
central region of the sample slide (an ROI). Not a test: ``python benchmarks/bench_scan.py
[--quick]``; results go to ``benchmarks/results/scan.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLE_SLIDE = REPO / "sample_data" / "slide" / "sample_slide.tif"
CMU_SLIDE = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
PATCH = 96
PATCH_MPP = 0.972
BATCH = 64
ODD_BATCH = 37  # a batch size the scorer has not seen: what a slide's last partial batch costs


# ---------------------------------------------------------------- machine

from _machine import (  # noqa: E402
    keras_versions,
    machine_start,
    warn_if_contended_at_end,
    warn_if_contended_at_start,
    write_json_atomic,
)
from _machine import machine_end as _machine_end  # noqa: E402
from bench_reading import time_reading  # noqa: E402


def machine_end(start: dict) -> dict:
    import openslide
    import PIL

    return _machine_end(
        start,
        keras_versions(
            {
                "openslide": openslide.__library_version__,
                "openslide_python": openslide.__version__,
                "pillow": PIL.__version__,
            }
        ),
    )


# ---------------------------------------------------------------- model


def saved_model(backbone: str, folder: Path):
    """``(model, card, info)``: a ``weights="none"`` model saved with its card, loaded back."""
    import keras

    from wsi_saliency.config import ModelConfig, ScanConfig
    from wsi_saliency.model.build import build_model
    from wsi_saliency.model.fold import fold_batch_norm
    from wsi_saliency.model.io import ModelCard, load_model, save_model, software_versions

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(backbone=backbone, weights="none", patch_size=PATCH, patch_mpp=PATCH_MPP)
    model = build_model(cfg)
    card = ModelCard.for_config(cfg, versions=software_versions())
    path = folder / f"{backbone}.keras"
    t0 = time.perf_counter()
    save_model(model, card, path)
    save_s = time.perf_counter() - t0
    del model
    t0 = time.perf_counter()
    model, card = load_model(path)
    load_s = time.perf_counter() - t0
    folded = fold_batch_norm(model) if ScanConfig().fold_batch_norm else 0
    return (
        model,
        card,
        {
            "backbone": backbone,
            "params": int(model.count_params()),
            "gradcam_layer": card.gradcam_layer,
            "model_file_mb": round(path.stat().st_size / 1e6, 2),
            "save_s": round(save_s, 2),
            "load_s": round(load_s, 2),
            "batch_norms_folded": folded,
        },
    )


def _first_and_median_s(fn, x: np.ndarray, repeat: int) -> tuple[float, float]:
    """Seconds of ``fn(x)``'s first call, then (after one untimed call) the median of
    ``repeat`` timed calls."""
    t0 = time.perf_counter()
    fn(x)
    first = time.perf_counter() - t0
    fn(x)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def model_alone(model, card, patches: np.ndarray, repeat: int, *, jit: bool = True) -> dict:
    """Grad-CAM and predict on one fixed in-memory batch of 64, repeated after a warm-up."""
    from wsi_saliency.model.gradcam import GradCam

    x = np.ascontiguousarray(patches[:BATCH])
    assert x.shape == (BATCH, PATCH, PATCH, 3), x.shape
    out = {"batch": BATCH, "repeat": repeat}
    cam = GradCam(model, card.gradcam_layer, card.logit_layer, jit=jit)
    first, median = _first_and_median_s(cam, x, repeat)
    out["gradcam_first_call_s"] = round(first, 3)
    out["gradcam_batch_s_median"] = round(median, 4)
    out["gradcam_patches_per_s"] = round(BATCH / median, 1)
    # A batch size not seen yet (every slide's last, partial batch has one): retrace/compile.
    t0 = time.perf_counter()
    cam(x[:ODD_BATCH])
    out[f"gradcam_first_call_batch{ODD_BATCH}_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    cam(x[:ODD_BATCH])
    out[f"gradcam_second_call_batch{ODD_BATCH}_s"] = round(time.perf_counter() - t0, 3)

    first, median = _first_and_median_s(model.predict_on_batch, x.astype(np.float32), repeat)
    out["predict_first_call_s"] = round(first, 3)
    out["predict_batch_s_median"] = round(median, 4)
    out["predict_patches_per_s"] = round(BATCH / median, 1)
    out["predict_jit_compiled"] = bool(getattr(model, "jit_compile", False))
    return out


# ---------------------------------------------------------------- slides


def slides_for(backbone: str, quick: bool) -> list[tuple[str, Path, str]]:
    """``[(name, path, region)]``: region ``"whole"`` or ``"centre"`` (a central ROI)."""
    have_cmu = CMU_SLIDE.is_file()
    if backbone == "tiny":
        out = [("sample_slide", SAMPLE_SLIDE, "whole")]
        if have_cmu:
            out.append(("CMU-1-Small-Region", CMU_SLIDE, "whole"))
        return out
    # The heavy backbone: the small CMU slide, and the sample slide (a central subset with
    # --quick).
    out = [("CMU-1-Small-Region", CMU_SLIDE, "whole")] if have_cmu else []
    out.append(("sample_slide", SAMPLE_SLIDE, "centre" if quick else "whole"))
    return out


def centre_roi(path: Path, fraction: float) -> np.ndarray:
    """A bool ROI (whole slide, 256 px on the long side) covering the central ``fraction``
    of the area: limits a slow backbone to a subset of the slide."""
    from wsi_saliency.slide import open_slide

    with open_slide(path) as r:
        w, h = r.dimensions
    s = 256 / max(w, h)
    rw, rh = max(1, round(w * s)), max(1, round(h * s))
    roi = np.zeros((rh, rw), bool)
    side = fraction**0.5
    y0, x0 = round(rh * (1 - side) / 2), round(rw * (1 - side) / 2)
    roi[y0 : rh - y0, x0 : rw - x0] = True
    return roi


def scan_once(path: Path, model, card, cfg, scorer, roi) -> dict:
    from wsi_saliency.scan.pipeline import scan_slide

    res = scan_slide(path, model, card, cfg, scorer=scorer, roi=roi)
    t = res.timings
    n = res.n_scored
    model_s = t["model_s"] + t.get("gradcam_map_model_s", 0.0)  # scorer + dense map
    return {
        "result": res,
        "n_scored": n,
        "timings_s": {k: round(v, 4) for k, v in t.items()},
        "model_time_s": round(model_s, 4),
        "not_model_in_inference_s": round(t["inference_s"] - t["model_s"], 4),
        "e2e_patches_per_s": round(n / t["total_s"], 1),
        "inference_patches_per_s": round(n / t["inference_s"], 1),
        "model_patches_per_s": round(n / model_s, 1) if model_s else None,
        "ratio_e2e_over_model": round(model_s / t["total_s"], 3),
        "gradcam_dense_patches": res.gradcam_dense_patches,
    }


def scan_grid(res, **kwargs):
    """The patch grid of a scan (``SlideResult`` ``res``): its plan, tissue mask, edges
    covered; ``kwargs`` go to ``tile_grid``."""
    from wsi_saliency.slide import tile_grid

    return tile_grid(
        res.slide_dimensions,
        res.plan,
        patch_t=PATCH,
        stride_t=PATCH,
        mask=res.tissue_mask,
        mask_l0_per_px=res.thumbnail_downsample,
        cover_edges=True,
        **kwargs,
    )


def reading_alone(path: Path, res, cfg, workers: int, repeat: int) -> dict:
    """``iter_patch_batches`` over the grid the scan used, no model: the reading ceiling."""
    grid = scan_grid(res, min_tissue_fraction=cfg.min_tissue_fraction)
    n, best = time_reading(
        path,
        res.plan,
        grid,
        repeat=repeat,
        batch_size=cfg.batch_size,
        region_t=cfg.region,
        workers=workers,
    )
    return {
        "workers": workers,
        "patches": n,
        "seconds": round(best, 3),
        "patches_per_s": round(n / best, 1),
    }


def bench_slide(
    backbone: str,
    model,
    card,
    name: str,
    path: Path,
    region: str,
    *,
    repeat: int,
    roi_fraction: float,
    quick: bool,
) -> tuple[dict, np.ndarray]:
    """The timed scans of one slide, and its first ``BATCH`` patches (for "model alone")."""
    from wsi_saliency.config import ScanConfig
    from wsi_saliency.scan.pipeline import PatchScorer

    roi = centre_roi(path, roi_fraction) if region == "centre" else None
    out = {
        "backbone": backbone,
        "slide": name,
        "path": str(path),
        "region": region if region == "whole" else f"central {roi_fraction:.0%} (ROI)",
        "scans": [],
    }
    warm_result = None
    for gradcam in (True, False):
        cfg = ScanConfig(gradcam=gradcam, workers=2)
        scorer = PatchScorer.from_config(model, card, cfg)
        t0 = time.perf_counter()
        warm = scan_once(path, model, card, cfg, scorer, roi)  # warm-up: traces, first calls
        cold_s = time.perf_counter() - t0
        warm_result = warm_result or warm["result"]
        out[f"cold_total_s_gradcam_{'on' if gradcam else 'off'}"] = round(cold_s, 2)
        if not quick:
            # A second warm-up scan makes sure nothing is left to trace or compile (a compiled
            # scorer compiles the last partial batch's size too).
            scan_once(path, model, card, cfg, scorer, roi)
        for workers in (1, 2):
            cfg = ScanConfig(gradcam=gradcam, workers=workers)
            runs = [scan_once(path, model, card, cfg, scorer, roi) for _ in range(repeat)]
            best = min(runs, key=lambda r: r["timings_s"]["total_s"])
            for r in runs:
                r.pop("result")
            row = {
                "gradcam": gradcam,
                "workers": workers,
                "repeat_best_of": repeat,
                **best,
                "total_s_all_runs": [r["timings_s"]["total_s"] for r in runs],
            }
            print(json.dumps({"backbone": backbone, "slide": name, **row}), flush=True)
            out["scans"].append(row)
    res = warm_result
    out["slide_info"] = {
        "dimensions_l0": list(res.slide_dimensions),
        "slide_mpp": res.slide_mpp,
        "resolution": res.plan.describe(),
        "n_candidates": res.n_candidates,
        "n_scored": res.n_scored,
        "last_batch_size": res.n_scored % BATCH or BATCH,
    }
    if region == "whole":
        out["reading_alone"] = [
            reading_alone(path, res, ScanConfig(), w, 1 if quick else 2) for w in (1, 2)
        ]
    else:
        out["reading_alone"] = None  # the ROI grid is not rebuilt here
    # The first patches of the slide, for the "model alone" figure.
    from wsi_saliency.slide import iter_patch_batches, open_slide

    grid = scan_grid(res)
    it = iter_patch_batches(lambda: open_slide(path), res.plan, grid, batch_size=BATCH, workers=0)
    patches = np.concatenate([b.patches for _, b in zip(range(2), it, strict=False)])[:BATCH]
    it.close()
    return out, patches


# ---------------------------------------------------------------- main


def _or_dash(value: float | None) -> str:
    """``value`` to one decimal, or ``-`` where it was not measured (``None``)."""
    return "-" if value is None else f"{value:.1f}"


def print_table(rows: list[dict], alone: dict) -> None:
    print("\nscan_slide: end-to-end vs model-only patches/s (best run, warm scorer)")
    print(
        f"  {'backbone':<9}{'slide':<20}{'cam':>4}{'wk':>3}{'n':>6}{'total s':>9}"
        f"{'tissue s':>9}{'infer s':>9}{'model s':>9}{'e2e p/s':>9}{'model p/s':>10}"
        f"{'e2e/model':>10}"
    )
    for sl in rows:
        for r in sl["scans"]:
            t = r["timings_s"]
            print(
                f"  {sl['backbone']:<9}{sl['slide'][:19]:<20}{'on' if r['gradcam'] else 'off':>4}"
                f"{r['workers']:>3}{r['n_scored']:>6}{t['total_s']:>9.2f}{t['tissue_s']:>9.2f}"
                f"{t['inference_s']:>9.2f}{r['model_time_s']:>9.2f}{r['e2e_patches_per_s']:>9.1f}"
                f"{_or_dash(r['model_patches_per_s']):>10}{r['ratio_e2e_over_model']:>10.2f}"
            )
    print("\ncold first scan (new scorer: tracing, first calls), s")
    for sl in rows:
        print(
            f"  {sl['backbone']:<9}{sl['slide'][:19]:<20} gradcam on "
            f"{sl['cold_total_s_gradcam_on']:>7.2f}   off {sl['cold_total_s_gradcam_off']:>7.2f}"
        )
    print("\nreading alone (iter_patch_batches, no model), patches/s")
    for sl in rows:
        for r in sl.get("reading_alone") or []:
            print(
                f"  {sl['slide'][:19]:<20} workers {r['workers']}: {r['patches_per_s']:>8.1f}"
                f" ({r['patches']} patches; measured in the {sl['backbone']} pass)"
            )
    print("\nmodel alone: one in-memory batch of 64, repeated")
    print(
        f"  {'backbone':<10}{'gradcam p/s':>12}{'predict p/s':>12}{'gc 1st call s':>15}"
        f"{f'gc new batch {ODD_BATCH} s':>18}"
    )
    for b, a in alone.items():
        print(
            f"  {b:<10}{a['gradcam_patches_per_s']:>12.1f}{a['predict_patches_per_s']:>12.1f}"
            f"{a['gradcam_first_call_s']:>15.2f}{a[f'gradcam_first_call_batch{ODD_BATCH}_s']:>18.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one run per case (smoke test)")
    ap.add_argument(
        "--backbones",
        nargs="+",
        default=["tiny", "resnet50"],
        choices=["tiny", "resnet50", "mobilenetv2", "densenet169"],
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed scans per case (default 2; resnet50 1; quick 1)",
    )
    ap.add_argument(
        "--roi-fraction",
        type=float,
        default=0.15,
        help="part of the sample slide's area a backbone other than tiny scans with --quick",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/scan.json; scan-quick.json with --quick)",
    )
    args = ap.parse_args()
    out = args.out or REPO / "benchmarks" / "results" / (
        "scan-quick.json" if args.quick else "scan.json"
    )

    start = machine_start()
    warn_if_contended_at_start(start)
    skipped = []
    if not CMU_SLIDE.is_file():
        skipped.append(f"{CMU_SLIDE} is absent (a fresh clone): CMU-1-Small-Region skipped")
        print(skipped[-1], flush=True)
    t_run = time.perf_counter()

    import keras  # noqa: F401  (TF start-up outside the timings)

    from wsi_saliency.backend import gradcam_jit
    from wsi_saliency.config import ScanConfig

    rows, models, alone = [], [], {}
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        for backbone in args.backbones:
            model, card, info = saved_model(backbone, Path(tmp))
            models.append(info)
            print(json.dumps(info), flush=True)
            heavy = backbone != "tiny"
            repeat = args.repeat or (1 if (args.quick or heavy) else 2)
            patches = None
            for name, path, region in slides_for(backbone, args.quick):
                row, got = bench_slide(
                    backbone,
                    model,
                    card,
                    name,
                    path,
                    region,
                    repeat=repeat,
                    roi_fraction=args.roi_fraction,
                    quick=args.quick,
                )
                patches = got if patches is None else patches
                rows.append(row)
            alone[backbone] = model_alone(
                model,
                card,
                patches,
                repeat=3 if (args.quick or heavy) else 20,
                jit=gradcam_jit(ScanConfig().jit_compile),  # compiled where the scan compiles
            )
            print(json.dumps({"backbone": backbone, "model_alone": alone[backbone]}), flush=True)
            del model

    wall = time.perf_counter() - t_run
    print_table(rows, alone)
    machine = machine_end(start)
    warn_if_contended_at_end(machine)
    report = {
        "benchmark": "scan_slide end-to-end vs model-only throughput (untrained models)",
        "quick": args.quick,
        "machine": machine,
        "patch": PATCH,
        "patch_mpp": PATCH_MPP,
        "batch_size": BATCH,
        "scan_config": "ScanConfig() defaults except gradcam and workers (Grad-CAM on: the dense "
        "slide map); batch norms folded; one PatchScorer.from_config per (backbone, Grad-CAM "
        "mode), reused; warm-up scans untimed",
        "definitions": {
            "e2e_patches_per_s": "n_scored / timings.total_s",
            "model_time_s": "timings.model_s (inside the scorer calls) + "
            "timings.gradcam_map_model_s (the dense map's model time; Grad-CAM on)",
            "model_patches_per_s": "n_scored / model_time_s",
            "ratio_e2e_over_model": "model_time_s / total_s (1.0 = the scan is the model only)",
            "not_model_in_inference_s": "inference_s - model_s: waiting for reads, stitching",
        },
        "skipped": skipped,
        "models": models,
        "slides": rows,
        "model_alone": alone,
        "wall_s": round(wall, 1),
    }
    write_json_atomic(out, report)
    print(f"wrote {out} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
