"""The runtime scorer: features ▶ OOD score ▶ conformal p-value, in numpy alone.

The calibrator (:mod:`oodguard.calibration`, scikit-learn) fits the parameters; this module
rebuilds the scorer from the plain numbers in ``calibration.json`` — no pickle — so the runtime
needs neither scikit-learn nor trust in executable files.

Per used feature ``j`` the transform is

1. ``log(f_j + offset_j)`` for non-negative features (norms spread over decades),
2. robust standardisation ``(y − pre_center_j) / pre_scale_j``,
3. the Yeo–Johnson power transform with ``lambda_j`` (as scikit-learn's ``PowerTransformer``),
4. robust standardisation again, giving ``z_j``: about N(0, 1) on in-distribution data.

Each used feature has a direction ``d_j``: ``+1`` (large is unusual), ``−1`` (small is
unusual) or ``0`` (both tails, ``|z_j|``). A feature's direction under a shift is not known in
advance (see DESIGN.md), so the calibrator learns it, or leaves the test two-sided.
``combine="max"`` takes ``max_j d_j·z_j`` (Tippett's minimum p-value over per-feature Gaussian
tests), ``"mahalanobis"`` the robust Mahalanobis distance of ``z`` turned into a Gaussian
quantile (Wilson–Hilferty), ``"max_mahalanobis"`` the larger of the two. ``"fisher"`` and
``"cauchy"`` combine the per-feature Gaussian tail p-values ``p_j = Φ̄(d_j·z_j)`` (two-sided:
``min(1, Φ̄(z_j)/(1 − ω_j), Φ(z_j)/ω_j)``, a Bonferroni split of the test between the tails
with ``ω_j`` — ``lower_weight`` — for the lower one; ``ω_j = ½`` is ``2·Φ̄(|z_j|)``): Fisher's
``−2·Σ_j log p_j``, and the Cauchy combination of Liu & Xie (2020) ``mean_j tan((½ − p_j)·π)``
(robust to dependence between the tests; ``1 − p_j ≥ 1e-15``), reported as ``asinh`` of that
mean (monotone, so the same ranks and p-values, and finite where a term overflows); the tail
arithmetic lives in :mod:`oodguard.scoring.tails`. The Gaussian p-values need not be exact:
the final p-value is conformal whatever the statistic (:mod:`oodguard.decisions`).
Higher score = more OOD.

**One path.** Every batch, of 1 row or 10⁶, goes through the same numpy calls on whole
``[N, U]`` arrays: elementwise operations, row maxima, and row sums taken column by column
(:func:`~oodguard.scoring.tails.row_sum`). So a row's score does not depend on the batch it
arrives in, its chunking or the thread that scores it, bit for bit (property-tested over random
calibrations and batch sizes 1 to 600). There is no second implementation for small batches:
numpy's SIMD ``log``/``exp``/``pow`` do not round like ``math.log``, so a plain-Python twin
would give a row other bits at batch 1 than at batch 256.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from oodguard.bundle.calibration_doc import (
    P_COMBINATIONS,
    calibration_document,
    scorer_fields,
)
from oodguard.decisions import conformal_p_values, p_value_table
from oodguard.errors import BundleError, InvalidInputError
from oodguard.groups import GroupCalibration
from oodguard.scoring.tails import combine_p, row_sum, tail_log_p

__all__ = ["Scorer", "wilson_hilferty", "yeo_johnson"]

_EPS = float(np.spacing(1.0))


def yeo_johnson(x: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """Yeo–Johnson transform of each column of ``x [N, U]`` with its ``lambdas [U]``.

    Matches ``sklearn.preprocessing.PowerTransformer(standardize=False).transform``.
    """
    lam = np.asarray(lambdas, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return _yeo_johnson(np.asarray(x, dtype=np.float64), lam, 2.0 - lam, _log_branch(lam))


def _log_branch(lam: np.ndarray) -> bool:
    """Whether some lambda is 0 or 2, where a side of the transform is a logarithm."""
    return bool(((np.abs(lam) < _EPS) | (np.abs(2.0 - lam) < _EPS)).any())


def _yeo_johnson(
    y: np.ndarray, lam_pos: np.ndarray, lam_neg: np.ndarray, log_branch: bool
) -> np.ndarray:
    """``sign(y)·((|y|+1)^e − 1)/e`` with ``e = λ`` for ``y ≥ 0`` and ``2 − λ`` below (the
    Yeo–Johnson transform), in a few in-place numpy calls. Where ``e`` is 0 the limit
    ``sign(y)·log1p(|y|)`` is taken (only when ``log_branch``)."""
    e = np.where(y >= 0, lam_pos, lam_neg)
    if log_branch:
        at_zero = np.abs(e) < _EPS
        e[at_zero] = 1.0
    t = np.abs(y)
    t += 1.0
    np.power(t, e, out=t)
    t -= 1.0
    t /= e
    if log_branch:
        t[at_zero] = np.log1p(np.abs(y[at_zero]))
    np.copysign(t, y, out=t)
    return t


def wilson_hilferty(d2: np.ndarray, dof: int) -> np.ndarray:
    """Map a chi-square(dof) statistic to an approximately standard normal quantile."""
    k = float(dof)
    c = 2.0 / (9.0 * k)
    return (np.cbrt(np.maximum(d2, 0.0) / k) - (1.0 - c)) / np.sqrt(c)


def _quadratic_form(c: np.ndarray, prec: np.ndarray) -> np.ndarray:
    """``[N]``: ``c_i · P · c_i`` per row, in elementwise steps (no BLAS, whose kernels and
    summation order change with the batch's size)."""
    u = c.shape[1]
    q = c[:, 0:1] * prec[0]
    for j in range(1, u):
        q += c[:, j : j + 1] * prec[j]
    q *= c
    return row_sum(q)


class _Transform:
    """The scorer's constants, precomputed once (the guard's batch-1 cost is a count of numpy
    calls): see :meth:`Scorer.score` for the one path that uses them."""

    def __init__(self, s: Scorer) -> None:
        self.used = s.used
        logged = ~np.isnan(s.log_offset)
        self.log_idx = np.flatnonzero(logged)
        self.log_all = len(self.log_idx) == len(s.used)
        self.log_off = s.log_offset[logged]
        self.pre_mul = 1.0 / s.pre_scale
        self.pre_add = -s.pre_center / s.pre_scale
        self.post_mul = 1.0 / s.post_scale
        self.post_add = -s.post_center / s.post_scale
        self.lam_pos = s.lambdas
        self.lam_neg = 2.0 - s.lambdas
        self.log_branch = _log_branch(s.lambdas)
        self.all_one_sided = bool((s.direction != 0).all())
        self.direction = s.direction
        self.two_sided = s.direction == 0
        # Unequal tails of the two-sided tests (p-combinations only; from_dict checks it).
        lower_w = s.tail_weights()
        self.weighted = bool((lower_w != 0.5).any())
        self.log_lower_weight = np.log(lower_w)
        self.log_upper_weight = np.where(self.two_sided, np.log1p(-lower_w), 0.0)
        self.p_table = p_value_table(len(s.calibration_scores))

    def pre_power(self, features: np.ndarray) -> np.ndarray:
        """``y [N, U]``: the used features, logged where fitted so, and robustly scaled."""
        y = np.take(features, self.used, axis=1).astype(np.float64)
        if self.log_all:
            y += self.log_off
            np.log(y, out=y)
        elif len(self.log_idx):
            y[:, self.log_idx] = np.log(y[:, self.log_idx] + self.log_off)
        y *= self.pre_mul
        y += self.pre_add
        return y

    def standardize(self, y: np.ndarray) -> np.ndarray:
        """``z [N, U]`` from :meth:`pre_power`'s ``y``."""
        t = _yeo_johnson(y, self.lam_pos, self.lam_neg, self.log_branch)
        t *= self.post_mul
        t += self.post_add
        return t

    def signed(self, z: np.ndarray) -> np.ndarray:
        """``d·z`` per column, ``|z|`` where the test is two-sided (direction 0)."""
        if self.all_one_sided:
            return z * self.direction  # d = ±1: an exact sign flip
        return np.where(self.two_sided, np.abs(z), self.direction * z)


@dataclass(frozen=True, eq=False)
class Scorer:
    """A fitted scorer, rebuilt from ``calibration.json``.

    Attributes end in their shapes: ``U`` used features, ``n`` calibration scores.
    """

    feature_names: tuple[str, ...]
    used: np.ndarray  # int [U], indices into feature_names
    log_offset: np.ndarray  # [U]; NaN where no logarithm is taken
    pre_center: np.ndarray  # [U]
    pre_scale: np.ndarray  # [U]
    lambdas: np.ndarray  # [U]
    post_center: np.ndarray  # [U]
    post_scale: np.ndarray  # [U]
    direction: np.ndarray  # [U]: +1, -1, or 0 (two-sided)
    combine: str
    maha_location: np.ndarray | None  # [U]
    maha_precision: np.ndarray | None  # [U, U]
    calibration_scores: np.ndarray  # [n], sorted ascending
    alpha: float
    threshold: float
    info: Mapping[str, Any]
    # [U]: the lower tail's share ω of each two-sided test (direction 0); ½ elsewhere. None:
    # ½ everywhere (equal tails, ``2·Φ̄(|z|)``).
    lower_weight: np.ndarray | None = None
    # per-group (Mondrian) calibration scores (oodguard.groups); None: one calibration
    groups: GroupCalibration | None = None

    def tail_weights(self) -> np.ndarray:
        """``lower_weight`` as ``[U]`` (½ where unset)."""
        if self.lower_weight is None:
            return np.full(len(self.used), 0.5)
        return np.asarray(self.lower_weight, dtype=np.float64)

    # -- building -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], feature_names: Sequence[str]) -> Scorer:
        """Rebuild from the ``calibration.json`` document; checks it against the bundle and
        checks every number's type and domain (the scoring methods trust them).

        Raises
        ------
        BundleError
            A field is missing, of the wrong type or outside its domain (the message names
            it), the schema is newer, or the calibration belongs to other features.
        """
        try:
            return cls(**scorer_fields(d, feature_names))
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            what = f"field {err} is missing" if isinstance(err, KeyError) else str(err)
            raise BundleError(
                f"calibration.json is malformed ({type(err).__name__}: {what}); "
                "re-run oodguard.calibration.calibrate"
            ) from err

    # -- scoring --------------------------------------------------------------------------
    @cached_property
    def _transform(self) -> _Transform:
        return _Transform(self)

    def standardize(self, features: np.ndarray) -> np.ndarray:
        """``z [N, U]``: the used features transformed to about N(0, 1) on in-distribution data."""
        tr = self._transform
        with np.errstate(all="ignore"):  # non-finite features become a +inf score downstream
            return tr.standardize(tr.pre_power(features))

    def score(self, features: np.ndarray) -> np.ndarray:
        """OOD score per row of ``features [N, F]``, float64 ``[N]``; higher = more OOD.
        A row with a non-finite feature scores ``+inf``.

        One path for every batch size (see the module docstring): a row's bits do not depend
        on the rows beside it."""
        tr = self._transform
        combine = self.combine
        with np.errstate(all="ignore"):
            y = tr.pre_power(features)
            z = tr.standardize(y)
            if combine in P_COMBINATIONS:
                s = combine_p(*tail_log_p(z, tr, combine), combine)
            elif combine == "mahalanobis":
                s = self._mahalanobis(z)
            else:  # "max", "max_mahalanobis"
                a = tr.signed(z)
                s = a[:, 0].copy() if a.shape[1] == 1 else a.max(axis=1)
                if combine == "max_mahalanobis":
                    s = np.maximum(s, self._mahalanobis(z))
            # A sum is finite only if every term is: the exact row masks are needed only when
            # one is not. An infinite feature can map to a finite z, so rows are flagged by y
            # as well as by s.
            if not (math.isfinite(float(y.sum())) and math.isfinite(float(s.sum()))):
                s[~np.isfinite(y).all(axis=1) | ~np.isfinite(s)] = np.inf
        return s

    def _mahalanobis(self, z: np.ndarray) -> np.ndarray:
        """The robust Mahalanobis distance of ``z [N, U]`` as a Gaussian quantile."""
        loc, prec = self.maha_location, self.maha_precision
        if loc is None or prec is None:  # excluded by from_dict; narrows the types
            raise BundleError("scorer has no Mahalanobis parameters")
        return wilson_hilferty(_quadratic_form(z - loc, prec), len(self.used))

    def p_value(self, scores: np.ndarray, groups: Any = None) -> np.ndarray:
        """Conformal p-values of scores, float64 (small = unusual for in-distribution data):
        :func:`oodguard.decisions.conformal_p_values` against this calibration, or, with
        ``groups`` (one label per row), against each row's group's calibration scores
        (:class:`oodguard.groups.GroupCalibration`; InvalidInputError for labels it lacks)."""
        if groups is None:
            return conformal_p_values(self.calibration_scores, scores, self._transform.p_table)
        if self.groups is None:
            raise InvalidInputError(
                "groups were given, but this bundle was calibrated without groups; calibrate "
                "with calibrate(..., groups=labels) for per-group p-values", reason="group")
        return self.groups.p_values(scores, groups)

    def to_dict(self) -> dict[str, Any]:
        """The ``calibration.json`` document (:func:`oodguard.bundle.calibration_doc.
        calibration_document`)."""
        return calibration_document(self)
