"""Benchmark: a cohort scanned serially against the same cohort on ``--cluster local:N``.

Both runs are the command a user types (``wsi-saliency scan SLIDES --model M --out OUT -q``,
then the same with ``--cluster local:N``), each in a fresh process, timed from start to exit:
so the cluster's wall time includes starting the scheduler and the N worker processes, each
worker importing the Keras backend and loading the model once, and the client's scheduling.
Per slide, ``cohort.csv`` gives the seconds spent scanning it and writing its outputs
(``seconds``); from those:

- ``ratio`` = serial wall / cluster wall (> 1: the cluster is faster);
- ``overhead_per_slide_s`` = (N x cluster wall - sum of the cluster's per-slide seconds) /
  slides: the worker time not spent on a slide (start-up, imports, model loads, scheduling,
  idle workers at the end), spread over the slides;
- ``scheduler_round_trip_ms``: the scheduler's own cost per task, from ``slides`` no-op tasks
  submitted one per slide (as the cohort submits them) on a warm ``local:N`` cluster, and
  ``cluster_start_s``, how long that cluster took to start.

The slides: ``--slides`` synthetic slides (``wsi_saliency.synthetic.slides``, seeded, one
lesion each, ``--size`` level-0 px at 0.486 um/px) written to a temporary folder first (not
timed); the model: an untrained ``--backbone`` (tiny by default) saved with its card, or
``--model``. The outputs of the two runs are compared (every ``scan.h5`` dataset, bit for bit).

Not a test. Full run (8 slides, what the README quotes; run it on a quiet machine):
``python benchmarks/bench_cluster.py``; a quick check of the script: ``--quick`` (3 small
slides). Results go to ``benchmarks/results/cluster.json`` (``--quick``: ``cluster-quick.json``).
"""

from __future__ import annotations

import argparse
import csv
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
RESULTS = REPO / "benchmarks" / "results"
MPP = 0.486

from _machine import (  # noqa: E402
    machine_end,
    machine_start,
    warn_if_contended_at_end,
    warn_if_contended_at_start,
    write_json_atomic,
)


def make_slides(folder: Path, n: int, size_xy: tuple[int, int]) -> list[Path]:
    """``n`` seeded synthetic slides of ``size_xy`` level-0 px, a lesion each, in ``folder``."""
    from wsi_saliency.synthetic.slides import write_synthetic_slide
    from wsi_saliency.synthetic.tissue import random_blob_polygon

    w, h = size_xy
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        centre = (w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65))
        lesion = random_blob_polygon(
            rng, centre, min(w, h) * rng.uniform(0.08, 0.18), n_vertices=32
        )
        tissue = np.array(
            [[0.08 * w, 0.1 * h], [0.93 * w, 0.12 * h], [0.9 * w, 0.9 * h], [0.1 * w, 0.88 * h]]
        )
        info = write_synthetic_slide(
            folder / f"slide_{i:02d}.tif",
            l0_size_xy=size_xy,
            mpp=MPP,
            lesions=[lesion],
            seed=i,
            tile=256,
            levels=(1, 4, 16),
            tissue=[tissue],
            pen_mark=False,
            dark_area=False,
        )
        paths.append(info.path)
    return paths


def make_model(folder: Path, backbone: str) -> Path:
    """An untrained ``backbone`` saved with its card (a user's model file, as far as a scan
    can tell)."""
    import keras

    from wsi_saliency.config import ModelConfig
    from wsi_saliency.model.build import build_model
    from wsi_saliency.model.io import ModelCard, save_model, software_versions

    keras.utils.set_random_seed(0)
    cfg = ModelConfig(backbone=backbone, weights="none")
    card = ModelCard.for_config(cfg, versions=software_versions())
    model = build_model(cfg)
    return save_model(model, card, folder / f"{backbone}.keras")


def timed_scan(slides: list[Path], model: Path, out: Path, *extra: str) -> dict:
    """``wsi-saliency scan`` in a fresh process: wall seconds, exit code, cohort rows."""
    cmd = [sys.executable, "-m", "wsi_saliency", "scan", *map(str, slides)]
    cmd += ["--model", str(model), "--out", str(out), "-q", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = list(csv.DictReader((out / "cohort.csv").open()))
    seconds = [float(r["seconds"]) for r in rows]
    return {
        "command": " ".join(["wsi-saliency", *cmd[3:]]),
        "wall_s": round(wall, 2),
        "slides_done": sum(r["status"] == "done" for r in rows),
        "patches": sum(int(r["patches_scored"] or 0) for r in rows),
        "slide_seconds_sum": round(sum(seconds), 2),
        "slide_seconds": [round(s, 2) for s in seconds],
    }


def scheduler_round_trip(n_workers: int, n_tasks: int) -> dict:
    """Start ``local:N`` (timed), then ``n_tasks`` no-op tasks, one submit each and
    ``as_completed`` as the cohort does, on the warm cluster."""
    from distributed import as_completed

    from wsi_saliency.scan.distributed import cluster_client

    t0 = time.perf_counter()
    with cluster_client(f"local:{n_workers}", log=lambda m: None) as client:
        start_s = time.perf_counter() - t0
        client.submit(int, 0, pure=False).result()  # warm
        t0 = time.perf_counter()
        futures = [client.submit(int, i, pure=False) for i in range(n_tasks)]
        for f in as_completed(futures):
            f.result()
        tasks_s = time.perf_counter() - t0
    return {
        "cluster_start_s": round(start_s, 2),
        "scheduler_round_trip_ms": round(1000 * tasks_s / n_tasks, 2),
    }


def same_outputs(a: Path, b: Path, slides: list[Path]) -> bool:
    import h5py

    for slide in slides:
        with (
            h5py.File(a / slide.stem / "scan.h5") as fa,
            h5py.File(b / slide.stem / "scan.h5") as fb,
        ):
            if sorted(fa) != sorted(fb):
                return False
            for key in fa:
                if fa[key][()].tobytes() != fb[key][()].tobytes():
                    return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slides", type=int, default=8, help="slides in the cohort (default 8)")
    p.add_argument("--size", default="4000x3000", help="level-0 WxH of each slide")
    p.add_argument("--workers", type=int, default=2, help="N of --cluster local:N")
    p.add_argument("--backbone", default="tiny", help="untrained model to scan with")
    p.add_argument("--model", type=Path, help="scan with this model.keras instead")
    p.add_argument("--repeat", type=int, default=1, help="runs of each mode; the best is kept")
    p.add_argument("--quick", action="store_true", help="3 slides of 1024x768: checks the script")
    p.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/...)")
    args = p.parse_args()
    if args.quick:
        args.slides, args.size = 3, "1024x768"
    size = tuple(int(v) for v in args.size.lower().split("x"))
    result_path = args.out or RESULTS / ("cluster-quick.json" if args.quick else "cluster.json")

    start = machine_start()
    warn_if_contended_at_start(start)
    with tempfile.TemporaryDirectory(prefix="bench_cluster-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        slides = make_slides(tmp / "slides", args.slides, size)
        print(
            f"{len(slides)} slides of {size[0]} x {size[1]} px in {time.perf_counter() - t0:.1f} s"
        )
        model = args.model or make_model(tmp, args.backbone)
        runs: dict[str, list[dict]] = {"serial": [], "cluster": []}
        for k in range(args.repeat):  # alternate, so both modes see the same background load
            for mode, extra in (
                ("serial", ()),
                ("cluster", ("--cluster", f"local:{args.workers}")),
            ):
                run = timed_scan(slides, model, tmp / f"{mode}-{k}", *extra)
                print(f"{mode}: {run['wall_s']} s ({run['slide_seconds_sum']} s in slides)")
                runs[mode].append(run)
        serial = min(runs["serial"], key=lambda r: r["wall_s"])
        cluster = min(runs["cluster"], key=lambda r: r["wall_s"])
        identical = same_outputs(tmp / "serial-0", tmp / "cluster-0", slides)
        scheduler = scheduler_round_trip(args.workers, args.slides)
    n = args.workers
    result = {
        "what": (
            f"a cohort of {args.slides} slides, serial against --cluster local:{n}, each the "
            "wsi-saliency scan command in a fresh process, wall time to exit"
        ),
        "slides": args.slides,
        "slide_size_l0_xy": list(size),
        "slide_mpp": MPP,
        "model": str(args.model) if args.model else f"{args.backbone} (untrained)",
        "workers": n,
        "serial": serial,
        "cluster": cluster,
        "ratio_serial_over_cluster": round(serial["wall_s"] / cluster["wall_s"], 3),
        "overhead_per_slide_s": round(
            (n * cluster["wall_s"] - cluster["slide_seconds_sum"]) / args.slides, 2
        ),
        **scheduler,
        "identical_scan_h5": identical,
        "all_runs": runs,
    }
    result["machine"] = machine_end(start, _versions())
    write_json_atomic(result_path, result)
    print(
        f"serial {serial['wall_s']} s, local:{n} {cluster['wall_s']} s: ratio "
        f"{result['ratio_serial_over_cluster']}; overhead {result['overhead_per_slide_s']} s "
        f"per slide; scheduler round trip {scheduler['scheduler_round_trip_ms']} ms; cluster "
        f"start {scheduler['cluster_start_s']} s; identical outputs: {identical} -> {result_path}"
    )
    warn_if_contended_at_end(result["machine"])


def _versions() -> dict:
    import dask
    import distributed
    import keras

    return {
        "keras": keras.__version__,
        "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "dask": dask.__version__,
        "distributed": distributed.__version__,
    }


if __name__ == "__main__":
    main()
