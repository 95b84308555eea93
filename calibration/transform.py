"""Fitting the one-class scorer on in-distribution features (scikit-learn).

The fitted parameters are plain numbers; :class:`oodguard.scoring.Scorer` rebuilds the scorer
in numpy at run time. See :mod:`oodguard.scoring` for the transform and the combinations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.covariance import MinCovDet
from sklearn.preprocessing import PowerTransformer

from oodguard.errors import CalibrationError, parameter_error
from oodguard.features import NONNEGATIVE_FEATURES
from oodguard.scoring import COMBINE_METHODS

__all__ = ["FittedTransform", "fit_transform"]

log = logging.getLogger(__name__)
_MAD_TO_SIGMA = 1.4826


def _robust_center_scale(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    center = np.median(y, axis=0)
    scale = _MAD_TO_SIGMA * np.median(np.abs(y - center), axis=0)
    # A feature with most of its mass on one value (e.g. steps_to_converge) has MAD 0: fall
    # back to the standard deviation rather than divide by zero.
    std = y.std(axis=0)
    return center, np.where(scale > 0, scale, std)


@dataclass(frozen=True, eq=False)
class FittedTransform:
    """Parameters of the per-feature transform (and Mahalanobis block) fitted on features."""

    used: np.ndarray
    dropped: dict[str, str]
    log_offset: np.ndarray
    pre_center: np.ndarray
    pre_scale: np.ndarray
    lambdas: np.ndarray
    post_center: np.ndarray
    post_scale: np.ndarray
    maha_location: np.ndarray | None
    maha_precision: np.ndarray | None


def fit_transform(
    features: np.ndarray,
    feature_names: Sequence[str],
    *,
    combine: str = "max",
    use: Sequence[str] | None = None,
    seed: int = 0,
) -> FittedTransform:
    """Fit the transform on in-distribution features ``[n, F]``.

    Features that are constant on this data are dropped (and reported): they carry no
    information about in-distribution variation.
    """
    if combine not in COMBINE_METHODS:
        raise parameter_error("combine", f"one of {COMBINE_METHODS}", combine)
    f = np.asarray(features, dtype=np.float64)
    names = list(feature_names)
    wanted = names if use is None else list(use)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise parameter_error("use", f"feature names among {names}", list(use or []))
    dropped: dict[str, str] = {}
    used: list[int] = []
    for name in wanted:
        col = f[:, names.index(name)]
        if np.ptp(col) == 0:
            dropped[name] = "constant on the in-distribution fit data"
        else:
            used.append(names.index(name))
    if not used:
        raise CalibrationError(
            f"every feature is constant on the in-distribution data ({dropped}); the exported "
            "graph or the data look broken"
        )
    idx = np.asarray(used, dtype=np.intp)
    y = f[:, idx].copy()
    offsets = np.full(len(idx), np.nan)
    for k, j in enumerate(idx):
        col = y[:, k]
        if names[j] in NONNEGATIVE_FEATURES and col.min() >= 0:
            positive = col[col > 0]
            offsets[k] = 1e-3 * float(np.median(positive)) if len(positive) else 1e-12
            offsets[k] = max(offsets[k], 1e-30)
            y[:, k] = np.log(col + offsets[k])
    pre_c, pre_s = _robust_center_scale(y)
    y = (y - pre_c) / pre_s
    pt = PowerTransformer(method="yeo-johnson", standardize=False).fit(y)
    y = pt.transform(y)
    post_c, post_s = _robust_center_scale(y)
    z = (y - post_c) / post_s
    loc = prec = None
    if combine in ("mahalanobis", "max_mahalanobis"):
        if len(z) <= len(idx) + 1:
            raise CalibrationError(
                f"combine={combine!r} needs more fit samples than features ({len(idx)}); "
                f"got {len(z)}"
            )
        mcd = MinCovDet(random_state=seed).fit(z)
        loc, prec = mcd.location_, mcd.get_precision()
    if dropped:
        log.info("features dropped by calibration: %s", dropped)
    return FittedTransform(
        used=idx,
        dropped=dropped,
        log_offset=offsets,
        pre_center=pre_c,
        pre_scale=pre_s,
        lambdas=np.asarray(pt.lambdas_, dtype=np.float64),
        post_center=post_c,
        post_scale=post_s,
        maha_location=loc,
        maha_precision=prec,
    )
