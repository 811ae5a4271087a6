"""Peak memory of ``wsi-saliency scan`` (tiny model) on the large benchmark slides.

Each slide written by ``benchmarks/make_large_slides.py`` is scanned in its own process
(``python -m wsi_saliency scan SLIDE --model M --out TMP --quiet``); its peak resident set
size comes from ``wait4`` (the kernel's ``ru_maxrss`` of that process alone). Recorded per
slide: peak RSS, wall time, the scan's own stage timings, patches scored / candidates, and
the sizes of what grows with the slide's area: the probability and Grad-CAM heatmaps (cells)
and the tissue thumbnail (px). A scan of the sample slide gives the baseline (the Python,
TensorFlow and model footprint); the JSON then gives (peak - baseline) per Grad-CAM cell.

    python benchmarks/bench_memory.py                       # every cached slide
    python benchmarks/bench_memory.py --only c16-25k c16-50kx100k-flat --timeout 1800

``--model``: a model.keras (default: an untrained ``tiny`` model built once into a temporary
folder; the weights do not change memory or speed). Results: ``benchmarks/results/memory.json``
(merged by slide name), with the machine.
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

from _machine import machine_end, machine_start, warn_if_contended_at_start, write_json_atomic
from make_large_slides import SLIDES, default_cache

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "slide" / "sample_slide.tif"


def tiny_model(folder: Path) -> Path:
    """An untrained ``tiny`` model with its card (PCam's 96 px at 0.972 um/px)."""
    code = (
        "import sys; from wsi_saliency.config import ModelConfig;"
        "from wsi_saliency.model.build import build_model;"
        "from wsi_saliency.model.io import ModelCard, save_model;"
        "cfg = ModelConfig(backbone='tiny', weights='none');"
        "save_model(build_model(cfg), ModelCard.for_config(cfg), sys.argv[1])"
    )
    path = folder / "model.keras"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=_env())
    return path


def _env() -> dict:
    return dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")


def scan_once(slide: Path, model: Path, out: Path, timeout_s: float, extra: list[str]) -> dict:
    """Scan ``slide`` in a child process; its peak RSS, wall time, exit code and outputs."""
    cmd = [sys.executable, "-m", "wsi_saliency", "scan", str(slide), "--model", str(model)]
    cmd += ["--out", str(out), "--quiet", "--overwrite", *extra]
    t0 = time.perf_counter()
    with open(out.parent / f"{slide.stem}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env())
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout_s:
                proc.kill()
                timed_out = True
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    row = {
        "command": " ".join(cmd[1:]),
        "exit_code": proc.returncode,
        "timed_out": timed_out,
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports kilobytes
    }
    folder = out / slide.stem
    if proc.returncode != 0:
        tail = (out.parent / f"{slide.stem}.log").read_text().strip().splitlines()[-3:]
        row["error_tail"] = tail
        return row
    summary = json.loads((folder / "summary.json").read_text())
    import h5py

    with h5py.File(folder / "scan.h5") as f:
        row["heatmap_prob_shape"] = list(f["heatmap_prob"].shape)
        row["heatmap_gradcam_shape"] = list(f["heatmap_gradcam"].shape)
        row["tissue_mask_shape"] = list(f["tissue_mask"].shape)
    row["patches_scored"] = summary["patches_scored"]
    row["patches_candidates"] = summary["patches_candidates"]
    row["read_level"] = summary["read_level"]
    row["timings_s"] = summary["timings_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None, help="folder of the benchmark slides")
    ap.add_argument("--only", nargs="+", choices=[s.name for s in SLIDES])
    ap.add_argument("--model", type=Path, help="model.keras (default: an untrained tiny model)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per scan")
    ap.add_argument("--scan-args", default="", help="extra scan options, e.g. '--workers 2'")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/memory.json"))
    args = ap.parse_args()
    cache = args.cache or default_cache()
    extra = args.scan_args.split()
    previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
    rows = dict(previous.get("slides", {}))
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        model = args.model or tiny_model(work)
        baseline = previous.get("baseline")
        todo = [("baseline", SAMPLE)] + [
            (s.name, cache / f"{s.name}.tif")
            for s in SLIDES
            if not args.only or s.name in args.only
        ]
        for name, slide in todo:
            if not slide.is_file():
                print(f"{name}: {slide} not found (run make_large_slides.py), skipped")
                continue
            start = machine_start()
            warn_if_contended_at_start(start)
            print(f"{name}: scanning {slide}", flush=True)
            out = work / "out"
            row = scan_once(slide, model, out, args.timeout, extra)
            shutil.rmtree(out, ignore_errors=True)
            row["slide"] = str(slide)
            row["machine"] = machine_end(start, {})
            gib = row["peak_rss_bytes"] / 2**30
            print(f"{name}: exit {row['exit_code']}, peak RSS {gib:.2f} GiB, {row['wall_s']} s")
            if name == "baseline":
                baseline = row
            else:
                rows[name] = row
            if baseline and baseline.get("exit_code") == 0 and row.get("exit_code") == 0:
                if name != "baseline":
                    cells = row["heatmap_gradcam_shape"][0] * row["heatmap_gradcam_shape"][1]
                    grown = row["peak_rss_bytes"] - baseline["peak_rss_bytes"]
                    row["baseline_peak_rss_bytes"] = baseline["peak_rss_bytes"]
                    row["peak_over_baseline_bytes"] = grown
                    row["gradcam_cells"] = cells
                    row["peak_over_baseline_per_gradcam_cell"] = round(grown / cells, 1)
            write_json_atomic(
                args.json,
                {
                    "benchmark": "bench_memory",
                    "cache": str(cache),
                    "baseline": baseline,
                    "slides": rows,
                },
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
