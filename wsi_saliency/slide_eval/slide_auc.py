"""Slide-level ROC AUC with a seeded, stratified percentile-bootstrap confidence interval.

The AUC itself is :func:`wsi_saliency.metrics.roc_auc` (ties count one half). The bootstrap
resamples tumour and normal slides separately, with replacement, keeping their numbers (as
pROC's default ``stratified=TRUE``), so every resample has both classes; each resample's AUC
is computed at once for all resamples from the pairwise comparison matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsi_saliency.metrics import roc_auc


@dataclass(frozen=True)
class AucResult:
    """``auc``, its ``ci95`` (low, high), and how the interval was made."""

    auc: float
    ci95: tuple[float, float]
    n_bootstrap: int
    seed: int
    n_tumour: int
    n_normal: int

    def as_dict(self) -> dict:
        return {
            "auc": self.auc,
            "ci95": list(self.ci95),
            "bootstrap": {
                "n": self.n_bootstrap,
                "seed": self.seed,
                "method": "stratified percentile bootstrap (2.5th, 97.5th percentiles)",
            },
            "n_tumour": self.n_tumour,
            "n_normal": self.n_normal,
        }


def bootstrap_auc(
    labels: np.ndarray, scores: np.ndarray, *, n_bootstrap: int = 2000, seed: int = 0
) -> AucResult:
    """AUC of ``scores`` (float ``[N]``) for ``labels`` (bool ``[N]``, True = tumour) and its
    95 % interval; NaN (and a NaN interval) when only one class is present."""
    labels = np.asarray(labels, dtype=bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos, neg = scores[labels], scores[~labels]
    auc = roc_auc(labels, scores)
    if pos.size == 0 or neg.size == 0 or n_bootstrap < 1:
        return AucResult(auc, (float("nan"), float("nan")), n_bootstrap, seed, pos.size, neg.size)
    # wins[i, j]: 1 when tumour i outscores normal j, 0.5 on a tie.
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    rng = np.random.default_rng(seed)
    cp = rng.multinomial(pos.size, np.full(pos.size, 1.0 / pos.size), size=n_bootstrap)
    cn = rng.multinomial(neg.size, np.full(neg.size, 1.0 / neg.size), size=n_bootstrap)
    aucs = np.einsum("bi,ij,bj->b", cp, wins, cn) / (pos.size * neg.size)
    lo, hi = np.percentile(aucs, [2.5, 97.5])
    return AucResult(auc, (float(lo), float(hi)), n_bootstrap, seed, pos.size, neg.size)
