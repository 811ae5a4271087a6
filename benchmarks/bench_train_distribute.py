"""Benchmark: the sample recipe trained on one device and data parallel on two, per backend.

``configs/sample.yaml`` (tiny backbone from scratch, 6 epochs on ``sample_data/pcam``) is
trained with ``train.distribute=off`` and then ``auto``, each backend in its own process with
two virtual CPU devices (TensorFlow: two logical CPU devices; JAX:
``XLA_FLAGS=--xla_force_host_platform_device_count=2``): what ``auto`` does with two GPUs, on
this CPU. Recorded per run: the final valid AUC and accuracy (128 patches), the wall time,
and ``run.json``'s ``distribute`` (strategy, devices). The figure that matters is the AUC of
the two-device run against the one-device run's (``tests/test_train_distribute.py`` allows
0.05 below); wall times on two virtual devices of one 2-core CPU say nothing about GPUs.

Not a test: ``python benchmarks/bench_train_distribute.py [--backend tensorflow --backend jax]``
(15-25 min on this CPU, JAX most of it); results go to
``benchmarks/results/train_distribute.json``.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULT = REPO / "benchmarks" / "results" / "train_distribute.json"

from _machine import (  # noqa: E402
    machine_end,
    machine_start,
    warn_if_contended_at_end,
    warn_if_contended_at_start,
    write_json_atomic,
)


def child(out: Path, mode: str) -> None:
    """In the backend's own process: two virtual devices, then the sample recipe."""
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    from wsi_saliency.config import load_config
    from wsi_saliency.training import train

    cfg = load_config(
        REPO / "configs" / "sample.yaml",
        [
            f"data.path={REPO / 'sample_data' / 'pcam'}",
            "train.verbose=0",
            f"train.distribute={mode}",
        ],
    )
    train(cfg, out, log=lambda m: print(m, flush=True))


def run(backend: str, mode: str, out: Path) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if backend == "jax":
        env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(out), mode],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{backend} {mode} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((out / "run.json").read_text())
    return {
        "valid_auc": metrics["auc"],
        "valid_accuracy": metrics["accuracy"],
        "best_epoch": metrics["best_epoch"],
        "wall_s": round(wall, 1),
        "train_wall_s": record["wall_s"],
        "distribute": record["distribute"],
        "log": done.stdout.splitlines(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", action="append", choices=["tensorflow", "jax"])
    p.add_argument("--child", nargs=2, metavar=("OUT", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return
    backends = args.backend or ["tensorflow", "jax"]
    start = machine_start()
    warn_if_contended_at_start(start)
    result: dict = {
        "what": "configs/sample.yaml on one device (off) and on two virtual CPU devices (auto)",
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_train_distribute-") as tmp:
        for backend in backends:
            runs = {
                mode: run(backend, mode, Path(tmp) / backend / mode) for mode in ("off", "auto")
            }
            one, two = runs["off"]["valid_auc"], runs["auto"]["valid_auc"]
            runs["auc_two_minus_one"] = round(two - one, 4)
            result["backends"][backend] = runs
            print(f"{backend}: valid AUC one device {one:.4f}, two devices {two:.4f}", flush=True)
    import keras

    result["machine"] = machine_end(start, {"keras": keras.__version__})
    write_json_atomic(RESULT, result)
    print(f"-> {RESULT}")
    warn_if_contended_at_end(result["machine"])


if __name__ == "__main__":
    main()
