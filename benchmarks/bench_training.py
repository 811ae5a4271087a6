"""Benchmark: is the training input pipeline ever what the model waits for?

Measures in one run, on this machine:

- "pipeline": patches/s of ``prefetch(epoch_batches(split, 64, shuffle=True, seed=0,
  buffer_chunks=8))``, the iterator ``training.train`` feeds to ``fit``, consumed as fast as
  possible (nothing else running), on ``sample_data/pcam`` (800 patches, epochs looped) and on
  the converted real PCam patches of ``../shared/data/pcam-ai4all`` when present;
- "step": patches/s of ``train_on_batch`` on in-memory batches of the real training model
  (``Preprocess -> backbone -> head`` wrapped behind the augmentation layers, compiled like
  ``training.train`` compiles it) for ``tiny``, ``mobilenetv2`` (alpha 0.35) and ``resnet50``,
  all ``weights="none"``, batch 64, 96 x 96 x 3; the first step (tracing, compiling) is
  reported apart, then 2 warm-up steps, then the timed steps;
- "fed": the same steps fed by the real pipeline (``next()`` on the prefetched iterator
  between steps) across one shuffle-group refill, reporting the time spent blocked on
  ``next()``: with only two cores the reader threads compete with the step for the CPU,
  which the isolated figures cannot show;
- "simulated consumer": the pipeline feeding a 20 ms step that leaves the CPU free
  (``time.sleep``, what a GPU step looks like to the host), over about two shuffle groups:
  the average rate hides a pause at every group refill, which a fast consumer waits for;

and the ratio pipeline / step per data set and backbone (it must be >> 1).
Not a test: ``python benchmarks/bench_training.py [--quick]``; results go to
``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCH = 64
PATCH = 96
BUFFER_CHUNKS = 8  # epoch_batches' shuffle group, in chunks
SHARED_PCAM = REPO.parent / "shared" / "data" / "pcam-ai4all"
BACKBONES = ("tiny", "mobilenetv2", "resnet50")
MOBILENET_ALPHA = 0.35

# Timed train_on_batch steps per backbone (after the first step and 2 warm-up steps).
STEPS = {"tiny": 30, "mobilenetv2": 20, "resnet50": 4}
FED_STEPS = {"tiny": 30, "mobilenetv2": 20}  # resnet50 is far too slow to starve
QUICK_STEPS = {"tiny": 2, "mobilenetv2": 2, "resnet50": 1}
WARMUP_STEPS = 2
# Consumer step times simulated with time.sleep (a GPU-speed step, the host CPU left free).
SIMULATED_STEPS_S = (0.02,)


# ---------------------------------------------------------------- machine

from _machine import (  # noqa: E402
    keras_versions,
    machine_start,
    warn_if_contended_at_end,
    warn_if_contended_at_start,
    write_json_atomic,
)
from _machine import machine_end as _machine_end  # noqa: E402


def machine_end(start: dict) -> dict:
    import h5py

    return _machine_end(start, keras_versions({"h5py": h5py.__version__}))


# ---------------------------------------------------------------- data


def datasets() -> tuple[list[tuple[str, Path]], list[str]]:
    """``[(name, PCam HDF5 folder)]`` and the reasons for what was skipped."""
    from wsi_saliency.data.folders import ensure_pcam

    found = [("sample_data/pcam", REPO / "sample_data" / "pcam")]
    skipped = []
    if not SHARED_PCAM.parent.is_dir():
        skipped.append(f"pcam-ai4all: {SHARED_PCAM.parent} is absent (a fresh clone): skipped")
    elif not SHARED_PCAM.is_dir():
        skipped.append(f"pcam-ai4all: {SHARED_PCAM} is absent: skipped")
    else:
        t0 = time.perf_counter()
        folder = ensure_pcam(SHARED_PCAM, progress=False)
        took = time.perf_counter() - t0
        if took > 1.0:
            print(f"converted {SHARED_PCAM} to PCam HDF5 in {took:.1f} s", flush=True)
        found.append(("pcam-ai4all", folder))
    for reason in skipped:
        print(reason, flush=True)
    return found, skipped


def group_batches(split) -> int:
    """Batches ``iter_batches`` emits per shuffle group: it reads ``BUFFER_CHUNKS`` chunks of
    ``read_rows`` rows, then emits them, then reads the next group (a refill pause)."""
    return max(1, min(split.n, BUFFER_CHUNKS * split.read_rows) // BATCH)


def bench_pipeline(name: str, folder: Path, *, min_seconds: float, min_batches: int) -> dict:
    """Patches/s of the training iterator, consumed with nothing in between; the gaps
    between batches show the refill pause at every shuffle-group boundary."""
    from wsi_saliency.data.pcam import open_pcam
    from wsi_saliency.training import epoch_batches, prefetch

    with open_pcam(folder, "train") as split:
        info = {
            "data": name,
            "folder": str(folder),
            "n_train": split.n,
            "read_rows": split.read_rows,
            "batches_per_shuffle_group": group_batches(split),
            "hdf5_chunks": list(split._x.chunks or []),
            "hdf5_compression": split._x.compression,
        }
        t0 = time.perf_counter()
        batches = prefetch(
            epoch_batches(split, BATCH, shuffle=True, seed=0, buffer_chunks=BUFFER_CHUNKS)
        )
        x, y = next(batches)
        first_s = time.perf_counter() - t0
        assert x.shape == (BATCH, PATCH, PATCH, 3) and x.dtype == np.float32, x.shape
        assert y.shape == (BATCH, 1), y.shape
        for _ in range(3):  # the reader threads get going
            next(batches)
        n = 0
        gaps = []
        t0 = t_prev = time.perf_counter()
        while True:
            x, _ = next(batches)
            now = time.perf_counter()
            gaps.append(now - t_prev)
            t_prev = now
            n += len(x)
            elapsed = now - t0
            if n >= min_batches * BATCH and elapsed >= min_seconds:
                break
        batches.close()
    return {
        **info,
        "first_batch_s": round(first_s, 4),
        "patches": n,
        "epochs_covered": round(n / info["n_train"], 2),
        "seconds": round(elapsed, 3),
        "patches_per_s": round(n / elapsed, 1),
        "ms_per_batch_mean": round(1000 * elapsed * BATCH / n, 3),
        "ms_per_batch_median": round(1000 * float(np.median(gaps)), 3),
        "ms_between_batches_max": round(1000 * max(gaps), 1),
    }


def bench_slow_consumer(name: str, folder: Path, step_s: float, groups: float) -> dict:
    """The pipeline feeding a consumer that takes ``step_s`` per batch without using the CPU
    (``time.sleep``: what a GPU step looks like to the host), across shuffle-group
    boundaries: time blocked in ``next()``. While the consumer is slow the generator sits in
    ``yield`` and reads only its look-ahead, so a group's refill shows up as a wait."""
    from wsi_saliency.data.pcam import open_pcam
    from wsi_saliency.training import epoch_batches, prefetch

    with open_pcam(folder, "train") as split:
        per_group = group_batches(split)
        steps = max(8, int(groups * per_group))
        batches = prefetch(
            epoch_batches(split, BATCH, shuffle=True, seed=0, buffer_chunks=BUFFER_CHUNKS)
        )
        next(batches)
        time.sleep(0.5)  # queue full, look-ahead read: the steady state of a slow consumer
        waits = []
        t_all = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            next(batches)
            waits.append(time.perf_counter() - t0)
            time.sleep(step_s)
        total = time.perf_counter() - t_all
        batches.close()
    waits_arr = np.asarray(waits)
    return {
        "data": name,
        "simulated_step_ms": round(1000 * step_s, 1),
        "steps": steps,
        "batches_per_shuffle_group": per_group,
        "input_wait_s": round(float(waits_arr.sum()), 3),
        "input_wait_fraction": round(float(waits_arr.sum()) / total, 4),
        "input_wait_ms_max": round(1000 * float(waits_arr.max()), 1),
        "steps_waiting_over_5ms": int((waits_arr > 0.005).sum()),
        "patches_per_s": round(steps * BATCH / total, 1),
        "patches_per_s_if_never_waiting": round(BATCH / step_s, 1),
    }


def sample_batches(folder: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` real batches from the pipeline, kept in memory for the step timings."""
    from wsi_saliency.data.pcam import open_pcam
    from wsi_saliency.training import epoch_batches

    with open_pcam(folder, "train") as split:
        it = epoch_batches(split, BATCH, shuffle=True, seed=0, buffer_chunks=BUFFER_CHUNKS)
        out = [next(it) for _ in range(count)]
        it.close()
    return out


# ---------------------------------------------------------------- model


def build_training_model(backbone: str, jit_compile: str | None = None):
    """The wrapper ``training.train`` fits: augmentation -> model, compiled the same way
    (one 'full' phase, since ``weights="none"``: every layer and BatchNorm trainable).
    ``jit_compile``: auto | on | off (default: ``TrainConfig``'s)."""
    import keras

    from wsi_saliency.backend import configure_precision, jit_flag
    from wsi_saliency.config import AugmentConfig, ModelConfig, TrainConfig
    from wsi_saliency.model.build import build_model, set_trainable
    from wsi_saliency.training import make_augmenter

    train_cfg = TrainConfig(**({"jit_compile": jit_compile} if jit_compile else {}))
    policy = configure_precision(train_cfg.mixed_precision)
    keras.utils.set_random_seed(0)
    kwargs = {"alpha": MOBILENET_ALPHA} if backbone == "mobilenetv2" else {}
    cfg = ModelConfig(backbone=backbone, weights="none", patch_size=PATCH, **kwargs)
    model = build_model(cfg)
    augment = make_augmenter(AugmentConfig(), seed=0)
    inputs = keras.Input((PATCH, PATCH, 3), name="patch_rgb")
    wrapper = keras.Model(inputs, model(augment(inputs)), name="train_wrapper")
    set_trainable(model, backbone_from="all", freeze_batchnorm=False)
    wrapper.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc", num_thresholds=500),
        ],
        jit_compile=jit_flag(train_cfg.jit_compile),
    )
    return wrapper, {
        "backbone": backbone,
        "alpha": cfg.alpha if backbone == "mobilenetv2" else None,
        "params": int(model.count_params()),
        "dtype_policy": policy,
        "jit_compile_setting": train_cfg.jit_compile,
    }


def bench_steps(wrapper, batches, steps: int) -> dict:
    t0 = time.perf_counter()
    wrapper.train_on_batch(*batches[0])
    first_s = time.perf_counter() - t0
    for i in range(WARMUP_STEPS):
        wrapper.train_on_batch(*batches[(i + 1) % len(batches)])
    times = []
    for i in range(steps):
        x, y = batches[(i + 1 + WARMUP_STEPS) % len(batches)]
        t0 = time.perf_counter()
        wrapper.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    total = float(np.sum(times))
    return {
        "first_step_s": round(first_s, 3),
        "warmup_steps": WARMUP_STEPS,
        "timed_steps": steps,
        "step_s_median": round(float(np.median(times)), 4),
        "step_s_min": round(float(np.min(times)), 4),
        "step_s_max": round(float(np.max(times)), 4),
        "patches_per_s": round(steps * BATCH / total, 1),
        "jit_compiled": bool(getattr(wrapper, "jit_compile", False)),
    }


def bench_fed(wrapper, folder: Path, steps: int) -> dict:
    """Steps fed by the real prefetched pipeline: time blocked in ``next()`` vs in the step.

    The pipeline is first drained quickly to a few batches before a shuffle-group boundary,
    so the timed steps include one group refill (the only place it can fall behind)."""
    from wsi_saliency.data.pcam import open_pcam
    from wsi_saliency.training import epoch_batches, prefetch

    with open_pcam(folder, "train") as split:
        per_group = group_batches(split)
        skip = max(0, per_group - WARMUP_STEPS - steps // 3)
        batches = prefetch(
            epoch_batches(split, BATCH, shuffle=True, seed=1, buffer_chunks=BUFFER_CHUNKS)
        )
        for _ in range(skip):
            next(batches)
        time.sleep(1.0)  # let the queue and the look-ahead fill, as during slow steps
        for _ in range(WARMUP_STEPS):
            wrapper.train_on_batch(*next(batches))
        wait = step = 0.0
        waits = []
        t_all = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            x, y = next(batches)
            t1 = time.perf_counter()
            wrapper.train_on_batch(x, y)
            t2 = time.perf_counter()
            wait += t1 - t0
            step += t2 - t1
            waits.append(t1 - t0)
        total = time.perf_counter() - t_all
        batches.close()
    return {
        "timed_steps": steps,
        "batches_per_shuffle_group": per_group,
        "group_boundary_after_timed_step": per_group - skip - WARMUP_STEPS,
        "input_wait_s": round(wait, 4),
        "input_wait_ms_max": round(1000 * max(waits), 2),
        "step_s": round(step, 3),
        "input_wait_fraction": round(wait / total, 4),
        "patches_per_s": round(steps * BATCH / total, 1),
    }


# ---------------------------------------------------------------- main


def print_table(pipelines: list[dict], slow: list[dict], steps: list[dict]) -> None:
    print("\ninput pipeline (prefetch(epoch_batches(...)), batch 64, float32 out)")
    print(
        f"  {'data':<18}{'patches':>9}{'s':>8}{'patches/s':>12}{'first batch s':>15}"
        f"{'median ms/batch':>17}{'max gap ms':>12}"
    )
    for p in pipelines:
        print(
            f"  {p['data']:<18}{p['patches']:>9}{p['seconds']:>8.2f}{p['patches_per_s']:>12.0f}"
            f"{p['first_batch_s']:>15.3f}{p['ms_per_batch_median']:>17.2f}"
            f"{p['ms_between_batches_max']:>12.1f}"
        )
    print("\npipeline feeding a simulated (sleeping, GPU-like) step, across shuffle-group refills")
    print(
        f"  {'data':<18}{'step ms':>8}{'steps':>7}{'wait %':>8}{'max wait ms':>13}"
        f"{'patches/s':>11}{'ideal':>8}"
    )
    for r in slow:
        print(
            f"  {r['data']:<18}{r['simulated_step_ms']:>8.0f}{r['steps']:>7}"
            f"{100 * r['input_wait_fraction']:>7.1f}%{r['input_wait_ms_max']:>13.1f}"
            f"{r['patches_per_s']:>11.0f}{r['patches_per_s_if_never_waiting']:>8.0f}"
        )
    print("\ntraining step (train_on_batch, batch 64, augmentation on) and ratio pipeline/step")
    head = f"  {'backbone':<13}{'params':>10}{'1st step s':>12}{'step s':>9}{'patches/s':>11}"
    head += "".join(f"{'ratio ' + p['data'][:10]:>20}" for p in pipelines)
    head += f"{'fed wait %':>12}"
    print(head)
    for s in steps:
        line = (
            f"  {s['backbone']:<13}{s['params']:>10}{s['step']['first_step_s']:>12.2f}"
            f"{s['step']['step_s_median']:>9.3f}{s['step']['patches_per_s']:>11.1f}"
        )
        for p in pipelines:
            line += f"{s['ratio_pipeline_over_step'].get(p['data'], float('nan')):>20.1f}"
        fed = s.get("fed")
        line += f"{100 * fed['input_wait_fraction']:>11.2f}%" if fed else f"{'-':>12}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    ap.add_argument(
        "--pipeline-seconds",
        type=float,
        default=None,
        help="least seconds of pipeline timing per data set (default 8; quick 1)",
    )
    ap.add_argument("--no-fed", action="store_true", help="skip the pipeline-fed step timings")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/training.json; "
        "training-quick.json with --quick)",
    )
    args = ap.parse_args()
    out = args.out or REPO / "benchmarks" / "results" / (
        "training-quick.json" if args.quick else "training.json"
    )
    min_seconds = args.pipeline_seconds or (1.0 if args.quick else 8.0)
    min_batches = 8 if args.quick else 60

    start = machine_start()
    warn_if_contended_at_start(start)
    t_run = time.perf_counter()

    import keras  # imported here so TF start-up is not inside any timing

    data, skipped = datasets()
    pipelines = []
    for name, folder in data:
        res = bench_pipeline(name, folder, min_seconds=min_seconds, min_batches=min_batches)
        print(json.dumps(res), flush=True)
        pipelines.append(res)
    slow = []
    for name, folder in data:
        for step_s in SIMULATED_STEPS_S:
            res = bench_slow_consumer(name, folder, step_s, groups=0.1 if args.quick else 2.2)
            print(json.dumps(res), flush=True)
            slow.append(res)

    step_data_name, step_folder = data[-1]  # real patches when present
    batches = sample_batches(step_folder, 4)
    steps_table = QUICK_STEPS if args.quick else STEPS
    results = []
    for backbone in args.backbones:
        keras.backend.clear_session()
        t0 = time.perf_counter()
        wrapper, info = build_training_model(backbone)
        info["build_s"] = round(time.perf_counter() - t0, 2)
        info["step"] = bench_steps(wrapper, batches, steps_table[backbone])
        rate = info["step"]["patches_per_s"]
        info["ratio_pipeline_over_step"] = {
            p["data"]: round(p["patches_per_s"] / rate, 1) for p in pipelines
        }
        if backbone in FED_STEPS and not args.no_fed:
            n = QUICK_STEPS[backbone] if args.quick else FED_STEPS[backbone]
            info["fed"] = {"data": step_data_name, **bench_fed(wrapper, step_folder, n)}
        print(json.dumps(info), flush=True)
        results.append(info)
        del wrapper

    wall = time.perf_counter() - t_run
    print_table(pipelines, slow, results)
    machine = machine_end(start)
    warn_if_contended_at_end(machine)
    report = {
        "benchmark": "training input pipeline vs train_on_batch throughput",
        "quick": args.quick,
        "machine": machine,
        "batch_size": BATCH,
        "patch": [PATCH, PATCH, 3],
        "pipeline": "training.prefetch(training.epoch_batches(open_pcam(folder, 'train'), "
        f"{BATCH}, shuffle=True, seed=0, buffer_chunks={BUFFER_CHUNKS}))",
        "step": "train_on_batch of keras.Model(inputs, model(make_augmenter(AugmentConfig(), "
        "seed=0)(inputs))), Adam, BinaryCrossentropy, BinaryAccuracy + AUC(500), "
        f"jit_compile=auto; in-memory batches from {step_data_name}",
        "fed": "the same steps fed by next() on the prefetched pipeline, across one "
        "shuffle-group refill; input_wait_fraction = time blocked in next() / wall time",
        "simulated_consumer_note": "time.sleep(step) per batch (host CPU left free, like a GPU "
        "step), about 2 shuffle groups",
        "skipped": skipped,
        "pipelines": pipelines,
        "simulated_consumer": slow,
        "backbones": results,
        "wall_s": round(wall, 1),
    }
    write_json_atomic(out, report)
    print(f"wrote {out} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
