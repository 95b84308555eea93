"""The numpy runtime scorer against scikit-learn, and the conformal machinery."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.covariance import MinCovDet
from sklearn.preprocessing import PowerTransformer

from oodguard.calibration import fit_scorer, fit_transform
from oodguard.errors import BundleError, InvalidParameterError
from oodguard.scoring import (
    COMBINE_METHODS,
    Scorer,
    conformal_p_values,
    gaussian_log_sf,
    score_threshold,
    yeo_johnson,
)

NAMES = ("recon_error", "first_step", "convergence_rate", "steps_to_converge")


def _features(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [
            rng.lognormal(-4, 0.5, n),  # positive, skewed
            rng.gamma(2.0, 0.1, n),
            rng.normal(-0.3, 0.05, n),  # any sign
            rng.integers(3, 9, n).astype(float),  # discrete
        ]
    )


@pytest.mark.parametrize("seed", range(3))
def test_yeo_johnson_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(size=400), rng.exponential(size=400) - 0.5,
                         -rng.exponential(size=400), rng.normal(3, 2, size=400)])
    pt = PowerTransformer(method="yeo-johnson", standardize=False).fit(x)
    np.testing.assert_allclose(yeo_johnson(x, pt.lambdas_), pt.transform(x), rtol=1e-10,
                               atol=1e-12)


def test_yeo_johnson_special_lambdas() -> None:
    x = np.array([[-2.0, -2.0], [0.0, 0.0], [3.0, 3.0]])
    out = yeo_johnson(x, np.array([0.0, 2.0]))
    np.testing.assert_allclose(out[:, 0], [-((3.0**2 - 1) / 2), 0.0, np.log1p(3.0)])
    np.testing.assert_allclose(out[:, 1], [-np.log1p(2.0), 0.0, (4.0**2 - 1) / 2])


def test_runtime_scorer_matches_sklearn_pipeline() -> None:
    """The scorer rebuilt from plain JSON numbers equals the scikit-learn objects it came from."""
    fit, cal = _features(300, 0), _features(300, 1)
    test = _features(200, 2)
    scorer, _ = fit_scorer(fit, cal, NAMES, combine="max_mahalanobis")
    scorer = Scorer.from_dict(json.loads(json.dumps(scorer.to_dict())), NAMES)
    # Rebuild the same transform with scikit-learn, step by step.
    fitted = fit_transform(fit, NAMES, combine="max_mahalanobis")
    y = test[:, fitted.used].copy()
    logged = ~np.isnan(fitted.log_offset)
    y[:, logged] = np.log(y[:, logged] + fitted.log_offset[logged])
    y = (y - fitted.pre_center) / fitted.pre_scale
    yf = fit[:, fitted.used].copy()
    yf[:, logged] = np.log(yf[:, logged] + fitted.log_offset[logged])
    yf = (yf - fitted.pre_center) / fitted.pre_scale
    pt = PowerTransformer(method="yeo-johnson", standardize=False).fit(yf)
    z = (pt.transform(y) - fitted.post_center) / fitted.post_scale
    np.testing.assert_allclose(scorer.standardize(test), z, rtol=1e-9, atol=1e-9)
    zf = (pt.transform(yf) - fitted.post_center) / fitted.post_scale
    mcd = MinCovDet(random_state=0).fit(zf)
    c = z - scorer.maha_location
    d2 = np.einsum("ij,jk,ik->i", c, scorer.maha_precision, c)
    np.testing.assert_allclose(d2, mcd.mahalanobis(z), rtol=1e-8)


def test_conformal_p_values_formula() -> None:
    cal = np.sort(np.array([1.0, 2.0, 3.0, 4.0]))
    p = conformal_p_values(cal, np.array([0.0, 2.0, 2.5, 4.0, 9.0]))
    np.testing.assert_allclose(p, [5 / 5, 4 / 5, 3 / 5, 2 / 5, 1 / 5])


@settings(max_examples=200, deadline=None)
@given(
    cal=st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=60, unique=True),
    alpha=st.floats(0.01, 0.99),
    s=st.floats(-60, 60, allow_nan=False),
)
def test_threshold_agrees_with_p_values(cal: list[float], alpha: float, s: float) -> None:
    """``score > threshold ⇔ p ≤ alpha`` for scores that are not calibration scores."""
    c = np.sort(np.asarray(cal))
    if alpha < 1 / (len(c) + 1) or s in cal:
        return
    t = score_threshold(c, alpha)
    p = conformal_p_values(c, np.array([s]))[0]
    assert (s > t) == (p <= alpha)


def test_non_finite_features_score_as_most_ood() -> None:
    scorer, _ = fit_scorer(_features(200, 0), _features(200, 1), NAMES)
    f = _features(3, 5)
    f[1, 0] = np.nan
    s = scorer.score(f)
    assert np.isinf(s[1]) and np.isfinite(s[[0, 2]]).all()
    assert scorer.p_value(s)[1] == pytest.approx(1 / 201)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(feature_names=["a", "b", "c", "d"]), "belongs to another model"),
        (lambda d: d.update(schema_version=99), "newer"),
        (lambda d: d.update(combine="sum"), "combine must be one of"),
        (lambda d: d.update(lambdas=[1.0]), "lambdas must have"),
        (lambda d: d.update(direction=[2.0] * len(d["direction"])), "direction values"),
        (lambda d: d.update(calibration_scores=[]), "calibration_scores"),
        (lambda d: d.pop("alpha"), "malformed"),
        (lambda d: d.update(used_features=["nope"]), "malformed"),
    ],
)
def test_malformed_calibration_is_refused(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    scorer, _ = fit_scorer(_features(200, 0), _features(200, 1), NAMES)
    doc = json.loads(json.dumps(scorer.to_dict()))
    edit(doc)
    with pytest.raises(BundleError, match=message):
        Scorer.from_dict(doc, NAMES)


@pytest.fixture(scope="module")
def two_sided_and_one_sided() -> list[Scorer]:
    fit, cal = _features(300, 0), _features(300, 1)
    rng = np.random.default_rng(3)
    ref = _features(300, 2) * rng.uniform(0.5, 3.0, size=(1, 4))
    a, _ = fit_scorer(fit, cal, NAMES)
    b, _ = fit_scorer(fit, cal, NAMES, reference_features=ref, keep_sign=(),
                      two_sided_margin=None)  # every feature one-sided
    c, _ = fit_scorer(fit, cal, NAMES, reference_features=ref)  # the default: mixed
    return [a, b, c]


def _rows(*, min_size: int, max_size: int, unit: bool = True):  # type: ignore[no-untyped-def]
    """Hypothesis rows of 4 float32 features: any float (NaN, ±inf), moderate, and in [0, 1]."""
    values = [st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(-1e3, 1e3)]
    return st.lists(st.lists(st.one_of(*values, *([st.floats(0, 1)] if unit else [])),
                             min_size=4, max_size=4), min_size=min_size, max_size=max_size)


@st.composite
def _calibrations(draw):  # type: ignore[no-untyped-def]
    """A random fitted scorer: which features, which combination, which directions (every
    feature two-sided, learned from reference features, or all one-sided) and tails."""
    seed = draw(st.integers(0, 10_000))
    combine = draw(st.sampled_from(COMBINE_METHODS))
    use = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    sides = draw(st.sampled_from(["two_sided", "learned", "one_sided"]))
    minor_tail = draw(st.sampled_from([0.5, 0.25])) if combine in ("fisher", "cauchy") else 0.5
    rng = np.random.default_rng(seed)
    fit, cal = _features(200, seed), _features(200, seed + 1)
    ref = None if sides == "two_sided" else (
        _features(200, seed + 2) * rng.uniform(0.3, 3.0, size=(1, 4)))
    kw = {"keep_sign": (), "two_sided_margin": None} if sides == "one_sided" else {}
    scorer, _ = fit_scorer(fit, cal, NAMES, combine=combine, use=use, reference_features=ref,
                           minor_tail=minor_tail, required=(), **kw)
    return Scorer.from_dict(json.loads(json.dumps(scorer.to_dict())), NAMES)


def _hostile_rows(n: int, seed: int) -> np.ndarray:
    """``n`` float32 rows of 4 features: typical, far, negative, zero, huge, NaN and ±inf."""
    rng = np.random.default_rng(seed)
    f = _features(n, seed) * rng.choice([1.0, 1.0, 1.0, 0.01, 30.0, -1.0], size=(n, 4))
    special = rng.random((n, 4)) < 0.02
    f[special] = rng.choice([0.0, np.nan, np.inf, -np.inf, 3e38, -3e38], size=special.sum())
    return f.astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(scorer=_calibrations(), seed=st.integers(0, 10_000),
       cuts=st.lists(st.integers(1, 600), min_size=1, max_size=8))
def test_a_rows_score_has_the_same_bits_in_every_batch(scorer, seed, cuts) -> None:  # type: ignore[no-untyped-def]
    """Same input, same score, bit for bit: over random calibrations (feature sets,
    combinations, directions, tails), 600 rows scored at once, one by one, and in random
    batches of 1 to 600 rows give identical scores and p-values — one code path, no tolerance.
    """
    f = _hostile_rows(600, seed)
    whole = scorer.score(f)
    assert not np.isnan(whole).any()
    ones = np.concatenate([scorer.score(f[i : i + 1]) for i in range(0, 600, 7)])
    np.testing.assert_array_equal(ones.view(np.int64), whole[::7].view(np.int64))
    parts, start, k = [], 0, 0
    while start < 600:
        size = cuts[k % len(cuts)]
        parts.append(scorer.score(f[start : start + size]))
        start, k = start + size, k + 1
    np.testing.assert_array_equal(np.concatenate(parts).view(np.int64), whole.view(np.int64))
    p = scorer.p_value(whole)
    np.testing.assert_array_equal(p, conformal_p_values(scorer.calibration_scores, whole))
    np.testing.assert_array_equal(scorer.p_value(whole[:1]), p[:1])


def _only_first_feature(scorer: Scorer) -> Scorer:
    doc = scorer.to_dict()
    for key in ("log_offset", "pre_center", "pre_scale", "lambdas", "post_center", "post_scale",
                "direction", "used_features"):
        doc[key] = doc[key][:1]
    return Scorer.from_dict(doc, NAMES)


@pytest.mark.parametrize("rows", [3, 12])
def test_inf_feature_scores_inf_where_transform_is_finite(two_sided_and_one_sided, rows) -> None:  # type: ignore[no-untyped-def]
    """With λ < 0, Yeo–Johnson maps y = +inf to the finite 1/|λ|, so checking only the final
    score would let an infinite feature through as an ordinary value."""
    doc = two_sided_and_one_sided[0].to_dict()
    doc["lambdas"] = [-1.0] * len(doc["lambdas"])
    scorer = Scorer.from_dict(doc, NAMES)
    f = np.abs(_features(rows, 7)).astype(np.float32)
    with np.errstate(all="ignore"):
        y = scorer._transform.pre_power(np.where(np.isfinite(f), np.inf, f))
        t = yeo_johnson(y, scorer.lambdas)
    assert np.isfinite(t).all()  # the premise: +inf goes through the power as a finite number
    f[1, scorer.used[0]] = np.inf
    s = scorer.score(f)
    assert np.isinf(s[1]) and np.isfinite(np.delete(s, 1)).all()


def test_gaussian_log_sf_matches_scipy() -> None:
    """log Φ̄ from the erfc fit: within 2e-7 of scipy's (relative error of Φ̄ < 1.2e-7
    claimed), including tails far beyond float64's smallest number."""
    from scipy.stats import norm

    z = np.concatenate([np.linspace(-40, 40, 2001), [-1e4, 60.0, 1e3, 1e5]])
    np.testing.assert_allclose(gaussian_log_sf(z), norm.logsf(z), rtol=1e-7, atol=2e-7)


def test_both_gaussian_tails_from_one_fit_are_the_same_bits() -> None:
    """``gaussian_log_tails`` (the unequal-tails path: one erfc fit for both tails) gives
    exactly ``gaussian_log_sf(z)`` and ``gaussian_log_sf(-z)``, signed zeros included."""
    from oodguard.scoring.tails import gaussian_log_tails

    z = np.concatenate([np.random.default_rng(3).normal(0.0, 6.0, 20_000),
                        [0.0, -0.0, 1e-300, -1e-300, 40.0, -40.0, 1e5, -1e5]])
    upper, lower = gaussian_log_tails(z)
    np.testing.assert_array_equal(upper.view(np.uint64), gaussian_log_sf(z).view(np.uint64))
    np.testing.assert_array_equal(lower.view(np.uint64), gaussian_log_sf(-z).view(np.uint64))


def _p_combination_reference(scorer: Scorer, f: np.ndarray) -> np.ndarray:
    """Fisher / Cauchy the textbook way with scipy's normal tails, for moderate z; the
    Cauchy term of p > ½ as −cot(qπ) from q = 1 − p computed directly (1 − p in floating
    point loses q for very typical values), q ≥ 1e-15 as documented."""
    from scipy.special import erf
    from scipy.stats import norm

    z = scorer.standardize(f)
    d = scorer.direction
    w = scorer.tail_weights()  # the lower tail's share of a two-sided test
    p = np.where(d == 0, np.minimum(norm.sf(z) / (1 - w), norm.cdf(z) / w), norm.sf(d * z))
    p = np.minimum(p, 1.0)
    if scorer.combine == "fisher":
        return -2 * np.log(p).sum(axis=1)
    q = np.where(d == 0, erf(np.abs(z) / np.sqrt(2)), norm.cdf(d * z))
    q = np.maximum(np.where((d == 0) & (w != 0.5), 1 - p, q), 1e-15)
    terms = np.where(p <= 0.5, np.tan((0.5 - p) * np.pi), -1 / np.tan(q * np.pi))
    return np.arcsinh(terms.mean(axis=1))


@pytest.mark.parametrize("minor_tail", [0.5, 0.25, 0.02])
@pytest.mark.parametrize("combine", ["fisher", "cauchy"])
def test_p_value_combinations_match_the_textbook_formula(combine: str, minor_tail: float) -> None:
    """The runtime Fisher and Cauchy scores, rebuilt from plain JSON numbers, equal the
    formulas computed with scipy (one- and two-sided features, equal and unequal tails), are
    the calibration side's calibration scores, do not depend on the batch, and score
    non-finite features +inf."""
    fit, cal = _features(300, 0), _features(300, 1)
    ref = _features(300, 2) * np.random.default_rng(3).uniform(0.5, 3.0, size=(1, 4))
    for reference in (None, ref):
        scorer, _ = fit_scorer(fit, cal, NAMES, combine=combine, reference_features=reference,
                               minor_tail=minor_tail)
        two_sided = scorer.direction == 0
        assert two_sided.any()
        np.testing.assert_array_equal(scorer.tail_weights()[~two_sided], 0.5)
        if reference is None:  # every feature two-sided, the upper tail the major one
            np.testing.assert_array_equal(scorer.tail_weights(), minor_tail)
        doc = json.loads(json.dumps(scorer.to_dict()))
        assert doc["combine"] == combine and doc["mahalanobis"] is None
        runtime = Scorer.from_dict(doc, NAMES)
        test = _features(500, 4)
        got = runtime.score(test)
        # Cauchy with unequal tails takes q = 1 − p near p = 1 from the erfc fit (relative
        # error 1.2e-7 of Φ̄, amplified by the cancellation in 1 − p where both tails' p-values
        # approach 1); everything else agrees to 1e-6.
        tol = 1e-3 if combine == "cauchy" and minor_tail != 0.5 else 1e-6
        np.testing.assert_allclose(got, _p_combination_reference(runtime, test), rtol=tol,
                                   atol=tol)
        np.testing.assert_array_equal(runtime.calibration_scores, np.sort(scorer.score(cal)))
        rows = np.concatenate([runtime.score(test[i : i + 1]) for i in range(0, 500, 50)])
        np.testing.assert_array_equal(rows, got[::50])
        np.testing.assert_array_equal(runtime.score(test[:7]), got[:7])
    bad = _features(3, 5)
    bad[1, 0] = np.nan
    bad[2, 0] = np.inf  # recon_error: always used
    s = runtime.score(bad)
    assert np.isfinite(s[0]) and np.isinf(s[1:]).all()


def test_cauchy_is_finite_and_ordered_far_in_the_tail() -> None:
    """A tail p-value below 1e-300 must not overflow to a tie: farther stays higher."""
    fit, cal = _features(300, 0), _features(300, 1)
    scorer, _ = fit_scorer(fit, cal, NAMES, combine="cauchy", use=["first_step"])
    f = _features(4, 6)
    f[:, 1] = [1.0, 10.0, 1e3, 1e6]
    s = scorer.score(f)
    assert np.isfinite(s).all() and (np.diff(s) > 0).all()


def test_unequal_tails() -> None:
    """``lower_weight`` splits a two-sided test between its tails (a Bonferroni split, so each
    feature's p-value stays valid): ½ is the equal-tailed ``2·Φ̄(|z|)`` bit for bit, and a
    document with unequal tails is written as schema 2 (older runtimes refuse it instead of
    scoring it equal-tailed), one with equal tails as schema 1 without the field."""
    from scipy.stats import norm

    fit, cal = _features(300, 0), _features(300, 1)
    test = _features(200, 4)
    equal, _ = fit_scorer(fit, cal, NAMES, combine="fisher", use=["recon_error"], minor_tail=0.5)
    doc = equal.to_dict()
    assert doc["schema_version"] == 1 and "lower_weight" not in doc
    doc.update(schema_version=2, lower_weight=[0.5])
    np.testing.assert_array_equal(Scorer.from_dict(doc, NAMES).score(test), equal.score(test))
    for w in (0.1, 0.9):
        doc["lower_weight"] = [w]
        sc = Scorer.from_dict(doc, NAMES)
        z = sc.standardize(test)[:, 0]
        want = -2 * np.log(np.minimum(1, np.minimum(norm.sf(z) / (1 - w), norm.cdf(z) / w)))
        np.testing.assert_allclose(sc.score(test), want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(sc.score(test[:3]), want[:3], rtol=1e-6, atol=1e-6)
        assert sc.to_dict()["schema_version"] == 2 and sc.to_dict()["lower_weight"] == [w]
    # ω = 0.1 gives the upper tail 0.9 of the test: a high z scores higher than with equal
    # tails, a low z lower
    doc["lower_weight"] = [0.1]
    sc = Scorer.from_dict(doc, NAMES)
    z = sc.standardize(test)[:, 0]
    hi, lo = int(np.argmax(z)), int(np.argmin(z))
    assert z[hi] > 1 and z[lo] < -1
    assert sc.score(test[[hi]])[0] > equal.score(test[[hi]])[0]
    assert sc.score(test[[lo]])[0] < equal.score(test[[lo]])[0]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(lower_weight=[0.2]), "schema_version 2"),
        (lambda d: d.update(schema_version=2, lower_weight=[0.0]), "outside its domain"),
        (lambda d: d.update(schema_version=2, lower_weight=[1.0]), "outside its domain"),
        (lambda d: d.update(schema_version=2, lower_weight=[0.2, 0.2]), "must have 1 values"),
        (lambda d: d.update(schema_version=2, lower_weight=[0.2], direction=[1.0]),
         "0.5 for one-sided"),
        (lambda d: d.update(schema_version=2, lower_weight=[0.2], combine="max"),
         "need combine"),
        (lambda d: d.update(schema_version=4), "newer"),
    ],
)
def test_malformed_tail_weights_are_refused(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    scorer, _ = fit_scorer(_features(200, 0), _features(200, 1), NAMES, combine="fisher",
                           use=["recon_error"], minor_tail=0.5)
    doc = json.loads(json.dumps(scorer.to_dict()))
    assert doc["direction"] == [0.0]
    edit(doc)
    with pytest.raises(BundleError, match=message):
        Scorer.from_dict(doc, NAMES)


def test_default_minor_tail_follows_the_combination() -> None:
    """By default a p-value combination gives each two-sided test's minor tail
    DEFAULT_MINOR_TAIL of its budget (schema 2); the others, which cannot weight tails, keep
    equal tails (schema 1) instead of refusing the default."""
    from oodguard.calibration.calibrate import DEFAULT_MINOR_TAIL

    fit, cal = _features(200, 0), _features(200, 1)
    for combine in ("fisher", "cauchy"):
        sc, _ = fit_scorer(fit, cal, NAMES, combine=combine, use=["recon_error", "first_step"])
        assert (sc.direction == 0).all()
        np.testing.assert_array_equal(sc.tail_weights(), DEFAULT_MINOR_TAIL)
        assert sc.to_dict()["schema_version"] == 2
    for combine in ("max", "max_mahalanobis", "mahalanobis"):
        sc, _ = fit_scorer(fit, cal, NAMES, combine=combine, use=["recon_error", "first_step"])
        assert sc.to_dict()["schema_version"] == 1 and "lower_weight" not in sc.to_dict()


def test_minor_tail_needs_a_p_combination() -> None:
    with pytest.raises(InvalidParameterError,
                       match="The 'minor_tail' parameter must be 0.5 unless combine is 'fisher' "
                             "or 'cauchy'. Got 0.25 instead."):
        fit_scorer(_features(200, 0), _features(200, 1), NAMES, combine="max", minor_tail=0.25)
    with pytest.raises(InvalidParameterError, match=r"must be a float in \(0, 0.5\]. Got 0.6"):
        fit_scorer(_features(200, 0), _features(200, 1), NAMES, combine="fisher", minor_tail=0.6)
