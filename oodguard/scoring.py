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
arithmetic lives in :mod:`oodguard._tails`. The
Gaussian p-values need not be exact: the final p-value is conformal whatever the statistic.
Higher score = more OOD. The p-value is conformal,
``p = (1 + #{calibration scores ≥ s}) / (n + 1)``, so ``P(p ≤ alpha) ≤ alpha`` for an
in-distribution input in finite samples.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from oodguard._tails import (
    _LOG2,
    _combine_p,
    _log_sf_scalar,
    _tail_log_p,
    gaussian_log_sf,
)
from oodguard.errors import BundleError

__all__ = [
    "COMBINE_METHODS",
    "Scorer",
    "conformal_p_values",
    "gaussian_log_sf",
    "score_threshold",
    "wilson_hilferty",
    "yeo_johnson",
]

# Version 2 adds ``lower_weight`` (unequal tails of the two-sided tests); a document without it
# is written as version 1, so bundles that do not use it stay readable by older runtimes.
CALIBRATION_SCHEMA_VERSION = 2
COMBINE_METHODS = ("max", "mahalanobis", "max_mahalanobis", "fisher", "cauchy")
_P_COMBINATIONS = ("fisher", "cauchy")
_MAHALANOBIS_COMBINATIONS = ("mahalanobis", "max_mahalanobis")
_EPS = float(np.spacing(1.0))
_INF = float("inf")
_NAN = float("nan")
# Batches of up to this many rows score in plain Python (where the combination allows).
SCALAR_ROWS = 4


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
    Yeo–Johnson transform), in a few in-place numpy calls: the guard's hot path. Where
    ``e`` is 0 the limit ``sign(y)·log1p(|y|)`` is taken (only when ``log_branch``)."""
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


def conformal_p_values(calibration_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``p = (1 + #{c ≥ s}) / (n + 1)`` for each score, against sorted calibration scores."""
    return _p_table(len(calibration_scores))[
        np.searchsorted(calibration_scores, scores, side="left")
    ]


def _p_table(n: int) -> np.ndarray:
    """The ``n + 1`` possible p-values, indexed by ``#{c < s}``: ``(1 + n − k) / (n + 1)``."""
    return (1.0 + (n - np.arange(n + 1, dtype=np.float64))) / (n + 1.0)


def score_threshold(sorted_cal: np.ndarray, alpha: float) -> float:
    """The score ``t`` with ``score > t ⇔ p ≤ alpha`` (for scores distinct from calibration)."""
    n = len(sorted_cal)
    m = int(np.floor(alpha * (n + 1) + 1e-9)) - 1  # largest allowed #{cal ≥ s}
    if m >= n:
        return -np.inf
    return float(sorted_cal[n - m - 1])


class _Plan:
    """The scorer's transform with every constant precomputed: the guard's batch-1 overhead is
    a count of numpy calls, so the hot path does each step in one or two of them."""

    def __init__(self, s: Scorer) -> None:
        self.used = s.used
        logged = ~np.isnan(s.log_offset)
        self.log_idx = np.flatnonzero(logged)
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
        self.signed_mul = self.post_mul * s.direction  # d·z = t·(d·post_mul) + d·post_add,
        self.signed_add = self.post_add * s.direction  # exactly: d is ±1
        self.p_table = _p_table(len(s.calibration_scores))  # conformal_p_values, precomputed
        self.cal_list = s.calibration_scores.tolist()  # the same two, for bisect on floats
        self.p_list = self.p_table.tolist()
        # The same transform as plain Python floats, for batches of a few rows, where numpy's
        # per-call cost is most of the work (tested equal to the numpy path).
        self.scalar = s.combine in ("max", "fisher") and not self.log_branch
        self.fisher = s.combine == "fisher"
        self.rows = [
            (
                int(s.used[k]),
                None if np.isnan(s.log_offset[k]) else float(s.log_offset[k]),
                float(self.pre_mul[k]),
                float(self.pre_add[k]),
                float(self.lam_pos[k]),
                float(self.lam_neg[k]),
                float(self.post_mul[k]),
                float(self.post_add[k]),
                float(s.direction[k]),
                # weighted two-sided test: (log ω, log(1 − ω)); None: |z| with weight ½ each
                ((float(self.log_lower_weight[k]), float(self.log_upper_weight[k]))
                 if self.weighted and self.two_sided[k] else None),
            )
            for k in range(len(s.used))
        ]

    def score_rows(self, features: np.ndarray) -> list[float]:
        """``combine="max"`` or ``"fisher"`` scores of a few rows in plain Python (non-finite
        ▶ +inf)."""
        return self.score_lists(features.tolist())

    def score_lists(self, rows: list[list[float]]) -> list[float]:
        """:meth:`score_rows` of rows already turned into lists of floats."""
        out = []
        fisher = self.fisher
        for row in rows:
            best = -_INF
            total = 0.0
            for j, off, pm, pa, lp, ln, qm, qa, d, tails in self.rows:
                v = row[j]
                if off is not None:
                    v += off
                    v = math.log(v) if v > 0.0 else (-_INF if v == 0.0 else _NAN)
                y = v * pm + pa
                if y - y != 0.0:  # NaN or ±inf
                    best = _INF  # NaN or ±inf anywhere makes the row OOD, as in the numpy path
                    break
                try:
                    if y >= 0.0:
                        t = ((y + 1.0) ** lp - 1.0) / lp
                    else:
                        t = -((1.0 - y) ** ln - 1.0) / ln
                except OverflowError:
                    best = _INF
                    break
                z = t * qm + qa
                if tails is not None:  # fisher only (from_dict checks it)
                    if z != z or z in (_INF, -_INF):
                        best = _INF
                        break
                    total -= 2.0 * min(_log_sf_scalar(z) - tails[1],
                                       _log_sf_scalar(-z) - tails[0], 0.0)
                    continue
                z = abs(z) if d == 0.0 else d * z
                if fisher:
                    if z - z != 0.0:  # NaN or ±inf
                        best = _INF
                        break
                    lp_ = _log_sf_scalar(z)
                    if d == 0.0:
                        lp_ = min(lp_ + _LOG2, 0.0)
                    total -= 2.0 * lp_
                elif z > best:
                    best = z
            if fisher and best != _INF:
                best = total
            out.append(best if best == best and best != -_INF else _INF)
        return out

    def p_values_of(self, scores: list[float]) -> list[float]:
        """Conformal p-values of a few scores in plain Python: the bits of
        :meth:`Scorer.p_value` (``bisect_left`` is ``searchsorted(side="left")``; NaN sorts
        last there, so it gets the index ``n``)."""
        cal, table, n = self.cal_list, self.p_list, len(self.cal_list)
        return [table[bisect_left(cal, s) if s == s else n] for s in scores]

    def _pre_power(self, features: np.ndarray) -> np.ndarray:
        """``y [N, U]``: the used features, logged where fitted so, and robustly scaled."""
        y = np.take(features, self.used, axis=1).astype(np.float64)
        if len(self.log_idx) == y.shape[1]:
            y += self.log_off
            np.log(y, out=y)
        elif len(self.log_idx):
            y[:, self.log_idx] = np.log(y[:, self.log_idx] + self.log_off)
        y *= self.pre_mul
        y += self.pre_add
        return y

    def standardize(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(z [N, U], bad [N])``: bad rows have a non-finite (pre-power) value somewhere."""
        y = self._pre_power(features)
        bad = ~np.isfinite(y).all(axis=1)
        t = _yeo_johnson(y, self.lam_pos, self.lam_neg, self.log_branch)
        t *= self.post_mul
        t += self.post_add
        return t, bad

    def max_score(self, features: np.ndarray) -> np.ndarray:
        """``combine="max"`` scores with the fewest numpy calls (the guard's hot path): the
        direction folded into the last scaling, and the non-finite checks done on two sums —
        a sum is finite only if every term is — with the exact row masks only when one is not.
        Equal to the general path (tested)."""
        y = self._pre_power(features)
        t = _yeo_johnson(y, self.lam_pos, self.lam_neg, self.log_branch)
        if self.all_one_sided:
            t *= self.signed_mul
            t += self.signed_add
        else:
            t *= self.post_mul
            t += self.post_add
            t = np.where(self.two_sided, np.abs(t), self.direction * t)
        s = t.ravel() if t.shape[1] == 1 else t.max(axis=1)
        if not (math.isfinite(float(y.sum())) and math.isfinite(float(s.sum()))):
            # an infinite feature can map to a finite z: flag rows by y as well as by s
            s[~np.isfinite(y).all(axis=1) | ~np.isfinite(s)] = np.inf
        return s


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
        from oodguard._calibration_doc import scorer_fields

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
    def _plan(self) -> _Plan:
        return _Plan(self)

    @property
    def rows_scorer(self) -> _Plan | None:
        """The plain-Python scorer of batches of up to ``SCALAR_ROWS`` rows given as lists of
        floats (``score_lists``, ``p_values_of``: the bits :meth:`score` and :meth:`p_value`
        give such batches), or None where the combination has none."""
        plan = self._plan
        return plan if plan.scalar else None

    def standardize(self, features: np.ndarray) -> np.ndarray:
        """``z [N, U]``: the used features transformed to about N(0, 1) on in-distribution data."""
        with np.errstate(all="ignore"):  # non-finite features become a +inf score downstream
            return self._plan.standardize(features)[0]

    def score(self, features: np.ndarray) -> np.ndarray:
        """OOD score per row of ``features [N, F]``; higher = more OOD. Non-finite ▶ +inf."""
        with np.errstate(all="ignore"):
            return self._score(features)

    def _score(self, features: np.ndarray) -> np.ndarray:
        plan = self._plan
        if plan.scalar and len(features) <= SCALAR_ROWS:
            return np.asarray(plan.score_rows(np.asarray(features)), dtype=np.float64)
        if self.combine == "max":
            return plan.max_score(features)
        z, bad = plan.standardize(features)
        parts = []
        if self.combine in _P_COMBINATIONS:
            parts.append(_combine_p(*_tail_log_p(z, plan, self.combine), self.combine))
        elif self.combine == "max_mahalanobis":  # plain "max" returned above
            # direction 0 is a two-sided test: |z|
            signed = (z * self.direction if plan.all_one_sided
                      else np.where(plan.two_sided, np.abs(z), self.direction * z))
            parts.append(signed.max(axis=1))
        if self.combine in _MAHALANOBIS_COMBINATIONS:
            loc, prec = self.maha_location, self.maha_precision
            if loc is None or prec is None:  # excluded by from_dict; narrows the types
                raise BundleError("scorer has no Mahalanobis parameters")
            c = z - loc
            d2 = np.einsum("ij,jk,ik->i", c, prec, c)
            parts.append(wilson_hilferty(d2, len(self.used)))
        s = parts[0] if len(parts) == 1 else np.maximum(parts[0], parts[1])
        s[bad | ~np.isfinite(s)] = np.inf  # an infinite feature can map to a finite z
        return s

    def p_value(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values of scores (small = unusual for in-distribution data); the same
        numbers as :func:`conformal_p_values`, read from a table of the ``n + 1`` possible
        values."""
        return self._plan.p_table[np.searchsorted(self.calibration_scores, scores, side="left")]

    def to_dict(self) -> dict[str, Any]:
        """The ``calibration.json`` document."""
        weighted = bool((self.tail_weights() != 0.5).any())
        d: dict[str, Any] = {
            "schema_version": CALIBRATION_SCHEMA_VERSION if weighted else 1,
            "feature_names": list(self.feature_names),
            "used_features": [self.feature_names[i] for i in self.used],
            "log_offset": [None if np.isnan(v) else float(v) for v in self.log_offset],
            "pre_center": self.pre_center.tolist(),
            "pre_scale": self.pre_scale.tolist(),
            "lambdas": self.lambdas.tolist(),
            "post_center": self.post_center.tolist(),
            "post_scale": self.post_scale.tolist(),
            "direction": self.direction.tolist(),
            "combine": self.combine,
            "mahalanobis": None,
            "calibration_scores": self.calibration_scores.tolist(),
            "alpha": self.alpha,
            "threshold": self.threshold,
            "info": dict(self.info),
        }
        if weighted:
            d["lower_weight"] = self.tail_weights().tolist()
        if self.maha_location is not None and self.maha_precision is not None:
            d["mahalanobis"] = {
                "location": self.maha_location.tolist(),
                "precision": self.maha_precision.tolist(),
            }
        return d
