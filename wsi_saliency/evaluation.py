"""Patch-level evaluation of a model on a PCam-format split: AUC, accuracy, sensitivity,
specificity, confusion matrix, optional 8-fold dihedral test-time augmentation, ROC curve."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_saliency.metrics import binary_metrics, roc_curve


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 symmetries of the square (k in 0..7) on [B, H, W, C] patches."""
    y = np.rot90(x, k % 4, axes=(1, 2))
    return y[:, :, ::-1] if k >= 4 else y


def predict_patches(model, x: np.ndarray, *, tta: bool = False) -> np.ndarray:
    """P(metastasis) float32 [B] for RGB patches ``x`` [B, P, P, 3] (uint8 or float in [0, 255]).

    With ``tta`` the probability is the mean over the 8 dihedral transforms of each patch.
    """
    x = np.asarray(x, dtype=np.float32)
    if not tta:
        return np.asarray(model.predict_on_batch(x), dtype=np.float32).reshape(-1)
    views = np.concatenate([dihedral(x, k) for k in range(8)])
    probs = np.asarray(model.predict_on_batch(views), dtype=np.float32).reshape(8, -1)
    return probs.mean(axis=0)


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    labels: np.ndarray  # uint8 [N]
    probs: np.ndarray  # float32 [N]

    def roc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return roc_curve(self.labels, self.probs)


def evaluate_split(
    model,
    split,
    *,
    batch_size: int = 128,
    threshold: float = 0.5,
    tta: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Score every patch of an open PCam split (file order) and compute the metrics."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    probs, labels = [], []
    bs = max(1, batch_size // 8) if tta else batch_size
    batches = split.iter_batches(bs, shuffle=False, seed=0)
    for x, y in tqdm(
        batches, total=-(-split.n // bs), disable=not progress, unit="batch", desc="evaluate"
    ):
        probs.append(predict_patches(model, x, tta=tta))
        labels.append(np.asarray(y).reshape(-1))
    p = np.concatenate(probs) if probs else np.zeros(0, np.float32)
    y = np.concatenate(labels).astype(np.uint8) if labels else np.zeros(0, np.uint8)
    metrics = binary_metrics(y, p, threshold)
    wall = time.perf_counter() - t0
    metrics.update(
        tta=bool(tta),
        wall_s=round(wall, 2),
        patches_per_s=round(len(p) / wall, 1) if wall else None,
    )
    return EvalResult(metrics, y, p)


def write_roc_png(path: str | Path, result: EvalResult, title: str = "") -> Path:
    """ROC curve with the AUC and the operating point at the metrics' threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fpr, tpr, _ = result.roc()
    m = result.metrics
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {m['auc']:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.scatter(
        [1 - m["specificity"]],
        [m["sensitivity"]],
        c="crimson",
        zorder=3,
        label=f"threshold {m['threshold']:g}",
    )
    ax.set(
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title=title or f"ROC, {m['n']} patches",
    )
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_metrics_json(path: str | Path, metrics: dict[str, Any]) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True, default=_json_default))
    os.replace(tmp, path)
    return path


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
