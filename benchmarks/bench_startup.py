"""Benchmark: what a scan process pays before and after its patches, with ResNet50 on a CPU.

On a small slide these fixed costs decide the wall time a user sees (``bench_peers.py``).
Each is measured in fresh processes, the cases interleaved round by round:

- ``import_tensorflow_s``: ``import tensorflow`` inside the process;
- ``load_model_s``: ``load_model`` of a Keras ResNet50 (random weights, with its card);
- ``first_call_s`` with the Grad-CAM pass compiled by XLA and not (``jit`` on / off): the
  first batch of 64 patches, set-up included;
- ``patches_per_s``: the Grad-CAM pass afterwards, both in one process, batches interleaved;
- ``exit_s``: from the end of the work to the end of the process, leaving normally against
  ``wsi_saliency.cli.exit_now`` (no interpreter teardown), after TensorFlow ran one op.

These decided ``scan.jit_compile: auto`` (XLA only on a GPU with TensorFlow) and the console
script's exit. Results go to ``benchmarks/results/startup.json``.

    python benchmarks/bench_startup.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _machine import (  # noqa: E402
    keras_versions,
    machine_end,
    machine_start,
    warn_if_contended_at_start,
    write_json_atomic,
)
from bench_peers import WORK, our_model  # noqa: E402

BATCH = 64
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}

FIRST_CALL = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    import tensorflow
    t1 = time.perf_counter()
    import numpy as np
    from wsi_saliency.model.io import load_model
    from wsi_saliency.scan.pipeline import PatchScorer
    model, card = load_model(sys.argv[1])
    t2 = time.perf_counter()
    scorer = PatchScorer(model, card, batch_size=%(batch)d, jit=sys.argv[2] == "on")
    x = np.random.default_rng(0).integers(0, 256, (%(batch)d, 96, 96, 3), np.uint8)
    scorer(x)
    t3 = time.perf_counter()
    print("BENCH " + json.dumps({"import_tensorflow_s": t1 - t0, "load_model_s": t2 - t1,
                                 "first_call_s": t3 - t2}))
    """
) % {"batch": BATCH}

STEADY = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from wsi_saliency.model.io import load_model
    from wsi_saliency.scan.pipeline import PatchScorer
    model, card = load_model(sys.argv[1])
    rounds, batches = int(sys.argv[2]), int(sys.argv[3])
    x = np.random.default_rng(0).integers(0, 256, (%(batch)d, 96, 96, 3), np.uint8)
    scorers = {j: PatchScorer(model, card, batch_size=%(batch)d, jit=j == "on")
               for j in ("off", "on")}
    for s in scorers.values():
        s(x)
    rates = {"off": [], "on": []}
    for r in range(rounds):
        for j in (("off", "on") if r %% 2 == 0 else ("on", "off")):
            t = time.perf_counter()
            for _ in range(batches):
                scorers[j](x)
            rates[j].append(batches * %(batch)d / (time.perf_counter() - t))
    p0, c0 = scorers["off"](x)
    p1, c1 = scorers["on"](x)
    print("BENCH " + json.dumps({"rates": rates, "max_abs_prob_diff": float(abs(p0 - p1).max()),
                                 "max_abs_cam_diff": float(abs(c0 - c1).max())}))
    """
) % {"batch": BATCH}

EXIT = textwrap.dedent(
    """
    import sys, time
    import tensorflow as tf
    float(tf.reduce_sum(tf.ones((64, 64))))
    print("END", time.time(), flush=True)
    if sys.argv[1] == "exit_now":
        from wsi_saliency.cli import exit_now
        exit_now(0)
    """
)


def run_script(code: str, *args: str) -> dict:
    """Run ``code`` with ``args`` in a fresh Python process; the JSON of its ``BENCH`` line."""
    cmd = [sys.executable, "-c", code, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    line = next(x for x in res.stdout.splitlines() if x.startswith("BENCH "))
    return json.loads(line[len("BENCH ") :])


def first_call(model: Path, jit: str) -> dict:
    return run_script(FIRST_CALL, str(model), jit)


def exit_time(mode: str) -> float:
    """Seconds from the script's last line of work to the end of its process."""
    proc = subprocess.run(
        [sys.executable, "-c", EXIT, mode], capture_output=True, text=True, cwd=REPO, env=ENV
    )
    ended = time.time()
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("END "))
    return ended - float(line.split()[1])


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=6, help="batches per steady-state round")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/startup.json")
    args = ap.parse_args()
    start = machine_start()
    warn_if_contended_at_start(start)
    model = our_model(WORK / "models")

    runs: dict[str, list] = {"jit_off": [], "jit_on": [], "exit_normal": [], "exit_now": []}
    for r in range(args.rounds):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        for jit in order:
            runs[f"jit_{jit}"].append(first_call(model, jit))
            print(f"round {r}: jit {jit} {runs[f'jit_{jit}'][-1]}", flush=True)
        for mode in ("normal", "exit_now") if r % 2 == 0 else ("exit_now", "normal"):
            runs[f"exit_{mode}" if mode == "normal" else "exit_now"].append(exit_time(mode))
        print(f"round {r}: exit {runs['exit_normal'][-1]:.2f} / {runs['exit_now'][-1]:.2f}")
    steady = run_script(STEADY, str(model), str(args.rounds), str(args.batches))

    calls = runs["jit_off"] + runs["jit_on"]

    def phase(key: str, jit: str) -> float:
        return median([run[key] for run in runs[f"jit_{jit}"]])

    summary = {
        "import_tensorflow_s": median([run["import_tensorflow_s"] for run in calls]),
        "load_model_s": median([run["load_model_s"] for run in calls]),
        "first_call_s": {
            "jit_off": phase("first_call_s", "off"),
            "jit_on": phase("first_call_s", "on"),
        },
        "patches_per_s": {j: round(max(steady["rates"][j]), 1) for j in ("off", "on")},
        "jit_on_over_off": round(max(steady["rates"]["on"]) / max(steady["rates"]["off"]), 3),
        "max_abs_prob_diff_jit": steady["max_abs_prob_diff"],
        "max_abs_cam_diff_jit": steady["max_abs_cam_diff"],
        "exit_s": {"normal": median(runs["exit_normal"]), "exit_now": median(runs["exit_now"])},
    }
    result = {
        "benchmark": "scan start-up and exit costs, ResNet50 (random weights) on TensorFlow",
        "command": "python benchmarks/bench_startup.py " + " ".join(sys.argv[1:]),
        "model": "Keras ResNet50, weights none, 96 px patches, batch 64, Grad-CAM on",
        "rounds": args.rounds,
        "summary": summary,
        "runs": runs,
        "steady_rates_patches_per_s": steady["rates"],
        "machine": machine_end(start, keras_versions()),
    }
    write_json_atomic(args.out, result)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
