"""Calibration: refusals, the false-positive guarantee, feature selection, the bundle."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from oodguard.bundle import CALIBRATION_FILE, MODEL_FILE, read_bundle, write_bundle
from oodguard.calibration import calibrate, fit_scorer, required_samples
from oodguard.calibration.calibrate import check_sizes
from oodguard.calibration.selection import DEFAULT_PROXY_KINDS
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


@pytest.mark.parametrize("combine, minor_tail", [("max", 0.5), ("max_mahalanobis", 0.5),
                                                 ("fisher", 0.5), ("cauchy", 0.5),
                                                 ("fisher", 0.25)])
def test_false_positive_rate_at_threshold(combine: str, minor_tail: float) -> None:
    """Conformal guarantee on generated data: over 40 independent calibrations
    (n_cal = 400 each) and 2 000 fresh in-distribution test points each (80 000 verdicts),
    the mean FPR at alpha = 0.05 lies within 0.005 of its exact expectation
    floor(alpha·(n+1))/(n+1) = 20/401 = 0.0499 (binomial + calibration s.d. ≈ 0.0018)."""
    rates = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        scorer, _ = fit_scorer(_id_features(200, rng), _id_features(400, rng), NAMES,
                               alpha=0.05, combine=combine, minor_tail=minor_tail)
        test = _id_features(2000, rng)
        rates.append(float((scorer.p_value(scorer.score(test)) <= 0.05).mean()))
    assert abs(np.mean(rates) - 20 / 401) < 0.005
    # and each single calibration is near alpha too (s.d. of one run ≈ 0.011)
    assert max(abs(r - 0.05) for r in rates) < 0.045


def test_calibrate_writes_plain_json_and_guard_uses_it(raw_bundle, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cal"
    report = calibrate(raw_bundle, data["val"], alpha=0.1, out=out, seed=3)
    b = read_bundle(out)
    doc = json.loads(b.files[CALIBRATION_FILE])
    assert doc["alpha"] == 0.1 and doc["info"]["n_cal"] == report.n_cal == 360
    assert doc["info"]["selection"]["reference"] == list(DEFAULT_PROXY_KINDS)
    # the classic baseline is always in the score, and the far inputs came out OOD
    assert "recon_error" in doc["used_features"]
    assert doc["info"]["warnings"] == list(report.warnings) == []
    assert all(v["flagged"] == v["n"] for v in doc["info"]["sanity"].values())
    assert report.sanity == doc["info"]["sanity"]
    assert set(doc["used_features"]) <= set(b.manifest.feature_names)
    guard = Guard.load(out, registry=None)
    assert guard.alpha == 0.1
    assert guard.threshold == pytest.approx(report.threshold)
    # the source bundle stays uncalibrated
    assert not read_bundle(raw_bundle).calibrated


def test_calibrate_with_unequal_tails(raw_bundle, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``minor_tail`` reaches the written calibration: the all-two-sided selection gets
    ``lower_weight`` 0.25 everywhere (the upper tail the major one), schema 2, and the guard
    scores with it exactly as the calibrator did."""
    r = calibrate(raw_bundle, data["val"], select="all", minor_tail=0.25, out=tmp_path / "w")
    doc = json.loads(read_bundle(tmp_path / "w").files[CALIBRATION_FILE])
    assert doc["schema_version"] == 2 and set(doc["lower_weight"]) == {0.25}
    guard = Guard.load(tmp_path / "w", registry=None)
    x = data["noise"][:50]
    np.testing.assert_array_equal(guard.check(x).score, r.scorer.score(guard.engine.run(x)))


def test_small_validation_sets_calibrate_the_baselines(raw_bundle, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Too few samples to fit every feature but enough for the three classic baselines: the
    calibration uses those alone and says so (it used to refuse); fewer still is refused with
    the size every feature needs."""
    names = read_bundle(raw_bundle).manifest.feature_names
    need_all = required_samples(0.05, len(names), 0.4)
    need_base = required_samples(0.05, 3, 0.4)
    assert need_base <= 60 < need_all
    r = calibrate(raw_bundle, data["val"][:60], out=tmp_path / "small")
    assert {r.scorer.feature_names[i] for i in r.scorer.used} <= {
        "recon_error", "latent_knn", "latent_mahalanobis"}
    assert any("too few to fit all" in w for w in r.warnings)
    assert r.n_fit + r.n_cal == 60
    with pytest.raises(CalibrationError, match=f"at least {need_all} in-distribution samples"):
        calibrate(raw_bundle, data["val"][: need_base - 1], out=tmp_path / "tiny")
    # an explicit use= is the caller's choice: no silent narrowing
    with pytest.raises(CalibrationError, match="at least"):
        calibrate(raw_bundle, data["val"][:60], use=list(names), out=tmp_path / "all")


def test_calibrate_with_user_ood_and_all_features(raw_bundle, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r1 = calibrate(raw_bundle, data["val"], x_ood=data["noise"][:100], out=tmp_path / "a")
    assert r1.scorer.info["selection"]["reference"] == "x_ood"
    r2 = calibrate(raw_bundle, data["val"], select="all", out=tmp_path / "b")
    assert "selection" not in r2.scorer.info
    assert (r2.scorer.direction == 0).all()  # two-sided without a reference set
    with pytest.raises(CalibrationError, match="at least"):
        calibrate(raw_bundle, data["val"][:30], out=tmp_path / "c")


def _shifted(n: int, rng: np.random.Generator, recon_factor: float) -> np.ndarray:
    f = _id_features(n, rng)
    f[:, 0] *= recon_factor
    f[:, 1] += 1.0
    return f


def test_selection_keeps_recon_error_even_where_the_reference_prefers_another() -> None:
    """Reference outliers separate on first_step only: the old rule kept first_step alone;
    recon_error, a required baseline, stays in (never inverted)."""
    rng = np.random.default_rng(0)
    fit, cal = _id_features(300, rng), _id_features(300, rng)
    ref = _shifted(300, rng, 1.0)
    scorer, info = fit_scorer(fit, cal, NAMES, reference_features=ref)
    used = [NAMES[i] for i in scorer.used]
    assert used[0] == "recon_error" and "first_step" in used
    assert scorer.direction[0] != -1.0 and info["warnings"] == []
    old, old_info = fit_scorer(fit, cal, NAMES, reference_features=ref, required=())
    assert [NAMES[i] for i in old.used] == ["first_step"]
    (w,) = old_info["warnings"]
    assert w.startswith("recon_error, the classic baseline, is not in the score")
    assert re.search(r"reference AUROCs: recon_error 0\.[45]\d+, first_step 0\.9\d+", w)


def test_inverted_baseline_is_two_sided_or_warned(caplog: pytest.LogCaptureFixture) -> None:
    """Reference inputs that reconstruct *better* (recon_error × 0.3): by default recon_error
    is tested two-sided (direction 0), never inverted; if inversion is allowed, it is warned
    about with the evidence."""
    rng = np.random.default_rng(1)
    fit, cal = _id_features(300, rng), _id_features(300, rng)
    ref = _shifted(300, rng, 0.3)
    scorer, info = fit_scorer(fit, cal, NAMES, reference_features=ref)
    assert scorer.direction[list(scorer.used).index(0)] == 0.0 and info["warnings"] == []
    with caplog.at_level("WARNING", logger="oodguard.calibration.calibrate"):
        _, info = fit_scorer(fit, cal, NAMES, reference_features=ref, keep_sign=())
    (w,) = info["warnings"]
    assert w.startswith("recon_error was given direction -1 (small = unusual)")
    assert "reference AUROCs: recon_error 0.0" in w
    assert any("direction -1" in r.getMessage() for r in caplog.records)


def test_excluded_features_are_left_out_and_reported() -> None:
    rng = np.random.default_rng(2)
    fit, cal = _id_features(200, rng), _id_features(200, rng)
    scorer, info = fit_scorer(fit, cal, NAMES, exclude={"first_step": "unstable"})
    assert "first_step" not in [NAMES[i] for i in scorer.used]
    assert info["dropped_features"] == {"first_step": "unstable"}
    assert scorer.info["dropped_features"] == {"first_step": "unstable"}
    with pytest.raises(CalibrationError, match="no candidate feature is left"):
        fit_scorer(fit, cal, NAMES, use=["first_step"], exclude={"first_step": "unstable"})


def test_conformal_split_is_untouched_by_selection() -> None:
    """The calibration scores are exactly the fitted scorer's scores of the calibration part:
    changing the reference set changes the selection, never which rows calibrate."""
    rng = np.random.default_rng(3)
    fit, cal = _id_features(200, rng), _id_features(200, rng)
    for ref in (None, _shifted(200, rng, 3.0), _shifted(200, rng, 0.3)):
        scorer, _ = fit_scorer(fit, cal, NAMES, reference_features=ref)
        np.testing.assert_array_equal(scorer.calibration_scores, np.sort(scorer.score(cal)))


def test_calibrate_leaves_out_unstable_features(raw_bundle, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The exporter's per-feature stability record (manifest ``dynamics``): unstable features
    are not candidates and ``dropped`` says why; a manifest without the record (older
    bundles) leaves every feature a candidate."""
    src = read_bundle(raw_bundle)
    stability = {n: {"stable": n != "recon_error"} for n in src.manifest.feature_names}
    dynamics = {**src.manifest.dynamics, "stability": stability}
    manifest = dataclasses.replace(src.manifest, dynamics=dynamics)
    unstable = write_bundle(tmp_path / "unstable", manifest, {MODEL_FILE: src.files[MODEL_FILE]})
    report = calibrate(unstable, data["val"], out=tmp_path / "a")
    assert "recon_error" not in [report.scorer.feature_names[i] for i in report.scorer.used]
    assert "numerically unstable" in report.dropped["recon_error"]
    # without recon_error in the score, the report says so
    assert any(w.startswith("recon_error, the classic baseline, is not in the score "
                            "(numerically unstable") for w in report.warnings)
    # an older bundle, written without the record: nothing is left out for stability
    old = dataclasses.replace(src.manifest, dynamics={})
    older = write_bundle(tmp_path / "older", old, {MODEL_FILE: src.files[MODEL_FILE]})
    r_old = calibrate(older, data["val"], out=tmp_path / "c")
    assert not any("unstable" in why for why in r_old.dropped.values())
    plain = calibrate(raw_bundle, data["val"], out=tmp_path / "b")
    assert "recon_error" not in plain.dropped


def test_default_calibration_fpr_whatever_the_batch(bundle, data) -> None:  # type: ignore[no-untyped-def]
    """End to end with the default selection (the session's calibrated bundle, n_cal = 360):
    600 fresh in-distribution inputs checked in one batch and one at a time get the same
    verdicts (a batch-size-dependent feature would make the calibration and the checks
    disagree), and the held-out FPR lies within 0.05 ± 0.045 (s.d. of one split ≈ 0.0145:
    calibration draw plus test binomial; ±3 s.d.)."""
    guard = Guard.load(bundle, registry=None)
    whole = guard.check(data["test"])
    one = [guard.check(data["test"][i : i + 1]) for i in range(0, 600, 10)]
    np.testing.assert_array_equal(np.concatenate([r.is_ood for r in one]), whole.is_ood[::10])
    np.testing.assert_allclose(np.concatenate([r.score for r in one]), whole.score[::10],
                               rtol=1e-4)
    assert 0.005 <= float(whole.is_ood.mean()) <= 0.095
    assert guard.alpha == 0.05


def test_calibration_report_prints_a_short_summary(raw_bundle, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = calibrate(raw_bundle, data["val"], alpha=0.1, out=tmp_path / "s", seed=3)
    text = str(r)
    lines = text.splitlines()
    assert len(r.scorer.calibration_scores) == r.n_cal == 360  # the details: every score
    assert 6 <= len(lines) <= 14 + len(r.warnings), text
    assert lines[0] == f"calibrated bundle {tmp_path / 's'}"
    assert f"alpha 0.1: flag when p <= 0.1; threshold {r.threshold:.4g}" in text
    assert "validation rows: 240 fit the scorer, 360 calibrate the p-values" in text
    assert f"score: {r.scorer.combine} over {len(r.scorer.used)} of 13 features" in text
    assert "recon_error (" in text and "selected on synthetic outliers (" in text
    assert "far inputs flagged: " in text
    assert lines[-1].startswith("details: .scorer")
    assert r.details["n_cal"] == 360 and "selection" in r.details
    assert "\n" not in repr(r) and "calibration_scores" not in repr(r)
