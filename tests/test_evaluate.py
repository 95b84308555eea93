"""evaluate(): the metrics against a direct computation, chunk invariance, the KS tests' error
rates on generated data, and every refused input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import make_data
from sklearn.metrics import average_precision_score, roc_auc_score

from oodguard.calibration import EvaluationReport, evaluate
from oodguard.calibration.evaluate import ks_tests
from oodguard.errors import CalibrationError, InvalidInputError, NotCalibratedError
from oodguard.guard import Guard
from oodguard.scoring import conformal_p_values, score_threshold


@pytest.fixture(scope="module")
def sets(data) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return {"noise": data["noise"], "shifted": make_data(300, seed=11, shift=1.5)}


@pytest.fixture(scope="module")
def report(bundle, data, sets) -> EvaluationReport:  # type: ignore[no-untyped-def]
    return evaluate(bundle, data["test"], sets, providers="cpu")


def test_metrics_equal_a_direct_computation(bundle, data, sets, report) -> None:  # type: ignore[no-untyped-def]
    guard = Guard.load(bundle, providers="cpu", registry=None)
    r_in = guard.check(data["test"])
    np.testing.assert_array_equal(report.scores_in, r_in.score)
    np.testing.assert_array_equal(report.p_values_in, r_in.p_value)
    assert report.alpha == guard.alpha == 0.05 and report.threshold == guard.threshold
    assert report.n_calibration == len(guard.scorer.calibration_scores)
    assert report.fpr_at_threshold == pytest.approx(r_in.is_ood.mean())
    assert [s.name for s in report.ood_sets] == ["noise", "shifted"]
    for name, x in sets.items():
        r_out = guard.check(x)
        s, y = np.r_[r_in.score, r_out.score], np.r_[np.zeros(len(r_in)), np.ones(len(r_out))]
        got = report[name]
        assert got.n == len(x)
        assert got.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert got.aupr_out == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert got.aupr_in == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
        k = int(np.ceil(0.95 * len(x))) - 1
        assert got.fpr95 == pytest.approx(np.mean(r_in.score >= np.sort(r_out.score)[::-1][k]))
        assert got.tpr_at_threshold == pytest.approx(r_out.is_ood.mean())
    # far-OOD noise is separated; the in-distribution test split is flagged near alpha
    assert report["noise"].auroc > 0.95 and report["noise"].tpr_at_threshold > 0.8
    assert report.fpr_at_threshold < 0.12
    with pytest.raises(KeyError, match=r"no OOD set 'x'; sets are \['noise', 'shifted'\]"):
        report["x"]


def test_every_feature_is_scored_alone_and_losses_are_said_in_words(bundle, data, sets,  # type: ignore[no-untyped-def]
                                                                     report) -> None:
    guard = Guard.load(bundle, providers="cpu", registry=None)
    f_in = guard.check(data["test"]).features.astype(np.float64)
    for name, x in sets.items():
        f_out = guard.check(x).features.astype(np.float64)
        got = report[name].features
        assert list(got) == list(guard.feature_names)
        assert {"recon_error", "latent_knn", "latent_mahalanobis"} <= set(got)
        for j, f in enumerate(guard.feature_names):
            y = np.r_[np.zeros(len(f_in)), np.ones(len(f_out))]
            v = np.r_[f_in[:, j], f_out[:, j]]
            assert got[f]["higher"] == pytest.approx(roc_auc_score(y, v), abs=1e-12)
            assert got[f]["lower"] == pytest.approx(roc_auc_score(y, -v), abs=1e-12)
            med = np.median(f_in[:, j])
            assert got[f]["two_sided"] == pytest.approx(roc_auc_score(y, np.abs(v - med)),
                                                        abs=1e-12)
    # a set on which one feature beats the combined score by more than the margin is named
    weak = dataclasses.replace(report["shifted"], auroc=0.3)
    words = weak.losses()
    assert words and words[0].startswith("on 'shifted' the combined score (AUROC 0.300) loses to")
    best = max(a for t in weak.features.values() for a in t.values())
    assert f"(AUROC {best:.3f}, {best - 0.3:+.3f})" in words[0]
    assert not dataclasses.replace(weak, auroc=1.0).losses()
    table = report.table()
    assert "AUROC hi/lo/2s" in table and "latent_knn" in table
    assert report.to_dict()["ood_sets"]["shifted"]["losses"] == report["shifted"].losses()


def test_ks_numbers_and_json(report) -> None:  # type: ignore[no-untyped-def]
    from scipy.stats import kstest

    want = kstest(report.p_values_in, "uniform")
    assert report.ks_statistic == pytest.approx(want.statistic)
    assert report.ks_pvalue == pytest.approx(want.pvalue)
    doc = report.to_dict()
    assert doc["oodguard_evaluation"] == 1
    assert set(doc["in_distribution"]) == {"n", "fpr_at_threshold", "p_value_ks_uniform",
                                           "score_ks_calibration", "exchangeability"}
    assert set(doc["ood_sets"]["noise"]) == {"n", "auroc", "aupr_in", "aupr_out", "fpr95",
                                             "fpr_at_threshold", "tpr_at_threshold", "features",
                                             "losses"}
    table = report.table()
    assert "noise" in table and "shifted" in table and "AUPR-out" in table


def test_evaluate_says_in_words_when_the_held_out_data_is_not_exchangeable(bundle, data,
                                                                         report) -> None:  # type: ignore[no-untyped-def]
    assert report.exchangeability_note() is None  # fresh draws of the validation distribution
    assert "exchangeable" not in report.table()
    drifted = evaluate(bundle, make_data(600, seed=21, shift=0.6), {"noise": data["noise"]},
                       providers="cpu")
    note = drifted.exchangeability_note()
    assert note is not None and drifted.ks_calibration_pvalue < 0.01
    assert note.startswith("the held-out data does not look exchangeable with the calibration "
                           "data")
    assert "WARNING: the held-out data does not look exchangeable" in drifted.table()
    assert drifted.to_dict()["in_distribution"]["exchangeability"] == note


def test_chunk_size_and_a_guard_object_give_the_same_numbers(bundle, data, sets, report) -> None:  # type: ignore[no-untyped-def]
    """Within the engine's own batch-size tolerance: ONNX Runtime's CPU GEMM kernels differ by
    batch size in the last float32 bits (test_engine asserts rtol 1e-5 for the same reason)."""
    guard = Guard.load(bundle, providers="cpu", registry=None)
    again = evaluate(guard, data["test"], sets, chunk=7)
    np.testing.assert_allclose(again.scores_in, report.scores_in, rtol=1e-5, atol=1e-5)
    for a, b in zip(again.ood_sets, report.ood_sets, strict=True):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
        for metric in ("auroc", "aupr_in", "aupr_out", "fpr95", "tpr_at_threshold"):
            assert getattr(a, metric) == pytest.approx(getattr(b, metric), abs=1e-3), metric
    # the same chunking twice: bit for bit
    np.testing.assert_array_equal(evaluate(guard, data["test"], sets, chunk=7).scores_in,
                                  again.scores_in)


def test_alpha_override(bundle, data, sets) -> None:  # type: ignore[no-untyped-def]
    r = evaluate(bundle, data["test"], sets, alpha=0.2, providers="cpu")
    guard = Guard.load(bundle, providers="cpu", registry=None)
    assert r.alpha == 0.2
    assert r.threshold == score_threshold(guard.scorer.calibration_scores, 0.2)
    assert r.fpr_at_threshold == pytest.approx(np.mean(r.p_values_in <= 0.2))
    assert r["shifted"].tpr_at_threshold >= evaluate(
        guard, data["test"], sets)["shifted"].tpr_at_threshold


def test_non_finite_rows_score_inf_and_count_as_flagged(bundle, data) -> None:  # type: ignore[no-untyped-def]
    x = data["noise"][:20].copy()
    x[:3, 0] = np.nan
    r = evaluate(bundle, data["test"], {"nan": x}, providers="cpu")
    assert np.isinf(r["nan"].scores[:3]).all() and r["nan"].tpr_at_threshold > 0


def test_ks_error_rates_on_generated_data() -> None:
    """Exchangeable data, 100 calibration vs 3 000 test scores: the two-sample test rejects at
    its level (0.05 ± 3 standard errors over 300 repeats); the one-sample test of the p-values,
    conditional on one calibration set, rejects most of the time. A shift: both reject."""
    rng = np.random.default_rng(0)
    reps, rej_one, rej_two = 300, 0, 0
    for _ in range(reps):
        cal = np.sort(rng.normal(size=100))
        s = rng.normal(size=3000)
        _, p1, _, p2 = ks_tests(conformal_p_values(cal, s), s, cal)
        rej_one += p1 <= 0.05
        rej_two += p2 <= 0.05
    assert rej_two / reps <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / reps)
    assert rej_one / reps > 0.5
    cal = np.sort(rng.normal(size=200))
    s = rng.normal(1.0, 1.0, size=400)
    _, p1, _, p2 = ks_tests(conformal_p_values(cal, s), s, cal)
    assert p1 < 1e-6 and p2 < 1e-6


def test_refused_inputs(bundle, raw_bundle, data) -> None:  # type: ignore[no-untyped-def]
    x, ood = data["test"], {"noise": data["noise"]}
    with pytest.raises(InvalidInputError, match=r"OOD set 'empty' is empty \(shape \(0, 16\)\); "
                                                r"pass at least one input of shape \(16,\)"):
        evaluate(bundle, x, {"empty": np.empty((0, 16), np.float32)})
    with pytest.raises(InvalidInputError, match="in-distribution inputs is empty"):
        evaluate(bundle, np.empty((0, 16), np.float32), ood)
    with pytest.raises(InvalidInputError, match=r"OOD set 'wide': .*shape") as err:
        evaluate(bundle, x, {"wide": np.zeros((4, 17), np.float32)})
    assert err.value.reason == "shape"
    with pytest.raises(ValueError, match="needs at least one OOD set"):
        evaluate(bundle, x, {})
    with pytest.raises(ValueError, match="non-empty strings; got ''"):
        evaluate(bundle, x, {"": data["noise"]})
    with pytest.raises(ValueError,
                       match="The 'chunk' parameter of evaluate must be a positive "
                             "int. Got 0 instead."):
        evaluate(bundle, x, ood, chunk=0)
    with pytest.raises(CalibrationError, match=r"alpha must lie in \[1/\(n\+1\), 1\).*got 1e-05"):
        evaluate(bundle, x, ood, alpha=1e-5)
    with pytest.raises(CalibrationError, match=r"got 1.0"):
        evaluate(bundle, x, ood, alpha=1.0)
    with pytest.raises(NotCalibratedError, match="calibrate it first"):
        evaluate(raw_bundle, x, ood)


@pytest.mark.parametrize("n_sets", [1, 3])
def test_plots_with_one_or_three_sets_and_infinite_scores(tmp_path, n_sets) -> None:  # type: ignore[no-untyped-def]
    """Odd layouts (one panel; an empty fourth panel) and a set scored +inf throughout (every
    row non-finite) still give readable PNGs."""
    pytest.importorskip("matplotlib")
    from oodguard.calibration import OODSetEvaluation
    from oodguard.calibration.evaluation_plots import PLOT_FILES, plot_evaluation

    rng = np.random.default_rng(0)
    s_in = rng.normal(size=200)
    sets = tuple(
        OODSetEvaluation(name=f"set{i}", n=50, auroc=0.9, aupr_in=0.9, aupr_out=0.9, fpr95=0.3,
                         tpr_at_threshold=0.5,
                         scores=np.full(50, np.inf) if i == 0 else rng.normal(2, 1, 50))
        for i in range(n_sets)
    )
    report = EvaluationReport(
        alpha=0.05, threshold=1.6, n_calibration=100, fpr_at_threshold=0.05, ks_statistic=0.05,
        ks_pvalue=0.7, ks_calibration_statistic=0.06, ks_calibration_pvalue=0.8, scores_in=s_in,
        p_values_in=rng.uniform(size=200), ood_sets=sets,
    )
    paths = plot_evaluation(report, tmp_path)
    assert [p.name for p in paths] == list(PLOT_FILES)
    for p in paths:
        assert p.read_bytes().startswith(b"\x89PNG") and p.stat().st_size > 10_000
