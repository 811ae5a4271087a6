import numpy as np
import pytest

from wsi_saliency.metrics import binary_metrics, roc_auc, roc_curve


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 2)  # rounded: many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(y, s) == pytest.approx(pairs, abs=1e-12)


def test_perfect_and_reversed_and_single_class():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    fpr, tpr, thr = roc_curve(y, [0.1, 0.2, 0.8, 0.9])
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1


def test_confusion_matrix_at_threshold():
    m = binary_metrics([1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.5], threshold=0.5)
    assert m["confusion_matrix"] == {"tp": 2, "fn": 1, "fp": 1, "tn": 1}
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["accuracy"] == pytest.approx(3 / 5)
