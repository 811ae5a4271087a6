"""Binary classification metrics in plain numpy (no scikit-learn): exact ROC and AUC.

``labels``: int/bool [N] with 1 = metastasis; ``scores``: float [N], higher = more likely 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, one point per distinct score, from (0, 0) to (1, 1)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    pos, neg = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    fpr = np.r_[0.0, fps / neg]
    tpr = np.r_[0.0, tps / pos]
    thresholds = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thresholds


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool).ravel()
    if labels.all() or not labels.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def binary_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5
) -> dict[str, Any]:
    """AUC, accuracy, sensitivity, specificity and the confusion matrix at ``threshold``."""
    labels = np.asarray(labels).astype(bool).ravel()
    pred = np.asarray(scores).ravel() >= threshold
    tp = int(np.sum(pred & labels))
    tn = int(np.sum(~pred & ~labels))
    fp = int(np.sum(pred & ~labels))
    fn = int(np.sum(~pred & labels))
    n = labels.size

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "auc": roc_auc(labels, scores),
        "accuracy": ratio(tp + tn, n),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "threshold": float(threshold),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "n": int(n),
        "n_positive": int(labels.sum()),
    }
