"""Checks that run on every calibration: unstable features left out, and a sanity check that
trivially far inputs come out OOD.

A calibrated score that lets a constant ``1e3·max|x|`` input or heavy noise through is broken
(seen on recurrent autoencoders whose selection kept one inverted trajectory feature: such
inputs got p ≈ 1). The check does not change the scorer — the conformal guarantee is about
in-distribution inputs and holds anyway — it makes the failure loud: ``logging.warning``, a
``warnings`` entry in :class:`~oodguard.calibration.CalibrationReport` and in
``calibration.json``'s ``info``, with the evidence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from oodguard.scoring import Scorer

__all__ = ["far_inputs", "sanity_check", "unstable_features"]

log = logging.getLogger(__name__)


def unstable_features(dynamics: Mapping[str, Any] | None) -> dict[str, str]:
    """Feature name ▶ reason, for features the exporter measured as numerically unstable
    (``dynamics["stability"][name]["stable"] is False``). Bundles without the record (older
    exports) give ``{}``: nothing is known, nothing is left out."""
    if not dynamics:
        return {}
    stability = dynamics.get("stability")
    if not isinstance(stability, Mapping):
        return {}
    out = {}
    for name, rec in stability.items():
        if isinstance(rec, Mapping) and rec.get("stable") is False:
            detail = {k: v for k, v in rec.items() if k != "stable"}
            out[str(name)] = (
                "numerically unstable along the trajectory (manifest dynamics.stability"
                + (f": {detail}" if detail else "") + ")"
            )
    return out


def far_inputs(x: np.ndarray, *, n_noise: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Trivially far inputs shaped like ``x [n, ...]`` (float32): constants at
    ``±1e3·max|x|`` and Gaussian noise with 10× the data's standard deviation."""
    x = np.asarray(x, dtype=np.float32)
    big = 1e3 * (float(np.abs(x).max()) or 1.0)
    std = float(x.std()) or 1.0
    rng = np.random.default_rng(seed)
    shape = (1, *x.shape[1:])
    return {
        "constant_1e3_max": np.full(shape, big, dtype=np.float32),
        "constant_minus_1e3_max": np.full(shape, -big, dtype=np.float32),
        "noise_10_std": rng.normal(float(x.mean()), 10.0 * std,
                                   (n_noise, *x.shape[1:])).astype(np.float32),
    }


def sanity_check(
    features_of: Callable[[np.ndarray], np.ndarray], scorer: Scorer, x: np.ndarray, *,
    seed: int = 0,
) -> tuple[dict[str, Any], list[str]]:
    """Score the :func:`far_inputs` of ``x`` and report which are not flagged at the scorer's
    alpha.

    Returns
    -------
    result : dict — per kind of far input: how many, how many flagged, the largest p-value
    warnings : list of str — one per kind not entirely flagged, with the evidence
    """
    result: dict[str, Any] = {}
    warnings = []
    for kind, xs in far_inputs(x, seed=seed).items():
        p = scorer.p_value(scorer.score(features_of(xs)))
        flagged = int((p <= scorer.alpha).sum())
        result[kind] = {"n": len(xs), "flagged": flagged, "max_p": float(p.max())}
        if flagged < len(xs):
            used = [scorer.feature_names[i] for i in scorer.used]
            warnings.append(
                f"sanity check: only {flagged} of {len(xs)} {kind} inputs are flagged OOD at "
                f"alpha={scorer.alpha:g} (largest p-value {float(p.max()):.3g}); the score "
                f"uses {used} with directions {scorer.direction.tolist()}. Such inputs should "
                "be trivially OOD: check the selection (info.selection) or pass x_ood="
            )
    return result, warnings
