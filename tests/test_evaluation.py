"""AUROC and FPR95 against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from oodguard.calibration.evaluation import auroc, fpr_at_tpr, roc_curve


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 20, 300).astype(float)  # many ties
    b = rng.integers(5, 25, 200).astype(float)
    want = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[a, b])
    assert auroc(a, b) == pytest.approx(want, abs=1e-12)


def test_fpr_at_tpr() -> None:
    inside = np.arange(100.0)  # 0..99
    outside = np.arange(50.0, 150.0)  # 95% of these are >= 55
    assert fpr_at_tpr(inside, outside) == pytest.approx(45 / 100)
    assert fpr_at_tpr(inside, inside + 1000) == 0.0


def test_roc_curve_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(1, size=60)
    fpr, tpr = roc_curve(a, b)
    sk_fpr, sk_tpr, _ = sk_roc_curve(np.r_[np.zeros(50), np.ones(60)], np.r_[a, b],
                                     drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_auroc_refuses_nan_and_empty() -> None:
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(ValueError, match="at least one"):
        auroc(np.array([]), np.array([1.0]))
