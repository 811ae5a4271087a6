"""Benchmark: the Camelyon16 protocol (slide ROC AUC, lesion FROC) on synthetic slides that
carry real Camelyon16 lesion outlines.

Four tumour slides get the lesions of the real Camelyon16 annotations in
``../shared/data/camelyon16-ncrf/jsons`` (Tumor_001, 093 + 081, 098, 107: macro-metastases,
micro-metastases and isolated-tumour-cell-sized outlines), scaled physically to the slide
(same size in microns) and placed inside its tissue by ``place_lesions`` (their relative
positions and the exclusion outlines of Tumor_107 are not kept); four normal slides have no
lesion (but a pen mark and a dark area on the glass, as every synthetic slide). Two slides are
at 0.243 um/px (Camelyon16's resolution), six at 0.486, so the evaluation grid (7.776 um per
mask pixel) is checked at two slide resolutions.

Steps: write the slides (``write_synthetic_slide``), ``wsi-saliency scan`` them with the
given model (stride 48 model px = 46.7 um heatmap cells, no Grad-CAM), ``wsi-saliency
evaluate-slides`` (default settings), then the same evaluation with other detection settings
through the library, to compare, on these heatmaps and on degraded copies of them (logit
scaled down plus smoothed noise: a weaker model, so that misses and false positives
appear). Writes ``benchmarks/results/camelyon16_synthetic.json`` and
``docs/camelyon16_synthetic_{froc,roc}.png`` and the FROC plot of the first degraded
set, ``docs/camelyon16_synthetic_froc_degraded.png``.

Not a test: ``python benchmarks/camelyon16_synthetic.py [--model M] [--work DIR]``; the default
model is the demo's (``wsi-saliency demo /tmp/demo_out`` trains it). Skips, with a message,
when ``../shared/data`` is absent. About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
SHARED = Path(os.environ.get("WSI_SALIENCY_SHARED_DATA", REPO.parent / "shared" / "data"))
JSONS = SHARED / "camelyon16-ncrf" / "jsons"
RESULT = REPO / "benchmarks" / "results" / "camelyon16_synthetic.json"
DOCS = REPO / "docs"

from _machine import machine_end as _machine_end  # noqa: E402
from _machine import machine_start, write_json_atomic  # noqa: E402

# name, level-0 mpp, level-0 (width, height), Camelyon16 annotation files of its lesions
SLIDES: list[tuple[str, float, tuple[int, int], list[str]]] = [
    ("tumour_001", 0.486, (8192, 6144), ["Tumor_001"]),
    ("tumour_093_081", 0.486, (8192, 6144), ["Tumor_093", "Tumor_081"]),
    ("tumour_098", 0.243, (8192, 6144), ["Tumor_098"]),
    ("tumour_107", 0.486, (8192, 6144), ["Tumor_107"]),
    ("normal_1", 0.486, (8192, 6144), []),
    ("normal_2", 0.486, (8192, 6144), []),
    ("normal_3", 0.243, (8192, 6144), []),
    ("normal_4", 0.486, (8192, 6144), []),
]
# Detection settings compared (the first is evaluate-slides' default).
VARIANTS = [
    ("components", 0.5),
    ("components", 0.9),
    ("maxima", 0.5),
    ("maxima", 0.9),
]
# Degraded heatmaps (a weaker model): logit * gain + spatially smoothed Gaussian noise of
# standard deviation sigma (seeded), then the same evaluation.
DEGRADATIONS = [(0.4, 1.5), (0.3, 2.0)]


def degrade_scans(src: Path, dst: Path, gain: float, sigma: float, seed: int = 0) -> None:
    """Copy every ``scan.h5`` of ``src`` into ``dst`` with a degraded probability heatmap
    (and patch probabilities = the heatmap's scored cells, so slide scores follow)."""
    import h5py
    from scipy import ndimage as ndi

    for k, h5 in enumerate(sorted(src.glob("*/scan.h5"))):
        out = dst / h5.parent.name / "scan.h5"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(h5, out)
        with h5py.File(out, "r+") as f:
            hm = f["heatmap_prob"][()]
            p = np.clip(hm, 1e-4, 1 - 1e-4)
            noise = ndi.gaussian_filter(np.random.default_rng([seed, k]).normal(size=hm.shape), 1)
            z = gain * np.log(p / (1 - p)) + noise * (sigma / noise.std())
            new = (1 / (1 + np.exp(-z))).astype(np.float32)
            new[~np.isfinite(hm)] = np.nan
            f["heatmap_prob"][...] = new
            del f["prob"]
            f["prob"] = new[np.isfinite(new)]


def compare_detections(
    scans: Path, ref: Path, ann: Path, versions: dict, log, froc_png: Path | None = None
) -> list[dict]:
    """Evaluate every detection variant; the FROC plot of the first goes to ``froc_png``."""
    from wsi_saliency.slide_eval import EvalConfig, evaluate_slides
    from wsi_saliency.slide_eval.evaluate import write_froc_png

    rows = []
    for method, threshold in VARIANTS:
        cfg = EvalConfig(detection_method=method, detection_threshold=threshold)
        result = evaluate_slides(scans, ref, ann, cfg, versions=versions)
        if froc_png is not None and not rows:
            write_froc_png(froc_png, result)
        m = result.metrics()
        c = m["counts"]
        rows.append(
            {
                "detections": method,
                "threshold": threshold,
                "froc": m["froc"],
                "froc_sensitivity": m["froc_sensitivity"],
                "slide_auc": m["slide_auc"],
                "detections_total": c["detections"],
                "false_positives": c["false_positives"],
                "lesions_hit": c["lesions_hit"],
            }
        )
        log(
            f"  {method} >= {threshold}: FROC {m['froc']:.4f}, {c['lesions_hit']}/"
            f"{c['lesions']} lesions, {c['false_positives']} FPs, slide AUC {m['slide_auc']:.3f}"
        )
    return rows


def write_slides(folder: Path, ann: Path, log) -> list[dict]:
    from wsi_saliency.errors import DataError
    from wsi_saliency.synthetic.slides import (
        CAMELYON16_MPP,
        load_camelyon16_polygons,
        make_tissue_polygons,
        place_lesions,
        write_synthetic_slide,
    )

    made = []
    for k, (name, mpp, size, sources) in enumerate(SLIDES):
        outlines = [a for src in sources for a in load_camelyon16_polygons(JSONS / f"{src}.json")]
        tumour = [a for a in outlines if a.is_tumour]
        for attempt in range(100):
            rng = np.random.default_rng([k, attempt])
            tissue = make_tissue_polygons(size, rng, tissue_fraction=0.5, n_blobs=2)
            try:
                lesions = place_lesions(
                    tumour, CAMELYON16_MPP, mpp, size, rng, tissue=tissue, margin_um=100.0
                )
            except DataError:
                continue
            break
        else:
            raise SystemExit(f"{name}: no layout fits its lesions in 100 attempts")
        t0 = time.perf_counter()
        info = write_synthetic_slide(
            folder / f"{name}.tif",
            l0_size_xy=size,
            mpp=mpp,
            lesions=lesions,
            seed=100 + k,
            tile=512,
            levels=(1, 4, 16),
            jpeg_quality=80,
            tissue=tissue,
        )
        if lesions:
            shutil.move(info.xml_path, ann / info.xml_path.name)
        else:
            info.xml_path.unlink()
        sizes_um = [
            [round(float(v), 1) for v in (p.max(axis=0) - p.min(axis=0)) * mpp] for p in lesions
        ]
        made.append(
            {
                "slide": name,
                "label": "Tumor" if lesions else "Normal",
                "mpp": mpp,
                "size_px": list(size),
                "size_mm": [round(size[0] * mpp / 1000, 2), round(size[1] * mpp / 1000, 2)],
                "lesion_sources": sources,
                "lesion_extents_um": sizes_um,
                "layout_attempt": attempt,
            }
        )
        log(f"{name}: {len(lesions)} lesions {sizes_um} ({time.perf_counter() - t0:.1f} s)")
    return made


def cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "wsi_saliency", *args]
    print("$ wsi-saliency " + " ".join(args), file=sys.stderr)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"wsi-saliency {args[0]} failed (exit {done.returncode})")
    return done


def machine_end(start: dict) -> dict:
    import keras
    import tensorflow as tf

    return _machine_end(
        start,
        {"keras": keras.__version__, "tensorflow": tf.__version__, "numpy": np.__version__},
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        type=Path,
        default=REPO / "demo_out" / "model" / "model.keras",
        help="The demo's sample model (default: demo_out/model/model.keras of the checkout).",
    )
    ap.add_argument("--work", type=Path, help="Keep slides and scans here (default: temporary).")
    ap.add_argument("--stride", type=int, default=48, help="Scan stride in model pixels.")
    args = ap.parse_args(argv)
    if not JSONS.is_dir():
        print(f"skipped: Camelyon16 polygons not found at {JSONS} (../shared/data is absent)")
        return 0
    if not args.model.is_file():
        print(f"model {args.model} not found: run `wsi-saliency demo demo_out` or pass --model")
        return 2
    start = machine_start()

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="c16synth-") as tmp:
        work = args.work or Path(tmp)
        slides, ann, scans = work / "slides", work / "annotations", work / "scans"
        for d in (slides, ann):
            d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        made = write_slides(slides, ann, log)
        t_generate = time.perf_counter() - t0
        ref = work / "reference.csv"  # Camelyon16 style: no header, names with extension
        ref.write_text("".join(f"{m['slide']}.tif,{m['label']}\n" for m in made))

        t0 = time.perf_counter()
        scan_args = ["scan", str(slides), "--model", str(args.model), "--out", str(scans)]
        cli(*scan_args, "--stride", str(args.stride), "--no-gradcam", "--quiet")
        t_scan = time.perf_counter() - t0

        t0 = time.perf_counter()
        evaluation = work / "evaluation"
        done = cli(
            "evaluate-slides",
            str(scans),
            "--reference",
            str(ref),
            "--annotations",
            str(ann),
            "--out",
            str(evaluation),
            "--json",
        )
        t_eval = time.perf_counter() - t0
        metrics = json.loads(done.stdout)
        for name in ("froc", "roc"):
            shutil.copyfile(evaluation / f"{name}.png", DOCS / f"camelyon16_synthetic_{name}.png")

        log("detection settings on the scanned heatmaps:")
        variants = compare_detections(scans, ref, ann, metrics["versions"], log)
        degraded = []
        for gain, sigma in DEGRADATIONS:
            log(f"degraded heatmaps (logit x {gain} + noise sd {sigma}):")
            dst = work / f"scans_degraded_{gain}_{sigma}"
            degrade_scans(scans, dst, gain, sigma)
            png = DOCS / "camelyon16_synthetic_froc_degraded.png" if not degraded else None
            rows = compare_detections(dst, ref, ann, metrics["versions"], log, png)
            degraded.append({"gain": gain, "noise_sd": sigma, "variants": rows})
        summaries = {
            p.parent.name: json.loads(p.read_text()) for p in sorted(scans.glob("*/summary.json"))
        }

    result = {
        "benchmark": "camelyon16_synthetic",
        "what": (
            "wsi-saliency scan + evaluate-slides on 4 tumour slides with real Camelyon16 lesion "
            "outlines and 4 normal slides, all synthetic"
        ),
        "command": " ".join(["python", "benchmarks/camelyon16_synthetic.py", *(argv or [])]),
        "model": str(args.model),
        "scan": {"stride_model_px": args.stride, "gradcam": False},
        "slides": [
            {**m, "score_max": summaries.get(m["slide"], {}).get("score_max")} for m in made
        ],
        "slide_auc": metrics["slide_auc"],
        "slide_auc_ci95": metrics["slide_auc_ci95"],
        "froc": metrics["froc"],
        "froc_sensitivity": metrics["froc_sensitivity"],
        "counts": metrics["counts"],
        "per_slide": metrics["slides"],
        "config": metrics["config"],
        "protocol": metrics["protocol"],
        "detection_variants": variants,
        "degraded_heatmaps": degraded,
        "timings_s": {
            "generate": round(t_generate, 1),
            "scan": round(t_scan, 1),
            "evaluate_cli": round(t_eval, 1),
        },
        "versions": metrics["versions"],
        "machine": machine_end(start),
    }
    write_json_atomic(RESULT, result)
    lo, hi = metrics["slide_auc_ci95"]
    print(
        f"slide AUC {metrics['slide_auc']:.4f} (95% CI {lo:.4f}-{hi:.4f}); FROC "
        f"{metrics['froc']:.4f} {metrics['froc_sensitivity']} -> {RESULT}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
