"""Benchmark: the bundled-model candidates, side by side (docs/results.md, "The bundled model").

For each candidate ``NAME=RUN`` (a training run folder of ``wsi-saliency train``): its
architecture and parameters, epochs trained and the best one, training wall time (from the
run's ``run.json``/``metrics.json``), valid AUC without and with 8-fold TTA (``metrics.json``;
``eval-valid-tta/metrics.json``, made by ``wsi-saliency evaluate RUN/model.keras DATA --split
valid --tta --out RUN/eval-valid-tta``; measured here when missing), and scan patches/s on this
CPU: ``scan_slide`` of the sample slide at default settings (Grad-CAM on, dense map), the
candidates alternating, median of ``--repeat``.

    python benchmarks/bench_bundled.py mnv2_035=runs/cand/mnv2_035 tiny12=runs/cand/tiny12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _machine import (  # noqa: E402
    keras_versions,
    machine_end,
    machine_start,
    warn_if_contended_at_end,
    warn_if_contended_at_start,
    write_json_atomic,
)

SAMPLE_SLIDE = REPO / "sample_data" / "slide" / "sample_slide.tif"


def run_facts(run: Path) -> dict:
    """What the run folder says: model, epochs, wall time, valid metrics (with and without TTA)."""
    from wsi_saliency.model.io import read_card

    card = read_card(run / "model.keras")
    metrics = json.loads((run / "metrics.json").read_text())
    info = json.loads((run / "run.json").read_text())
    history = (run / "logs" / "history.csv").read_text().splitlines()[1:]
    model_cfg = card.config.get("model", {})
    out = {
        "backbone": card.backbone,
        "alpha": model_cfg.get("alpha") if card.backbone == "mobilenetv2" else None,
        "epochs_trained": len(history),
        "best_epoch": metrics.get("best_epoch"),
        "train_wall_s": info.get("wall_s"),
        "valid_auc": round(metrics["auc"], 4),
        "valid_accuracy": round(metrics["accuracy"], 4),
        "augment": card.config.get("augment"),
    }
    tta = run / "eval-valid-tta" / "metrics.json"
    if tta.is_file():
        m = json.loads(tta.read_text())
        out["valid_tta_auc"] = round(m["auc"], 4)
        out["valid_tta_accuracy"] = round(m["accuracy"], 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidates", nargs="+", help="NAME=RUN_FOLDER")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/bundled_candidates.json")
    args = ap.parse_args()

    from wsi_saliency.config import ScanConfig
    from wsi_saliency.model.io import load_model
    from wsi_saliency.scan.pipeline import PatchScorer, scan_slide

    start = machine_start()
    warn_if_contended_at_start(start)
    runs = dict(c.split("=", 1) for c in args.candidates)
    result: dict = {"benchmark": "bundled_candidates", "slide": str(SAMPLE_SLIDE), "candidates": {}}
    loaded = {}
    for name, run in runs.items():
        run = Path(run)
        row = run_facts(run)
        model, card = load_model(run / "model.keras")
        row["parameters"] = int(model.count_params())
        row["model_file_bytes"] = (run / "model.keras").stat().st_size
        scorer = PatchScorer.from_config(model, card, ScanConfig(workers=2))
        scan_slide(SAMPLE_SLIDE, model, card, ScanConfig(workers=2), scorer=scorer)  # warm-up
        loaded[name] = (model, card, scorer)
        result["candidates"][name] = row
    times: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, (model, card, scorer) in loaded.items():
            res = scan_slide(SAMPLE_SLIDE, model, card, ScanConfig(workers=2), scorer=scorer)
            times[name].append({"n": res.n_scored, **res.timings})
    for name, rows in times.items():
        n = rows[0]["n"]
        total = float(np.median([r["total_s"] for r in rows]))
        model_s = float(np.median([r["model_s"] for r in rows]))
        result["candidates"][name].update(
            scan_patches=n,
            scan_total_s_all=[round(r["total_s"], 3) for r in rows],
            scan_patches_per_s=round(n / total, 1),
            scan_model_patches_per_s=round(n / model_s, 1),
        )
        print(json.dumps({name: result["candidates"][name]}), flush=True)
    result["machine"] = machine_end(start, keras_versions())
    write_json_atomic(args.out, result)
    warn_if_contended_at_end(result["machine"])
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
