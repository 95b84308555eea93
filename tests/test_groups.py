"""Per-group (Mondrian) calibration: calibrate(..., groups=y), Guard.check(x, groups=...),
Guard.wrap(predict, group_by="prediction"), the refusals, and the false-positive rate of every
class within its 99 % range."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DIM

from oodguard import (
    BundleError,
    CalibrationError,
    Guard,
    InvalidInputError,
    InvalidParameterError,
)
from oodguard.decisions import conformal_p_values, min_calibration_size
from oodguard.groups import GroupCalibration

ALPHA = 0.05
_BASIS = np.random.default_rng(1234).normal(size=(3, DIM))  # conftest.make_data's manifold


def labelled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The conftest manifold with four classes: the quadrant of the first two latent axes."""
    z = np.random.default_rng(seed).normal(size=(n, 3))
    y = (z[:, 0] > 0).astype(np.int64) + 2 * (z[:, 1] > 0)
    return (1.0 / (1.0 + np.exp(-(z @ _BASIS) * 0.7))).astype(np.float32), y


def fp_range(n_cal: int, m: int, alpha: float) -> tuple[int, int]:
    """99 % range of the false positives among ``m`` fresh in-distribution rows of a group with
    ``n_cal`` calibration scores: over calibration sets the group's false-positive rate is
    Beta(l, n_cal + 1 − l), l = ⌊alpha·(n_cal + 1)⌋, so the count is beta-binomial."""
    from scipy.stats import betabinom

    k = int(np.floor(alpha * (n_cal + 1) + 1e-9))
    dist = betabinom(m, k, n_cal + 1 - k)
    return int(dist.ppf(0.005)), int(dist.ppf(0.995))


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, raw_bundle):  # type: ignore[no-untyped-def]
    from oodguard.calibration import calibrate

    x, y = labelled(2400, seed=11)
    out = tmp_path_factory.mktemp("bundles") / "grouped"
    calibrate(raw_bundle, x, alpha=ALPHA, out=out, groups=y)
    return out


# -- the runtime pieces ---------------------------------------------------------------------
def test_group_p_values_come_from_each_groups_own_scores() -> None:
    rng = np.random.default_rng(0)
    a, b = np.sort(rng.normal(size=50)), np.sort(rng.normal(2.0, 1.0, size=80))
    gc = GroupCalibration([3, 7], [a, b])
    s = rng.normal(1.0, 1.5, size=40)
    g = rng.choice([3, 7], size=40)
    p = gc.p_values(s, g)
    np.testing.assert_array_equal(p[g == 3], conformal_p_values(a, s[g == 3]))
    np.testing.assert_array_equal(p[g == 7], conformal_p_values(b, s[g == 7]))
    assert [min_calibration_size(a) for a in (0.05, 0.1, 0.3)] == [19, 9, 3]


def test_group_p_values_refuse_unknown_labels_and_wrong_lengths() -> None:
    gc = GroupCalibration(["cat", "dog"], [np.arange(30.0), np.arange(30.0)])
    with pytest.raises(InvalidInputError, match="group 'cow' has no calibration") as err:
        gc.p_values(np.zeros(2), ["cat", "cow"])
    assert err.value.reason == "group"
    with pytest.raises(InvalidInputError, match="one label per row: 2 labels"):
        gc.p_values(np.zeros(2), ["cat"])


def test_an_alpha_a_small_group_cannot_reach_is_refused_naming_the_group() -> None:
    gc = GroupCalibration([0, 1], [np.arange(30.0), np.arange(12.0)])
    gc.check_alpha(0.1, owner="Guard")  # 9 needed: both have enough
    with pytest.raises(InvalidParameterError, match=r"at least 1/alpha − 1 = 19 calibration "
                       r"rows, and group 1 has 12"):
        gc.check_alpha(0.05, owner="Guard")


# -- calibrate(groups=...) and the guard ------------------------------------------------------
def test_calibrate_writes_each_groups_scores_and_the_guard_reads_them(grouped) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads((grouped / "calibration.json").read_text())
    assert doc["schema_version"] == 3 and doc["groups"]["labels"] == [0, 1, 2, 3]
    sizes = [len(s) for s in doc["groups"]["calibration_scores"]]
    assert sum(sizes) == len(doc["calibration_scores"])
    g = Guard.load(grouped, registry=None, providers="cpu", drift=0.05)
    assert g.scorer.groups is not None and list(g.scorer.groups.sizes.values()) == sizes
    x, y = labelled(200, seed=12)
    pooled, per = g.check(x), g.check(x, groups=y)
    np.testing.assert_array_equal(pooled.score, per.score)  # scores never depend on groups
    for k in range(4):
        cal = np.asarray(doc["groups"]["calibration_scores"][k])
        np.testing.assert_array_equal(per.p_value[y == k],
                                      conformal_p_values(cal, per.score[y == k]))
    assert g.drift is not None and g.drift.state().rows == 400  # pooled p-values, both calls


def test_check_refuses_groups_it_cannot_use(grouped, bundle, registry) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import generate_latest

    x, _ = labelled(4, seed=13)
    g = Guard.load(grouped, registry=registry, providers="cpu")
    with pytest.raises(InvalidInputError, match="group 9 has no calibration"):
        g.check(x, groups=[0, 1, 9, 2])
    assert 'oodguard_inputs_refused_total{guard="default",reason="group"} 4.0' in (
        generate_latest(registry).decode())
    plain = Guard.load(bundle, registry=None, providers="cpu")
    with pytest.raises(InvalidInputError, match="calibrated without groups"):
        plain.check(x, groups=[0, 1, 2, 3])
    with pytest.raises(InvalidParameterError, match="'group_by' parameter of Guard.wrap needs"):
        plain.wrap(lambda v: v, group_by="prediction")
    with pytest.raises(InvalidParameterError, match="'alpha' parameter of Guard must be "
                       "reachable by every group's calibration"):
        Guard.load(grouped, registry=None, providers="cpu", alpha=0.002)


def test_calibrate_refuses_a_group_too_small_for_alpha(raw_bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from oodguard.calibration import calibrate

    x, y = labelled(1200, seed=14)
    y[:20] = 7  # about 12 of them land in the calibration part: fewer than 19
    with pytest.raises(CalibrationError, match=r"at least 1/alpha − 1 = 19 calibration rows in "
                       r"every group, and group 7 has \d+"):
        calibrate(raw_bundle, x, alpha=ALPHA, out=tmp_path / "b", groups=y)
    assert not (tmp_path / "b").exists()
    with pytest.raises(CalibrationError, match="one label per validation row: 1200 labels"):
        calibrate(raw_bundle, x, alpha=ALPHA, out=tmp_path / "b", groups=y[:5])
    with pytest.raises(CalibrationError, match="integer or string labels"):
        calibrate(raw_bundle, x, alpha=ALPHA, out=tmp_path / "b", groups=y.astype(float))


def test_a_malformed_groups_block_is_a_bundle_error(grouped, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from oodguard.bundle import read_bundle

    copy = tmp_path / "b"
    shutil.copytree(grouped, copy)
    doc = json.loads((copy / "calibration.json").read_text())
    doc["groups"]["calibration_scores"][1] = doc["groups"]["calibration_scores"][1][::-1]
    from oodguard.scoring import Scorer

    with pytest.raises(BundleError, match="group 1 must be sorted"):
        Scorer.from_dict(doc, read_bundle(grouped).manifest.feature_names)
    doc["schema_version"] = 2
    with pytest.raises(BundleError, match="groups needs schema_version 3"):
        Scorer.from_dict(doc, read_bundle(grouped).manifest.feature_names)


def test_every_classs_false_positive_rate_lies_in_its_99_percent_range(grouped) -> None:  # type: ignore[no-untyped-def]
    """20 000 fresh in-distribution rows; each class's false positives against the
    beta-binomial 99 % range of its own calibration size."""
    g = Guard.load(grouped, registry=None, providers="cpu")
    assert g.scorer.groups is not None
    x, y = labelled(20000, seed=15)
    flagged = g.check(x, groups=y).is_ood
    for label, n_cal in g.scorer.groups.sizes.items():
        rows = y == label
        lo, hi = fp_range(n_cal, int(rows.sum()), ALPHA)
        assert lo <= int(flagged[rows].sum()) <= hi, (label, int(flagged[rows].sum()), lo, hi)


def test_wrap_by_prediction_checks_each_row_against_its_predicted_class(grouped) -> None:  # type: ignore[no-untyped-def]
    g = Guard.load(grouped, registry=None, providers="cpu")
    x, y = labelled(64, seed=16)
    onehot = np.eye(4)[y]
    out = g.wrap(lambda v: onehot, group_by="prediction")(x)
    np.testing.assert_array_equal(out.prediction, onehot)
    assert out.result is not None
    np.testing.assert_array_equal(out.result.p_value, g.check(x, groups=y).p_value)
    noise = np.random.default_rng(0).uniform(0, 1, size=(8, DIM)).astype(np.float32)
    fallback = g.wrap(lambda v: np.zeros(len(v)), on_ood="fallback",
                      fallback=lambda v: np.full(len(v), -1.0), group_by="prediction")
    got = fallback(noise)
    assert got.result is not None and got.result.n_ood > 0
    np.testing.assert_array_equal(got.prediction == -1.0, got.result.is_ood)


def test_per_class_false_positive_rates_on_the_digits_demo(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The demo's digits 0–4, its split, with their labels: each class's false positives on
    the held-out rows within the 99 % range of its calibration size."""
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits

    from oodguard.calibration import calibrate
    from oodguard.calibration.data import load_digits_data
    from oodguard.demo.train import train_autoencoder
    from oodguard.export import export_bundle

    torch.set_num_threads(1)
    data = load_digits_data(seed=0)
    digits = load_digits()
    ind = np.random.default_rng(0).permutation(np.flatnonzero(digits.target <= 4))
    n_tr, n_va = int(len(ind) * 0.4), int(len(ind) * 0.35)
    y_val, y_test = digits.target[ind[n_tr:n_tr + n_va]], digits.target[ind[n_tr + n_va:]]
    assert len(y_val) == len(data.val) and len(y_test) == len(data.test)
    model = train_autoencoder(data.train, epochs=40, progress=False)
    export_bundle(tmp_path / "raw", model=model, x_train=data.train, steps=8)
    calibrate(tmp_path / "raw", data.val, alpha=0.1, out=tmp_path / "cal", groups=y_val)
    g = Guard.load(tmp_path / "cal", registry=None, providers="cpu")
    assert g.scorer.groups is not None
    flagged = g.check(data.test, groups=y_test).is_ood
    for label, n_cal in g.scorer.groups.sizes.items():
        rows = y_test == label
        lo, hi = fp_range(n_cal, int(rows.sum()), 0.1)
        assert lo <= int(flagged[rows].sum()) <= hi, (label, int(flagged[rows].sum()), lo, hi)
