"""Per-feature Gaussian tail p-values and their Fisher / Cauchy combinations: the arithmetic
:mod:`oodguard.scoring.scorer` builds its p-value combinations on (see its docstring for the
formulas).

Every function is elementwise over whole arrays, or sums a row's columns left to right with
:func:`row_sum`: a row's result never depends on the other rows of its batch (see
:mod:`oodguard.scoring`)."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

__all__ = ["LOG2", "TailPlan", "combine_p", "gaussian_log_sf", "gaussian_log_tails", "row_sum",
           "tail_log_p"]


class TailPlan(Protocol):
    """What :func:`tail_log_p` reads of the scorer's precomputed plan."""

    all_one_sided: bool
    weighted: bool
    direction: np.ndarray  # [U]: +1, -1 or 0 (two-sided)
    two_sided: np.ndarray  # [U] bool
    log_lower_weight: np.ndarray  # [U]: log ω
    log_upper_weight: np.ndarray  # [U]: log(1 − ω) where two-sided, else 0


# Chebyshev fit of erfc (Numerical Recipes, "erfcc"): fractional error < 1.2e-7 everywhere,
# and it gives log(erfc) directly, so tails far beyond float64's range stay finite.
_ERFC_COEF = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806,
              0.09678418, 0.37409196, 1.00002368, -1.26551223)


def _log_tails_of_abs(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(log Φ̄(|z|), log Φ(|z|))`` elementwise: the erfc fit once, and its complement."""
    x = np.abs(np.asarray(z, dtype=np.float64)) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * x)
    poly = np.zeros_like(t)
    for c in _ERFC_COEF:
        poly = poly * t + c
    log_erfc_abs = np.log(t) - x * x + poly  # log erfc(|z|/√2)
    far = log_erfc_abs - math.log(2.0)  # log Φ̄(|z|)
    near = np.log1p(-np.exp(np.minimum(far, 0.0)))  # log(1 − Φ̄(|z|)) = log Φ(|z|)
    return far, near


def gaussian_log_sf(z: np.ndarray) -> np.ndarray:
    """``log Φ̄(z) = log P(N(0, 1) > z)`` elementwise, finite for every finite ``z``
    (relative error of ``Φ̄`` < 1.2e-7)."""
    far, near = _log_tails_of_abs(z)
    return np.where(np.asarray(z) >= 0, far, near)  # z < 0: Φ̄(z) = Φ(|z|)


def gaussian_log_tails(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(log Φ̄(z), log Φ(z))`` elementwise from one evaluation of the erfc fit: the same bits
    as ``gaussian_log_sf(z)`` and ``gaussian_log_sf(-z)``, at about half their cost."""
    far, near = _log_tails_of_abs(z)
    z = np.asarray(z)
    return np.where(z >= 0, far, near), np.where(z <= 0, far, near)


LOG2 = math.log(2.0)


def _two_sided_q(a: np.ndarray) -> np.ndarray:
    """``1 − 2·Φ̄(a) = erf(a/√2)`` for ``a ≥ 0``: its Maclaurin series (17 terms) below
    ``a = 1``, where ``1 − p`` would lose the small value; the erfc fit above."""
    x = np.minimum(np.abs(a), 1.0) / math.sqrt(2.0)
    x2, term, series = x * x, x.copy(), x.copy()
    for n in range(1, 17):
        term = term * (-x2) / n
        series = series + term / (2 * n + 1)
    return np.where(np.abs(a) < 1.0, series * (2.0 / math.sqrt(math.pi)),
                    -np.expm1(np.log(2.0) + gaussian_log_sf(np.abs(a))))


def tail_log_p(z: np.ndarray, plan: TailPlan, method: str) -> tuple[np.ndarray, np.ndarray]:
    """``(log p [N, U], q [N, U])``: each feature's Gaussian tail p-value (see the module
    docstring) and, for ``"cauchy"`` only (else empty), ``q = 1 − p`` computed where it is
    accurate."""
    none = np.empty(0)
    if plan.all_one_sided or not plan.weighted:
        a = (z * plan.direction if plan.all_one_sided
             else np.where(plan.two_sided, np.abs(z), plan.direction * z))
        logp = gaussian_log_sf(a)
        if not plan.all_one_sided:
            logp = np.where(plan.two_sided, np.minimum(logp + LOG2, 0.0), logp)
        if method != "cauchy":
            return logp, none
        return logp, np.where(plan.two_sided, _two_sided_q(a), np.exp(gaussian_log_sf(-a)))
    # Unequal tails: the smaller of the two Bonferroni-weighted one-sided p-values; one-sided
    # columns take only the first term, with weight 1 (log 1 = 0).
    signed = np.where(plan.two_sided, z, plan.direction * z)
    log_sf, log_cdf = gaussian_log_tails(signed)  # log_cdf = log Φ(z) on the two-sided columns
    upper = log_sf - plan.log_upper_weight
    lower = np.where(plan.two_sided, log_cdf - plan.log_lower_weight, 0.0)
    logp = np.minimum(np.minimum(upper, lower), 0.0)
    return logp, (-np.expm1(logp) if method == "cauchy" else none)


def combine_p(logp: np.ndarray, q: np.ndarray, method: str) -> np.ndarray:
    """Fisher or Cauchy statistic of rows of per-feature log p-values (see the module
    docstring); ``q = 1 − p`` from :func:`tail_log_p` (Cauchy only)."""
    if method == "fisher":
        return -2.0 * row_sum(logp)
    p = np.exp(logp)
    # tan((½ − p)π) = cot(pπ) = −cot(qπ) with q = 1 − p. Each side is taken where it is
    # accurate: below p = 1e-8 as 1/(pπ) from log p (capped at e^700, so no term overflows);
    # above p = ½ from q computed directly (1 − p rounds away the q of a very typical value).
    # q ≥ 1e-15: p = 1 (a two-sided z of exactly 0, a discrete feature at its median) would
    # give −inf.
    q = np.maximum(q, 1e-15)
    terms = np.where(p <= 0.5, np.tan((0.5 - p) * math.pi), -1.0 / np.tan(q * math.pi))
    small = logp < math.log(1e-8)
    terms[small] = np.exp(np.minimum(-logp[small] - math.log(math.pi), 700.0))
    return np.arcsinh(row_sum(terms) / terms.shape[1])


def row_sum(a: np.ndarray) -> np.ndarray:
    """``[N]``: each row of ``a [N, U]`` summed left to right, one column at a time.

    Elementwise additions only, so a row's bits never depend on how many rows share its batch
    (``ndarray.sum`` chooses its summation order, pairwise or SIMD-blocked, by array layout).
    """
    out = a[:, 0].copy()
    for j in range(1, a.shape[1]):
        out += a[:, j]
    return out
