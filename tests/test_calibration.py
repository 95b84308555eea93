"""Calibration: refusals, the false-positive guarantee, feature selection, the bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oodguard.bundle import CALIBRATION_FILE, read_bundle
from oodguard.calibration import calibrate, fit_scorer, required_samples
from oodguard.calibration.calibrate import check_sizes
from oodguard.calibration.selection import make_proxies, select_features
from oodguard.errors import CalibrationError
from oodguard.guard import Guard

NAMES = ("recon_error", "first_step", "convergence_rate")


def _id_features(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.column_stack([rng.lognormal(-3, 0.4, n), rng.gamma(3.0, 0.2, n),
                            rng.normal(0.0, 1.0, n)])


def test_alpha_below_one_over_n_plus_one_is_refused() -> None:
    rng = np.random.default_rng(0)
    fit, cal = _id_features(100, rng), _id_features(19, rng)
    with pytest.raises(CalibrationError, match=r"alpha=0.04 is below 1/\(n\+1\) = 0.05"):
        fit_scorer(fit, cal, NAMES, alpha=0.04)
    fit_scorer(fit, cal, NAMES, alpha=0.05)  # exactly 1/(n+1) is allowed


def test_too_small_sets_say_how_many_are_needed() -> None:
    need = required_samples(0.05, 9, 0.4)
    assert need == max(int(np.ceil(5 * 10 / 0.4)), int(np.ceil(19 / 0.6)))
    with pytest.raises(CalibrationError, match=f"at least {need} in-distribution samples"):
        check_sizes(need - 1, 9, 0.05, 0.4)
    check_sizes(need, 9, 0.05, 0.4)
    with pytest.raises(CalibrationError, match=r"alpha=0.001 is below .* Pass at least 1665"):
        check_sizes(500, 9, 0.001, 0.4)
    with pytest.raises(CalibrationError, match=r"alpha must lie in \(0, 1\)"):
        check_sizes(500, 9, 1.5, 0.4)


def test_non_finite_in_distribution_features_are_refused() -> None:
    rng = np.random.default_rng(0)
    fit = _id_features(100, rng)
    fit[3, 1] = np.inf
    with pytest.raises(CalibrationError, match="1 of 100 fit samples give non-finite"):
        fit_scorer(fit, _id_features(100, rng), NAMES)


@pytest.mark.parametrize("combine", ["max", "max_mahalanobis"])
def test_false_positive_rate_at_threshold(combine: str) -> None:
    """Conformal guarantee on generated data: over 40 independent calibrations
    (n_cal = 400 each) and 2 000 fresh in-distribution test points each (80 000 verdicts),
    the mean FPR at alpha = 0.05 lies within 0.005 of its exact expectation
    floor(alpha·(n+1))/(n+1) = 20/401 = 0.0499 (binomial + calibration s.d. ≈ 0.0018)."""
    rates = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        scorer, _ = fit_scorer(_id_features(200, rng), _id_features(400, rng), NAMES,
                               alpha=0.05, combine=combine)
        test = _id_features(2000, rng)
        rates.append(float((scorer.p_value(scorer.score(test)) <= 0.05).mean()))
    assert abs(np.mean(rates) - 20 / 401) < 0.005
    # and each single calibration is near alpha too (s.d. of one run ≈ 0.011)
    assert max(abs(r - 0.05) for r in rates) < 0.045


def test_selection_learns_feature_and_direction() -> None:
    """Only feature 2 carries the shift, and OOD values are *smaller*: the selection must find
    that direction from the reference set and the combined AUROC must not be diluted."""
    rng = np.random.default_rng(0)
    z_id = rng.normal(size=(500, 4))
    z_ref = rng.normal(size=(500, 4))
    z_ref[:, 2] -= 2.5
    sel = select_features(z_id, z_ref)
    assert sel.selected[0] == 2
    assert sel.direction[2] == -1.0
    assert sel.combined_auroc > 0.95


def test_proxies_shapes_and_kinds() -> None:
    x = np.random.default_rng(0).uniform(size=(10, 2, 3)).astype(np.float32)
    p = make_proxies(x)
    assert p.shape == (30, 2, 3) and p.dtype == np.float32
    # permute keeps each sample's values
    np.testing.assert_allclose(np.sort(p[20:].reshape(10, -1), 1), np.sort(x.reshape(10, -1), 1),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="unknown proxy kinds"):
        make_proxies(x, kinds=["blur"])


def test_calibrate_writes_plain_json_and_guard_uses_it(raw_bundle, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cal"
    report = calibrate(raw_bundle, data["val"], alpha=0.1, out=out, seed=3)
    b = read_bundle(out)
    doc = json.loads(b.files[CALIBRATION_FILE])
    assert doc["alpha"] == 0.1 and doc["info"]["n_cal"] == report.n_cal == 360
    assert doc["info"]["selection"]["reference"] == ["noise", "mixup", "permute"]
    assert set(doc["used_features"]) <= set(b.manifest.feature_names)
    guard = Guard.load(out, registry=None)
    assert guard.alpha == 0.1
    assert guard.threshold == pytest.approx(report.threshold)
    # the source bundle stays uncalibrated
    assert not read_bundle(raw_bundle).calibrated


def test_calibrate_with_user_ood_and_all_features(raw_bundle, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r1 = calibrate(raw_bundle, data["val"], x_ood=data["noise"][:100], out=tmp_path / "a")
    assert r1.scorer.info["selection"]["reference"] == "x_ood"
    r2 = calibrate(raw_bundle, data["val"], select="all", out=tmp_path / "b")
    assert "selection" not in r2.scorer.info
    assert (r2.scorer.direction == 0).all()  # two-sided without a reference set
    with pytest.raises(CalibrationError, match="at least"):
        calibrate(raw_bundle, data["val"][:30], out=tmp_path / "c")


def test_selection_does_not_add_a_feature_that_hurts_one_kind() -> None:
    """Feature 1 separates group B strongly but *reverses* on group A: adding it to feature 0
    would raise the pooled AUROC while costing group A, so it stays out."""
    rng = np.random.default_rng(1)
    n = 600
    z_id = rng.normal(size=(n, 2))
    a = rng.normal(size=(n, 2)) + [2.0, -1.5]
    b = rng.normal(size=(n, 2)) + [1.2, 4.0]
    z_ref = np.concatenate([a, b])
    groups = [np.arange(n), np.arange(n, 2 * n)]
    assert select_features(z_id, z_ref, groups=groups).selected == (0,)
    # pooled alone (one group) takes it
    assert select_features(z_id, z_ref).selected[:2] in ((0, 1), (1, 0))
