"""Benchmark: the same training and scanning work on each Keras backend, side by side, on this
machine, and the compiled step (XLA / ``jax.jit`` / ``torch.compile``) against the plain one.

Configurations (each in its own child process: the backend is fixed when Keras is imported):

- ``tensorflow`` with ``jit_compile`` off and on (XLA), for the train step and for Grad-CAM;
- ``jax`` (Keras' JAX trainer and our Grad-CAM compiled with ``jax.jit``);
- ``torch`` with ``jit_compile`` off (eager) and, for the train step, on (``torch.compile``).

Whether Keras really compiled a train step is recorded (``jit_compiled``): it refuses for a
model holding layers with ``supports_jit=False``, which Keras' geometric augmentation layers
say (TensorFlow's XLA cannot compile their ``ImageProjectiveTransformV3``). So on TensorFlow and
PyTorch the "jit on" train step runs as "jit off"; on JAX ``training.make_augmenter`` declares
them compilable (their JAX code is), and ``results/backends-jax-train-uncompiled.json`` is the
run from before that fix.

Each configuration measures, with models built ``weights="none"`` (the weights do not change
the cost) and real batches of ``sample_data/pcam``:

- train step: patches/s of ``train_on_batch`` of the wrapper ``training.train`` fits
  (augmentation -> model; ``bench_training.build_training_model``), batch 64, for ``tiny`` and
  ``resnet50``; the first step (tracing, compiling) is reported apart;
- Grad-CAM alone: patches/s of ``GradCam`` on one in-memory batch of 64 (``tiny``,
  ``resnet50``; ``bench_scan.model_alone``);
- scan end to end: ``scan_slide`` of ``sample_data/slide/sample_slide.tif`` with the ``tiny``
  model, Grad-CAM on, after one warm-up scan: end-to-end and model-only patches/s.

The configurations are interleaved over ``--rounds`` rounds (A B C ..., A B C ...) so that
load from other processes falls on all of them alike, and the best round of each is kept;
ratios are taken against TensorFlow (XLA off, the default on a CPU) from the same run.
Not a test: ``python benchmarks/bench_backends.py [--quick]``; results go to
``benchmarks/results/backends.json`` (with the machine and what else was running).
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

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _machine import machine_end, machine_start, write_json_atomic  # noqa: E402

CONFIGS = (
    ("tensorflow", "off"),
    ("tensorflow", "on"),
    ("jax", "on"),
    ("torch", "off"),
    ("torch", "on"),
)
BASELINE = "tensorflow/jit off"
TRAIN_STEPS = {"tiny": 10, "resnet50": 3}
QUICK_TRAIN_STEPS = {"tiny": 3, "resnet50": 1}
GRADCAM_REPEAT = {"tiny": 10, "resnet50": 3}


def label(backend: str, jit: str) -> str:
    return f"{backend}/jit {jit}"


# ---------------------------------------------------------------- child


def child(backend: str, jit: str, quick: bool, out: Path) -> None:
    """Run every measurement of one configuration and write it as JSON to ``out``."""
    import keras

    assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
    from bench_scan import SAMPLE_SLIDE, model_alone, saved_model, scan_once
    from bench_training import bench_steps, build_training_model, sample_batches

    from wsi_saliency.backend import device_info
    from wsi_saliency.config import ScanConfig
    from wsi_saliency.scan.pipeline import PatchScorer

    steps = QUICK_TRAIN_STEPS if quick else TRAIN_STEPS
    torch_compile = backend == "torch" and jit == "on"
    if torch_compile:
        # torch.compile of the train step recompiles at almost every step (about as slow as
        # the first step, seen in a first run), so a few tiny-model steps tell enough.
        steps = {"tiny": 3}
    result: dict = {"backend": backend, "jit": jit, "device": device_info().describe()}
    batches = sample_batches(REPO / "sample_data" / "pcam", 8)

    result["train_step"] = {}
    for backbone, n in steps.items():
        keras.backend.clear_session()
        t0 = time.perf_counter()
        wrapper = None
        try:
            wrapper, info = build_training_model(backbone, jit_compile=jit)
            row = {**info, **bench_steps(wrapper, batches, n)}
        except Exception as exc:  # noqa: BLE001 - a backend that cannot compile is a result
            row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        result["train_step"][backbone] = row
        print(json.dumps({"config": label(backend, jit), "train": backbone, **row}), flush=True)
        del wrapper

    if torch_compile:
        # Grad-CAM on PyTorch runs eagerly whatever jit_compile says: nothing else to measure.
        result["gradcam_alone"] = result["scan_sample_slide_tiny"] = None
        result["versions"] = _versions(backend)
        out.write_text(json.dumps(result, indent=2))
        return

    patches = np.concatenate([x for x, _ in batches])[:64].astype(np.uint8)
    result["gradcam_alone"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, repeat in GRADCAM_REPEAT.items():
            keras.backend.clear_session()
            model, card, info = saved_model(backbone, Path(tmp))
            row = {
                **info,
                **model_alone(model, card, patches, 2 if quick else repeat, jit=jit == "on"),
            }
            result["gradcam_alone"][backbone] = row
            print(
                json.dumps({"config": label(backend, jit), "gradcam": backbone, **row}), flush=True
            )

        keras.backend.clear_session()
        model, card, _ = saved_model("tiny", Path(tmp))
        cfg = ScanConfig(workers=2, jit_compile=jit)
        scorer = PatchScorer.from_config(model, card, cfg)
        t0 = time.perf_counter()
        scan_once(SAMPLE_SLIDE, model, card, cfg, scorer, None)
        cold = time.perf_counter() - t0
        runs = [
            scan_once(SAMPLE_SLIDE, model, card, cfg, scorer, None)
            for _ in range(1 if quick else 2)
        ]
        best = min(runs, key=lambda r: r["timings_s"]["total_s"])
        best.pop("result")
        result["scan_sample_slide_tiny"] = {"cold_total_s": round(cold, 2), **best}
        print(json.dumps({"config": label(backend, jit), "scan": best}), flush=True)

    result["versions"] = _versions(backend)
    out.write_text(json.dumps(result, indent=2))


def _versions(backend: str) -> dict:
    """Keras and the backend library (PyTorch with its thread count)."""
    import keras

    versions = {"keras": keras.__version__}
    if backend == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    elif backend == "jax":
        import jax

        versions["jax"] = jax.__version__
    else:
        import torch

        versions["torch"] = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    return versions


# ---------------------------------------------------------------- parent


def run_child(backend: str, jit: str, quick: bool, tmp: Path) -> dict:
    out = tmp / f"{backend}-{jit}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, __file__, "--child", backend, jit, str(out)] + (
        ["--quick"] if quick else []
    )
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        print("   ", line[:240], flush=True)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"backend": backend, "jit": jit, "error": tail[:400], "wall_s": round(wall, 1)}
    data = json.loads(out.read_text())
    data["wall_s"] = round(wall, 1)
    return data


def _score(run: dict) -> float:
    """Total seconds of a round's timed work (lower is better) to pick a configuration's best."""
    if "error" in run:
        return float("inf")
    scan = run["scan_sample_slide_tiny"]
    steps = sum(r.get("step_s_median", 0.0) for r in run["train_step"].values() if "error" not in r)
    return steps + (scan["timings_s"]["total_s"] if scan else 0.0)


def figures(run: dict) -> dict:
    """The headline figures of one configuration's run (patches/s and first-step seconds)."""
    out: dict = {}
    for backbone in ("tiny", "resnet50"):
        t = run["train_step"].get(backbone, {})
        out[f"train_{backbone}_patches_per_s"] = t.get("patches_per_s")
        out[f"train_{backbone}_first_step_s"] = t.get("first_step_s")
        cam = (run["gradcam_alone"] or {}).get(backbone, {})
        out[f"gradcam_{backbone}_patches_per_s"] = cam.get("gradcam_patches_per_s")
    s = run["scan_sample_slide_tiny"] or {}
    out["scan_tiny_e2e_patches_per_s"] = s.get("e2e_patches_per_s")
    out["scan_tiny_model_patches_per_s"] = s.get("model_patches_per_s")
    out["scan_tiny_cold_s"] = s.get("cold_total_s")
    return out


def summary_rows(best: dict[str, dict]) -> list[dict]:
    """One row per configuration; ``*_vs_baseline``: its patches/s over the baseline's."""
    base = figures(best[BASELINE]) if "error" not in best.get(BASELINE, {"error": 1}) else {}
    rows = []
    for name, run in best.items():
        if "error" in run:
            rows.append({"config": name, "error": run["error"]})
            continue
        row = {"config": name, **figures(run)}
        for key, value in list(row.items()):
            ref = base.get(key)
            if key.endswith("patches_per_s") and value and ref:
                row[key.replace("patches_per_s", "vs_baseline")] = round(value / ref, 2)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    cols = [
        ("config", 18),
        ("train_tiny_patches_per_s", 11),
        ("train_resnet50_patches_per_s", 11),
        ("gradcam_tiny_patches_per_s", 11),
        ("gradcam_resnet50_patches_per_s", 11),
        ("scan_tiny_e2e_patches_per_s", 11),
    ]
    print("config              train tiny  train r50  cam tiny   cam r50    scan e2e  (patches/s)")
    for row in rows:
        if "error" in row:
            print(f"{row['config']:<18}  error: {row['error'][:80]}")
            continue
        print("  ".join(f"{row.get(c, '')!s:<{w}}" for c, w in cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few steps only (a smoke run)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", nargs=3, metavar=("BACKEND", "JIT", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "backends.json")
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.quick, Path(args.child[2]))
        return

    start = machine_start()
    t_start = time.perf_counter()
    rounds: dict[str, list[dict]] = {label(b, j): [] for b, j in CONFIGS}
    result = {
        "benchmark": "train step, Grad-CAM and scan throughput per Keras backend, compiled or not",
        "quick": args.quick,
        "rounds": args.rounds,
        "baseline": BASELINE,
        "command": "python benchmarks/bench_backends.py" + (" --quick" if args.quick else ""),
        "complete": False,
        "every_round": rounds,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for backend, jit in CONFIGS:
                print(f"== round {i + 1}/{args.rounds}: {label(backend, jit)}", flush=True)
                rounds[label(backend, jit)].append(run_child(backend, jit, args.quick, Path(tmp)))
                write_json_atomic(args.json, result)  # what has run so far, if the run dies
    best = {name: min(runs, key=_score) for name, runs in rounds.items()}
    rows = summary_rows(best)
    print_table(rows)
    result.update(
        complete=True,
        machine=machine_end(start, {}),
        summary=rows,
        best_round=best,
        all_rounds_score_s={k: [round(_score(r), 3) for r in v] for k, v in rounds.items()},
        wall_s=round(time.perf_counter() - t_start, 1),
    )
    result.pop("every_round")
    write_json_atomic(args.json, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
