"""Benchmark: bfloat16 against float32 on a CPU that has bfloat16 instructions.

``scan.mixed_precision=on`` runs a scan in bfloat16 on such a CPU (AVX512_BF16 or AMX; the
logit and the probability stay float32). What it buys and what it changes:

- speed: the Grad-CAM pass (batch 64) and the dense map's feature pass (one 1,024 x 1,024 px
  tile) of a Keras ResNet50 with random weights, float32 and bfloat16 in one process, batches
  interleaved, best round kept;
- what it changes: the bundled PCam model (``wsi_saliency/models``) on the real PCam
  validation patches of ``../shared/data/pcam-ai4all/valid`` (skipped with a reason when
  absent): the AUC in each precision, the largest and mean probability difference, how many
  patches change side of 0.5, and how far the Grad-CAM maps move (largest difference over
  the 99.5th percentile of the float32 maps, the scale they are drawn on).

Results go to ``benchmarks/results/precision.json``.

    python benchmarks/bench_precision.py [--rounds 3] [--patches 3000]
"""

from __future__ import annotations

import argparse
import json
import sys
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

from wsi_saliency.backend import cpu_has_bfloat16  # noqa: E402

SHARED_VALID = REPO.parent / "shared" / "data" / "pcam-ai4all" / "valid"
BUNDLED = REPO / "wsi_saliency" / "models" / "pcam-ai4all.keras"
BATCH = 64


def speed(model_path: Path, rounds: int, batches: int) -> dict:
    """patches/s of the Grad-CAM pass and Mpx/s of the dense feature pass, per precision."""
    from wsi_saliency.model.io import load_model, with_dtype_policy
    from wsi_saliency.scan.pipeline import PatchScorer

    model, card = load_model(model_path)
    models = {"float32": model, "bfloat16": with_dtype_policy(model, card, "mixed_bfloat16")}
    scorers = {k: PatchScorer(m, card, batch_size=BATCH, jit=False) for k, m in models.items()}
    return interleaved_rates(scorers, rounds, batches)


def interleaved_rates(scorers: dict, rounds: int, batches: int) -> dict:
    """Grad-CAM patches/s (``batches`` batches of ``BATCH`` random patches) and dense-feature
    Mpx/s (two 1,024 px tiles) of each scorer, in one process, the scorers' turns interleaved
    round by round after an untimed first call; best of ``rounds``. The speed-ups are the
    second scorer's over the first's."""
    x = np.random.default_rng(0).integers(0, 256, (BATCH, 96, 96, 3), np.uint8)
    tile = np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), np.uint8)
    dense = {k: s.dense() for k, s in scorers.items()}
    for k in scorers:  # first calls (set-up) untimed
        scorers[k](x)
        dense[k].features(tile)
    rates: dict[str, dict[str, list[float]]] = {k: {"gradcam": [], "dense": []} for k in scorers}
    for r in range(rounds):
        for k in list(scorers)[:: 1 if r % 2 == 0 else -1]:
            t = time.perf_counter()
            for _ in range(batches):
                scorers[k](x)
            rates[k]["gradcam"].append(batches * BATCH / (time.perf_counter() - t))
            t = time.perf_counter()
            for _ in range(2):
                dense[k].features(tile)
            rates[k]["dense"].append(
                2 * tile.shape[0] * tile.shape[1] / 1e6 / (time.perf_counter() - t)
            )
    best = {k: {p: round(max(v), 2) for p, v in rates[k].items()} for k in scorers}
    first, second = list(scorers)[:2]
    return {
        "gradcam_patches_per_s": {k: best[k]["gradcam"] for k in scorers},
        "dense_mpx_per_s": {k: best[k]["dense"] for k in scorers},
        "gradcam_speedup": round(best[second]["gradcam"] / best[first]["gradcam"], 3),
        "dense_speedup": round(best[second]["dense"] / best[first]["dense"], 3),
        "rounds": rates,
    }


def pcam_validation(n_patches: int) -> tuple[np.ndarray, np.ndarray]:
    """``(patches uint8 [N, 96, 96, 3], labels [N])``: ``n_patches`` real PCam validation
    patches of ``../shared/data``, drawn with seed 0 (the same ones for every benchmark)."""
    from wsi_saliency.data.folders import list_items, load_patch

    _, items = list_items(SHARED_VALID.parent)
    valid = items["valid"]
    rng = np.random.default_rng(0)
    chosen = [valid[i] for i in sorted(rng.permutation(len(valid))[:n_patches])]
    x = np.stack([load_patch(p) for p, _ in chosen])
    return x, np.array([label for _, label in chosen])


def agreement(n_patches: int) -> dict:
    """The bundled model on real PCam validation patches, float32 against bfloat16."""
    from wsi_saliency.metrics import roc_auc
    from wsi_saliency.model.io import load_model, with_dtype_policy
    from wsi_saliency.scan.pipeline import PatchScorer

    x, y = pcam_validation(n_patches)
    model, card = load_model(BUNDLED)
    out = {}
    for name, m in (
        ("float32", model),
        ("bfloat16", with_dtype_policy(model, card, "mixed_bfloat16")),
    ):
        scorer = PatchScorer(m, card, batch_size=BATCH, jit=False)
        probs, cams = [], []
        for i in range(0, len(x), BATCH):
            p, c = scorer(x[i : i + BATCH])
            probs.append(p)
            cams.append(c)
        out[name] = (np.concatenate(probs), np.concatenate(cams))
    (p32, c32), (p16, c16) = out["float32"], out["bfloat16"]
    scale = float(np.percentile(c32, 99.5))
    dp = np.abs(p32 - p16)
    return {
        "model": str(BUNDLED.relative_to(REPO)),
        "patches": int(len(x)),
        "data": str(SHARED_VALID),
        "auc": {"float32": round(roc_auc(y, p32), 5), "bfloat16": round(roc_auc(y, p16), 5)},
        "max_abs_prob_diff": round(float(dp.max()), 5),
        "mean_abs_prob_diff": round(float(dp.mean()), 6),
        "patches_changing_side_of_0.5": int(np.count_nonzero((p32 >= 0.5) != (p16 >= 0.5))),
        "gradcam_max_abs_diff_over_scale": round(float(np.abs(c32 - c16).max()) / scale, 4),
        "gradcam_mean_abs_diff_over_scale": round(float(np.abs(c32 - c16).mean()) / scale, 5),
        "gradcam_correlation": round(float(np.corrcoef(c32.ravel(), c16.ravel())[0, 1]), 6),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=6, help="Grad-CAM batches per round")
    ap.add_argument("--patches", type=int, default=3000, help="PCam validation patches")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/precision.json")
    args = ap.parse_args()
    if not cpu_has_bfloat16():
        sys.exit("skipped: this CPU has no bfloat16 instructions (AVX512_BF16 or AMX)")
    start = machine_start()
    warn_if_contended_at_start(start)
    result = {
        "benchmark": "bfloat16 against float32 on a CPU with bfloat16 instructions",
        "command": "python benchmarks/bench_precision.py " + " ".join(sys.argv[1:]),
        "speed_model": "Keras ResNet50, weights none, 96 px, batch 64; dense: one 1024 px tile",
        "speed": speed(our_model(WORK / "models"), args.rounds, args.batches),
    }
    if SHARED_VALID.is_dir():
        result["agreement"] = agreement(args.patches)
    else:
        result["agreement"] = {"skipped": f"no {SHARED_VALID} (the shared real data is absent)"}
    result["machine"] = machine_end(start, keras_versions())
    write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
