"""Benchmark: batch norms folded into the convolutions, and a slide cut into equal batches.

Two changes to the model path of ``wsi-saliency scan`` on a CPU, measured with ResNet50
(random weights) and the TensorFlow graph the scan runs (no XLA, Grad-CAM on):

- ``scan.fold_batch_norm`` (``wsi_saliency/model/fold.py``), fresh processes, interleaved:
  ``load_model_s``, ``fold_s``, and the first Grad-CAM call (trace and set-up included);
  then in one process, batches interleaved, Grad-CAM patches/s and dense-feature Mpx/s of
  the same model folded and not;
- equal batches (``PatchScorer.batch_for``): a slide of 81 patches (CMU-1-Small-Region at
  0.972 um/px) as 64 + 17 padded to 64, against 2 x 41, seconds of model time;
- agreement: the bundled model (trained on PCam) folded against not, on real PCam validation
  patches from ``../shared/data`` (skipped with the reason when absent): AUC, the largest
  change of a probability and the correlation of the Grad-CAM maps.

Results go to ``benchmarks/results/fold.json``.

    python benchmarks/bench_fold.py [--rounds 3] [--patches 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

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
from bench_precision import BUNDLED, SHARED_VALID, interleaved_rates, pcam_validation  # noqa: E402
from bench_startup import ENV, median, run_script  # noqa: E402

BATCH = 64

FIRST_CALL = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import tensorflow
    from wsi_saliency.model.fold import fold_batch_norm
    from wsi_saliency.model.io import load_model
    from wsi_saliency.scan.pipeline import PatchScorer
    t0 = time.perf_counter()
    model, card = load_model(sys.argv[1])
    t1 = time.perf_counter()
    folded = fold_batch_norm(model) if sys.argv[2] == "on" else 0
    t2 = time.perf_counter()
    scorer = PatchScorer(model, card, batch_size=%(batch)d, jit=False)
    scorer(np.random.default_rng(0).integers(0, 256, (%(batch)d, 96, 96, 3), np.uint8))
    t3 = time.perf_counter()
    print("BENCH " + json.dumps({"load_model_s": t1 - t0, "fold_s": t2 - t1,
                                 "first_call_s": t3 - t2, "folded": folded}))
    """
) % {"batch": BATCH}


def first_call(model: Path, fold: str) -> dict:
    return run_script(FIRST_CALL, str(model), fold)


def steady(model_path: Path, rounds: int, batches: int) -> dict:
    """Grad-CAM patches/s and dense-feature Mpx/s, folded and not (``interleaved_rates``), and
    the 81-patch slide as 64 + 17 padded against 2 x 41 (folded model, interleaved rounds)."""
    from wsi_saliency.model.fold import fold_batch_norm
    from wsi_saliency.model.io import load_model
    from wsi_saliency.scan.pipeline import PatchScorer

    models = {"unfolded": load_model(model_path)[0]}
    folded, card = load_model(model_path)
    fold_batch_norm(folded)
    models["folded"] = folded
    scorers = {k: PatchScorer(m, card, batch_size=BATCH, jit=False) for k, m in models.items()}
    rates = interleaved_rates(scorers, rounds, batches)
    slide = np.random.default_rng(2).integers(0, 256, (81, 96, 96, 3), np.uint8)
    even = scorers["folded"].batch_for(len(slide))
    cuts = {"padded_64_17": (BATCH, BATCH), "equal_2x41": (even, even)}
    scorers["folded"](slide[:even], pad_to=even)  # the new batch size's first call, untimed
    slide_s: dict = {k: [] for k in cuts}
    for r in range(rounds):
        for name in list(cuts)[:: 1 if r % 2 == 0 else -1]:
            size, pad = cuts[name]
            t = time.perf_counter()
            for i in range(0, len(slide), size):
                scorers["folded"](slide[i : i + size], pad_to=pad)
            slide_s[name].append(time.perf_counter() - t)
    x = np.random.default_rng(0).integers(0, 256, (BATCH, 96, 96, 3), np.uint8)
    p0, c0 = scorers["unfolded"](x)
    p1, c1 = scorers["folded"](x)
    return {
        **{k: v for k, v in rates.items() if k != "rounds"},
        "max_abs_prob_diff_random_patches": float(np.abs(p0 - p1).max()),
        "max_abs_cam_diff_random_patches": float(np.abs(c0 - c1).max()),
        "slide_81_patches_s": {k: round(min(v), 3) for k, v in slide_s.items()},
        "slide_81_batch_size": even,
        "rounds": {"rates": rates["rounds"], "slide_81_patches_s": slide_s},
    }


def agreement(n_patches: int) -> dict:
    """The bundled model on real PCam validation patches, folded against not."""
    from wsi_saliency.metrics import roc_auc
    from wsi_saliency.model.fold import fold_batch_norm
    from wsi_saliency.model.io import load_model
    from wsi_saliency.scan.pipeline import PatchScorer

    x, y = pcam_validation(n_patches)
    out, folded = {}, 0
    for name in ("unfolded", "folded"):
        model, card = load_model(BUNDLED)
        if name == "folded":
            folded = fold_batch_norm(model)
        scorer = PatchScorer(model, card, batch_size=BATCH, jit=False)
        runs = [scorer(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
        out[name] = tuple(np.concatenate([r[j] for r in runs]) for j in (0, 1))
    (p0, c0), (p1, c1) = out["unfolded"], out["folded"]
    dp = np.abs(p0 - p1)
    return {
        "model": str(BUNDLED.relative_to(REPO)),
        "batch_norms_folded": folded,
        "patches": int(len(x)),
        "data": str(SHARED_VALID),
        "auc": {"unfolded": round(roc_auc(y, p0), 6), "folded": round(roc_auc(y, p1), 6)},
        "max_abs_prob_diff": float(dp.max()),
        "mean_abs_prob_diff": float(dp.mean()),
        "patches_crossing_0.5": int(np.count_nonzero((p0 >= 0.5) != (p1 >= 0.5))),
        "max_abs_cam_diff_over_cam_scale": float(np.abs(c0 - c1).max() / np.percentile(c0, 99.5)),
        "cam_correlation": float(np.corrcoef(c0.ravel(), c1.ravel())[0, 1]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=6, help="batches per steady-state round")
    ap.add_argument("--patches", type=int, default=3000, help="real PCam patches to compare")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/fold.json")
    args = ap.parse_args()
    start = machine_start()
    warn_if_contended_at_start(start)
    model = our_model(WORK / "models")

    runs: dict[str, list] = {"fold_off": [], "fold_on": []}
    for r in range(args.rounds):
        for fold in ("off", "on") if r % 2 == 0 else ("on", "off"):
            runs[f"fold_{fold}"].append(first_call(model, fold))
            print(f"round {r}: fold {fold} {runs[f'fold_{fold}'][-1]}", flush=True)
    os.environ.update({k: ENV[k] for k in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")})
    rates = steady(model, args.rounds, args.batches)
    print(json.dumps({k: v for k, v in rates.items() if k != "rounds"}, indent=1), flush=True)
    if SHARED_VALID.is_dir():
        agree = agreement(args.patches)
    else:
        agree = {"skipped": f"{SHARED_VALID} is absent (real PCam patches of ../shared/data)"}
    print(json.dumps(agree, indent=1))

    def phase(key: str, fold: str) -> float:
        return median([run[key] for run in runs[f"fold_{fold}"]])

    summary = {
        "load_model_s": median([run["load_model_s"] for run in runs["fold_on"] + runs["fold_off"]]),
        "fold_s": phase("fold_s", "on"),
        "batch_norms_folded": runs["fold_on"][0]["folded"],
        "first_call_s": {"unfolded": phase("first_call_s", "off"),
                         "folded": phase("first_call_s", "on")},
        "fold_plus_first_call_saves_s": round(
            phase("first_call_s", "off") - phase("first_call_s", "on") - phase("fold_s", "on"), 3
        ),
        **{k: v for k, v in rates.items() if k != "rounds"},
    }  # fmt: skip
    result = {
        "benchmark": "batch norms folded and equal batches, ResNet50 (random weights), TF graph",
        "command": "python benchmarks/bench_fold.py " + " ".join(sys.argv[1:]),
        "model": "Keras ResNet50, weights none, 96 px patches, batch 64, Grad-CAM on, no XLA",
        "rounds": args.rounds,
        "summary": summary,
        "agreement_real_pcam": agree,
        "runs": runs,
        "steady_rounds": rates["rounds"],
        "machine": machine_end(start, keras_versions()),
    }
    write_json_atomic(args.out, result)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
