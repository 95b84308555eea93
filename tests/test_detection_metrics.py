"""AUROC, AUPR, FPR95 and the ROC curve against scikit-learn; misuse fails loudly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from oodguard.calibration.detection_metrics import aupr, auroc, fpr_at_tpr, roc_curve


def _labels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.r_[np.zeros(len(a)), np.ones(len(b))]


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 20, 300).astype(float)  # many ties
    b = rng.integers(5, 25, 200).astype(float)
    want = roc_auc_score(_labels(a, b), np.r_[a, b])
    assert auroc(scores_in=a, scores_out=b) == pytest.approx(want, abs=1e-12)


# small integer ranges make ties within and across the two sets common
_tied = st.lists(st.integers(0, 6), min_size=1, max_size=40)
_real = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(a=st.one_of(_tied, _real), b=st.one_of(_tied, _real))
def test_aupr_matches_sklearn_average_precision(a: list[float], b: list[float]) -> None:
    x, y = np.asarray(a, float), np.asarray(b, float)
    s, labels = np.r_[x, y], _labels(x, y)
    want_out = average_precision_score(labels, s)
    want_in = average_precision_score(1 - labels, -s)
    assert aupr(scores_in=x, scores_out=y) == pytest.approx(want_out, abs=1e-12)
    assert aupr(scores_in=x, scores_out=y, positive="in") == pytest.approx(want_in, abs=1e-12)
    assert auroc(scores_in=x, scores_out=y) == pytest.approx(roc_auc_score(labels, s), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(a=st.one_of(_tied, _real), b=st.one_of(_tied, _real))
def test_roc_curve_matches_sklearn_on_random_data(a: list[float], b: list[float]) -> None:
    x, y = np.asarray(a, float), np.asarray(b, float)
    fpr, tpr = roc_curve(scores_in=x, scores_out=y)
    sk_fpr, sk_tpr, _ = sk_roc_curve(_labels(x, y), np.r_[x, y], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)


def test_aupr_known_values() -> None:
    # OOD ranked [o, i, o, i]: precision at the two recall steps is 1 and 2/3
    assert aupr(scores_in=np.array([3.0, 1.0]), scores_out=np.array([4.0, 2.0])) == (
        pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    )
    # perfect separation: 1 both ways; all tied: the positive fraction
    assert aupr(scores_in=np.zeros(3), scores_out=np.ones(2)) == 1.0
    assert aupr(scores_in=np.zeros(3), scores_out=np.ones(2), positive="in") == 1.0
    assert aupr(scores_in=np.zeros(3), scores_out=np.zeros(1)) == pytest.approx(1 / 4)
    # +inf (a row the guard could not score) is the most OOD score
    assert aupr(scores_in=np.array([0.0, 1.0]), scores_out=np.array([np.inf])) == 1.0


def test_fpr_at_tpr() -> None:
    inside = np.arange(100.0)  # 0..99
    outside = np.arange(50.0, 150.0)  # 95% of these are >= 55
    assert fpr_at_tpr(scores_in=inside, scores_out=outside) == pytest.approx(45 / 100)
    assert fpr_at_tpr(scores_in=inside, scores_out=inside + 1000) == 0.0
    # 0.95 * 60 is 57.000000000000007 in floating point: still the 57th highest score
    assert fpr_at_tpr(scores_in=np.arange(60.0), scores_out=np.arange(60.0)) == (
        pytest.approx(57 / 60)
    )


def test_roc_curve_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(1, size=60)
    fpr, tpr = roc_curve(scores_in=a, scores_out=b)
    sk_fpr, sk_tpr, _ = sk_roc_curve(_labels(a, b), np.r_[a, b], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


@pytest.mark.parametrize("fn", [auroc, aupr, fpr_at_tpr, roc_curve])
def test_sklearn_style_positional_call_is_a_type_error(fn) -> None:  # type: ignore[no-untyped-def]
    """The bug this guards against: auroc(y, scores) used to return a plausible wrong number."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200), np.ones(200)]
    s = np.r_[rng.normal(0, 1, 200), rng.normal(3.4, 1, 200)]
    with pytest.raises(TypeError, match=rf"{fn.__name__}\(\) takes its arguments by keyword only"
                                        r".*scores_in=…, scores_out=…"):
        fn(y, s)
    with pytest.raises(TypeError, match="1 positional"):
        fn(y, scores_out=s)
    assert auroc(scores_in=s[y == 0], scores_out=s[y == 1]) == pytest.approx(
        roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("fn", [auroc, aupr, fpr_at_tpr, roc_curve])
def test_bad_scores_are_refused(fn) -> None:  # type: ignore[no-untyped-def]
    name = fn.__name__
    with pytest.raises(ValueError, match=rf"{name} got NaN scores in scores_in \(1 of 1\)"):
        fn(scores_in=np.array([np.nan]), scores_out=np.array([1.0]))
    with pytest.raises(ValueError, match=f"{name} needs at least one .* scores_out is empty"):
        fn(scores_in=np.array([1.0]), scores_out=np.array([]))
    with pytest.raises(ValueError, match=rf"{name}: scores_in must be a 1-D .* shape \(2, 2\)"):
        fn(scores_in=np.zeros((2, 2)), scores_out=np.array([1.0]))
    with pytest.raises(TypeError, match="scores_out"):
        fn(scores_in=np.array([1.0]))  # a missing keyword stays Python's own TypeError


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError,
                       match=r"The 'tpr' parameter of fpr_at_tpr must be a float in "
                             r"\(0, 1\]. Got 0"):
        fpr_at_tpr(scores_in=np.ones(2), scores_out=np.ones(2), tpr=0)
    with pytest.raises(ValueError,
                       match="The 'positive' parameter of aupr must be 'out' or "
                             "'in'. Got 'ood' instead."):
        aupr(scores_in=np.ones(2), scores_out=np.ones(2), positive="ood")  # type: ignore[arg-type]
