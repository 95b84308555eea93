"""Calibration checks: unstable features left out, far inputs that must come out OOD."""

from __future__ import annotations

import numpy as np
import pytest

from oodguard.calibration import fit_scorer
from oodguard.calibration.checks import far_inputs, sanity_check, unstable_features

NAMES = ("recon_error", "first_step")


def test_unstable_features_from_manifest_dynamics() -> None:
    dyn = {"stability": {"first_step": {"stable": True, "rel_spread": 1e-7},
                         "attractor_distance": {"stable": False, "rel_spread": 0.4},
                         "last_step": {"stable": False}}}
    out = unstable_features(dyn)
    assert sorted(out) == ["attractor_distance", "last_step"]
    assert "numerically unstable" in out["attractor_distance"]
    assert "'rel_spread': 0.4" in out["attractor_distance"]
    # older bundles: no record, or a record without stability ▶ nothing left out
    assert unstable_features(None) == {} and unstable_features({}) == {}
    assert unstable_features({"stability": "n/a"}) == {}


def test_far_inputs_are_far() -> None:
    x = np.random.default_rng(0).uniform(0, 2, size=(50, 3, 4)).astype(np.float32)
    far = far_inputs(x)
    assert far["constant_1e3_max"].shape == (1, 3, 4)
    assert far["constant_1e3_max"].min() == pytest.approx(1e3 * float(x.max()))
    assert far["constant_minus_1e3_max"].max() == pytest.approx(-1e3 * float(x.max()))
    assert far["noise_10_std"].shape == (8, 3, 4)
    assert far["noise_10_std"].std() > 5 * x.std()
    assert all(v.dtype == np.float32 for v in far.values())


def _id(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.column_stack([rng.lognormal(-3, 0.3, n), rng.gamma(3.0, 0.2, n)])


def test_sanity_check_passes_a_sound_scorer_and_warns_on_a_broken_one() -> None:
    rng = np.random.default_rng(0)
    scorer, _ = fit_scorer(_id(300, rng), _id(300, rng), NAMES)  # two-sided, every feature
    x = rng.uniform(0, 1, size=(100, 5)).astype(np.float32)

    def far_features(xs: np.ndarray) -> np.ndarray:  # far inputs ▶ huge features
        return np.column_stack([np.abs(xs).mean(1) * 10, np.abs(xs).mean(1) * 50])

    result, warnings = sanity_check(far_features, scorer, x)
    assert warnings == []
    assert result["noise_10_std"] == {"n": 8, "flagged": 8, "max_p": pytest.approx(1 / 301)}

    def typical(xs: np.ndarray) -> np.ndarray:  # a model that maps everything to typical
        return _id(len(xs), np.random.default_rng(1))

    result, warnings = sanity_check(typical, scorer, x)
    assert len(warnings) == 3
    assert warnings[0].startswith("sanity check: only 0 of 1 constant_1e3_max inputs are "
                                  "flagged OOD at alpha=0.05 (largest p-value")
    assert "uses ['recon_error', 'first_step']" in warnings[0]
    assert result["constant_1e3_max"]["flagged"] == 0
