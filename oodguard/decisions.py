"""Conformal p-values and the decisions made from them: the per-row test and
Benjamini–Hochberg.

A conformal p-value compares a score with the ``n`` sorted calibration scores,
``p = (1 + #{c ≥ s}) / (n + 1)``, so ``P(p ≤ alpha) ≤ alpha`` for an in-distribution input in
finite samples. It takes one of ``n + 1`` values; :func:`p_value_table` lists them and
:func:`conformal_p_values` reads the table (the one implementation: the guard, calibration and
evaluation all call it). :func:`score_threshold` is the score above which ``p ≤ alpha``.

Flagging ``p ≤ alpha`` row by row bounds the false-positive rate of each in-distribution input
by ``alpha``. In a batch of many rows that may hold several OOD inputs, an operator often wants
instead to bound the *false discovery rate* — the expected share of in-distribution rows among
the flagged ones. Conformal p-values of exchangeable in-distribution rows that share one
calibration set are positively dependent (PRDS; Bates et al., *Testing for outliers with
conformal p-values*, Ann. Statist. 2023), so the Benjamini–Hochberg step-up procedure controls
the FDR at ``q`` over the rows of one batch.

Pure numpy; scores come from :class:`oodguard.scoring.Scorer`.
"""

from __future__ import annotations

import math

import numpy as np

from oodguard.errors import check_parameter

__all__ = [
    "batch_decisions",
    "benjamini_hochberg",
    "conformal_p_values",
    "min_calibration_size",
    "p_value_table",
    "score_threshold",
]


def p_value_table(n: int) -> np.ndarray:
    """The ``n + 1`` possible conformal p-values, indexed by ``k = #{c < s}``:
    ``(1 + n − k) / (n + 1)``."""
    return (1.0 + (n - np.arange(n + 1, dtype=np.float64))) / (n + 1.0)


def min_calibration_size(alpha: float) -> int:
    """The fewest calibration scores at which ``p ≤ alpha`` is reachable at all:
    ``1/(n + 1) ≤ alpha``, so ``n ≥ ⌈1/alpha − 1⌉`` (at least 1)."""
    return max(1, math.ceil(1.0 / alpha - 1.0 - 1e-9))


def conformal_p_values(sorted_cal: np.ndarray, scores: np.ndarray,
                       table: np.ndarray | None = None) -> np.ndarray:
    """``p = (1 + #{c ≥ s}) / (n + 1)`` for each score, against the calibration scores
    ``sorted_cal [n]`` sorted ascending (``table``: :func:`p_value_table` of ``n``, when the
    caller keeps it). A NaN score sorts last: p = 1/(n + 1)."""
    if table is None:
        table = p_value_table(len(sorted_cal))
    return table[np.searchsorted(sorted_cal, scores, side="left")]


def score_threshold(sorted_cal: np.ndarray, alpha: float) -> float:
    """The score ``t`` with ``score > t ⇔ p ≤ alpha`` (for scores distinct from calibration)."""
    n = len(sorted_cal)
    m = int(np.floor(alpha * (n + 1) + 1e-9)) - 1  # largest allowed #{cal ≥ s}
    if m >= n:
        return -np.inf
    return float(sorted_cal[n - m - 1])


def benjamini_hochberg(p_values: np.ndarray, q: float) -> np.ndarray:
    """Rows rejected (flagged OOD) by the Benjamini–Hochberg step-up procedure at level ``q``.

    With the p-values sorted ascending ``p_(1) ≤ … ≤ p_(m)``, let ``k`` be the largest ``i``
    with ``p_(i) ≤ q·i/m``; the ``k`` rows with the smallest p-values are rejected (none when
    no such ``i`` exists).

    Parameters
    ----------
    p_values : ndarray of float, shape (m,)
        One p-value per row, each in [0, 1]. NaN is refused.
    q : float
        Target false discovery rate, in (0, 1).

    Returns
    -------
    ndarray of bool, shape (m,)
        True for rejected rows (OOD), in the input's row order. The decision of a row depends
        on the whole batch: the same row may be flagged in one batch and not in another.
    """
    check_parameter(not isinstance(q, bool) and isinstance(q, (int, float, np.floating))
                    and 0.0 < q < 1.0, "q", "a float in (0, 1)", q,
                    owner="benjamini_hochberg")
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional. Got shape {p.shape}")
    if np.isnan(p).any():
        raise ValueError("p_values holds NaN; every row needs a p-value in [0, 1]")
    m = len(p)
    out = np.zeros(m, dtype=bool)
    if m == 0:
        return out
    order = np.argsort(p, kind="stable")
    below = p[order] <= q * np.arange(1, m + 1) / m
    if below.any():
        k = int(np.flatnonzero(below)[-1]) + 1
        out[order[:k]] = True
    return out


def batch_decisions(score: np.ndarray, p_values: np.ndarray, q: float) -> np.ndarray:
    """Benjamini–Hochberg verdicts for one batch as the guard and the service make them.

    Rows whose score is ``+inf`` (non-finite input, or features that overflowed) are OOD
    whatever the others hold and do not take part in the procedure, so they cannot loosen the
    threshold for the rows that are tested; the remaining rows are rejected by
    :func:`benjamini_hochberg` at level ``q``.
    """
    forced = ~np.isfinite(np.asarray(score, dtype=np.float64))
    if not forced.any():
        return benjamini_hochberg(p_values, q)
    out = forced.copy()
    out[~forced] = benjamini_hochberg(np.asarray(p_values)[~forced], q)
    return out
