"""Calibration-conditional conformal p-values: a simultaneous bound on the uniform order
statistics that makes the p-values of one calibration set super-uniform with probability
``≥ 1 − δ`` over that set (Bates, Candès, Lei, Romano and Sesia, *Testing for outliers with
conformal p-values*, Ann. Statist. 2023). docs/drift.md has the derivation; in short:

With ``n`` calibration scores and continuous scores, a conformal p-value takes the values
``(j + 1)/(n + 1)``, ``j = #{cal ≥ s}``, and given the calibration set
``P(p ≤ (j + 1)/(n + 1) | cal) = V_(j+1)``, the ``(j + 1)``-th of ``n`` uniform order
statistics. If ``V_(i) ≤ b_i`` for every ``i`` at once, then the adjusted value ``b_(j+1)`` is
super-uniform given the calibration set: ``P(b_(j+1) ≤ t | cal) ≤ t`` for every ``t``.

The bound used here is a union (Bonferroni) over ``i`` of the Chernoff bound on the binomial
tail: ``P(V_(i) > b) = P(Binomial(n, b) ≤ i − 1) ≤ exp(−n·KL((i − 1)/n ‖ b))`` for
``b ≥ (i − 1)/n``, each term set to ``δ/n``. It needs no simulation and holds for every ``n``;
near ``p`` it is ``p + sqrt(2·log(n/δ)·p(1 − p)/n)`` to first order — a variance-scaled shift,
so extreme rows keep most of their evidence (a flat DKW shift would add ``sqrt(log(2/δ)/2n)``
to every value). Pure numpy.
"""

from __future__ import annotations

import numpy as np

from oodguard.errors import check_parameter

__all__ = ["conditional_p_values", "kl_bernoulli"]

_BISECTIONS = 64


def kl_bernoulli(q: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``KL(q ‖ b) = q·log(q/b) + (1 − q)·log((1 − q)/(1 − b))`` elementwise (``0·log 0 = 0``),
    for ``q`` in [0, 1] and ``b`` in (0, 1)."""
    q = np.asarray(q, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(q > 0, q * np.log(q / b), 0.0)
        c = np.where(q < 1, (1 - q) * np.log((1 - q) / (1 - b)), 0.0)
    return np.asarray(a + c)


def conditional_p_values(n: int, delta: float) -> np.ndarray:
    """The calibration-conditional values ``b [n + 1]`` of the conformal p-values of ``n``
    calibration scores: ``b[j]`` replaces ``p = (j + 1)/(n + 1)`` (``j = #{cal ≥ s}``).

    ``b[j] ≥ (j + 1)/(n + 1)`` is the root in ``((j)/n, 1)`` of
    ``n·KL(j/n ‖ b) = log(n/δ)`` (``b[n] = 1``): with probability ``≥ 1 − δ`` over the
    calibration set every ``V_(j+1) ≤ b[j]`` at once, and then ``b[j]`` is super-uniform.

    Parameters
    ----------
    n : int, at least 1
        Calibration scores.
    delta : float in (0, 1)
        Probability that the calibration set breaks the bound.

    Returns
    -------
    ndarray of float64, shape (n + 1,)
        Non-decreasing, in (0, 1], ``b[n] = 1``.
    """
    check_parameter(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1,
                    "n", "an int ≥ 1", n, owner="conditional_p_values")
    check_parameter(not isinstance(delta, bool) and isinstance(delta, (int, float, np.floating))
                    and 0.0 < delta < 1.0, "delta", "a float in (0, 1)", delta,
                    owner="conditional_p_values")
    n = int(n)
    i = np.arange(1, n + 1, dtype=np.float64)
    # δ_i = δ/(i·H_n): Σ δ_i = δ, spent mostly where the evidence is (small p-values)
    harmonic = float(np.sum(1.0 / i))
    target = np.log(i * harmonic / float(delta)) / n
    q = (i - 1) / n
    lo, hi = q.copy(), np.ones(n)
    # KL(q ‖ b) increases in b on (q, 1): bisect each root at once; hi always satisfies
    # KL ≥ target (it is +inf at b = 1), so the returned hi is a valid (upper) bound.
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        over = kl_bernoulli(q, np.minimum(mid, np.nextafter(1.0, 0.0))) >= target
        hi = np.where(over, mid, hi)
        lo = np.where(over, lo, mid)
    exact = i / (n + 1)
    b = np.maximum(hi, exact)  # never below the marginal p-value
    b = np.maximum.accumulate(np.minimum(b, 1.0))
    return np.concatenate([b, [1.0]])
