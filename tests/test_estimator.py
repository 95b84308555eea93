"""oodguard.OODDetector in scikit-learn's and PyOD's conventions: scikit-learn's
check_estimator where its checks apply (each check that does not is listed with why), and the
same properties on data large enough to calibrate."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("torch")
sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import MinMaxScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

import oodguard  # noqa: E402
from oodguard.calibration import auroc  # noqa: E402
from oodguard.errors import CalibrationError  # noqa: E402

_SMALL = ("scikit-learn fits this check on 1 to 30 rows; a conformal calibration at alpha "
          "needs at least 50 validation rows (5 per baseline feature to fit the scorer, "
          "1/alpha - 1 to calibrate), so fit refuses with a CalibrationError (a ValueError); "
          "test_estimator.py checks the same property on data large enough")
_PYOD = ("scikit-learn's outlier convention (predict in {-1, 1}, decision_function higher = "
         "more normal, offset_); OODDetector follows PyOD's, as issue 20 asks: predict 1 = "
         "outlier, 0 = inlier, decision_function higher = more abnormal")
NOT_APPLICABLE = {
    **{name: _SMALL for name in (
        "check_fit_score_takes_y", "check_estimators_overwrite_params",
        "check_dont_overwrite_parameters", "check_estimators_fit_returns_self",
        "check_readonly_memmap_input", "check_n_features_in_after_fitting",
        "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_dtype_object",
        "check_pipeline_consistency", "check_estimators_nan_inf", "check_estimators_pickle",
        "check_f_contiguous_array_estimator", "check_classifier_data_not_an_array",
        "check_methods_sample_order_invariance", "check_methods_subset_invariance",
        "check_fit2d_1sample", "check_fit2d_1feature", "check_dict_unchanged",
        "check_fit_idempotent", "check_fit_check_is_fitted", "check_n_features_in",
        "check_fit2d_predict1d")},
    "check_outliers_train": _PYOD,
    "check_outliers_fit_predict": _PYOD,
}


@pytest.mark.slow
def test_check_estimator_passes_every_check_that_applies() -> None:
    results = check_estimator(oodguard.OODDetector(max_epochs=2, steps=2, alpha=0.2,
                                                   threads=1),
                              expected_failed_checks=NOT_APPLICABLE, on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])[:200]) for r in results
              if r["status"] == "failed"]
    assert not failed
    ran = {r["check_name"] for r in results}
    passed = {r["check_name"] for r in results if r["status"] == "passed"}
    assert len(passed) >= 15, passed
    # every exemption names a check that exists and really does not pass
    assert set(NOT_APPLICABLE) <= ran and not set(NOT_APPLICABLE) & passed


def _blobs(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0] * 6, [3.0] * 6, [-3.0, 3.0] * 3])
    x = centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 6)) + shift
    return x.astype(np.float64)


@pytest.fixture(scope="module")
def detector():  # type: ignore[no-untyped-def]
    return oodguard.OODDetector(max_epochs=30, threads=1, steps=8).fit(_blobs(900, 0))


def test_fit_returns_self_and_follows_pyods_conventions(detector) -> None:  # type: ignore[no-untyped-def]
    x_in, x_out = _blobs(300, 1), _blobs(300, 2, shift=5.0)
    d_in, d_out = detector.decision_function(x_in), detector.decision_function(x_out)
    assert d_in.dtype == np.float64 and d_in.shape == (300,)
    assert auroc(scores_in=d_in, scores_out=d_out) > 0.95  # higher = more abnormal
    pred = detector.predict(np.concatenate([x_in, x_out]))
    assert pred.dtype.kind == "i" and set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, np.concatenate([d_in, d_out]) > detector.threshold_)
    np.testing.assert_array_equal(detector.score_samples(x_in), -d_in)
    # the calibrated alpha on held-out in-distribution rows (binomial 99% range of 5% at n=300)
    assert detector.predict(x_in).mean() < 0.095
    assert detector.decision_scores_.shape == (900,) and detector.labels_.shape == (900,)
    assert detector.n_features_in_ == 6
    p = detector.predict_pvalue(x_in)
    assert ((p > 0) & (p <= 1)).all()


def test_scores_do_not_depend_on_row_order_or_subset_and_pickle_round_trips(detector) -> None:  # type: ignore[no-untyped-def]
    x = _blobs(200, 3)
    d = detector.decision_function(x)
    perm = np.random.default_rng(0).permutation(200)
    np.testing.assert_array_equal(detector.decision_function(x[perm]), d[perm])
    np.testing.assert_array_equal(detector.decision_function(x[:7]), d[:7])
    back = pickle.loads(pickle.dumps(detector))
    np.testing.assert_array_equal(back.decision_function(x), d)
    assert back.threshold_ == detector.threshold_


def test_fit_is_reproducible_and_clone_gives_an_unfitted_copy(detector) -> None:  # type: ignore[no-untyped-def]
    again = clone(detector).fit(_blobs(900, 0))
    x = _blobs(50, 4)
    np.testing.assert_array_equal(again.decision_function(x), detector.decision_function(x))
    assert not hasattr(clone(detector), "bundle_")


def test_it_works_in_a_pipeline_and_refuses_bad_inputs(detector) -> None:  # type: ignore[no-untyped-def]
    pipe = make_pipeline(MinMaxScaler(), oodguard.OODDetector(max_epochs=5, steps=4,
                                                              threads=1))
    pipe.fit(_blobs(600, 5))
    assert pipe.predict(_blobs(20, 6)).shape == (20,)
    with pytest.raises(ValueError, match="features"):
        detector.decision_function(_blobs(5, 0)[:, :4])
    bad = _blobs(5, 0)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        detector.predict(bad)
    with pytest.raises(CalibrationError, match="Pass at least 50 in-distribution samples"):
        oodguard.OODDetector().fit(_blobs(30, 0))
    with pytest.raises(oodguard.InvalidParameterError, match="'val_fraction' parameter"):
        oodguard.OODDetector(val_fraction=1.5).fit(_blobs(300, 0))
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        oodguard.OODDetector().predict(_blobs(5, 0))
