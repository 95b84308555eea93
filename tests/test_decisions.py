"""Benjamini–Hochberg over conformal p-values: the rule itself and the realised FDR."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from oodguard.decisions import batch_decisions, benjamini_hochberg
from oodguard.errors import InvalidParameterError
from oodguard.scoring import conformal_p_values


def _reference(p: np.ndarray, q: float) -> np.ndarray:
    """The textbook rule, written the slow way."""
    m = len(p)
    k = 0
    for i in range(1, m + 1):
        if np.sort(p)[i - 1] <= q * i / m:
            k = i
    if k == 0:
        return np.zeros(m, dtype=bool)
    return p <= np.sort(p)[k - 1]


@given(st.lists(st.floats(0.0, 1.0), min_size=0, max_size=60), st.floats(0.01, 0.5))
def test_matches_the_textbook_rule(values: list[float], q: float) -> None:
    p = np.asarray(values)
    got = benjamini_hochberg(p, q)
    want = _reference(p, q)
    # Ties at the cut-off: the reference takes every row equal to p_(k); so does the step-up
    # rule, because a tie at p_(k) also satisfies p ≤ q·i/m for the later index.
    assert (got == want).all()


def test_realised_fdr_stays_under_target() -> None:
    # 400 batches of 200 rows, 20% OOD, conformal p-values from 500 calibration scores.
    # The FDR guarantee is for the expectation: mean FDP ≤ q·m0/m = 0.08; with 400 batches the
    # mean's standard error is below 0.005, so 0.08 + 0.015 is a 3-s.e. margin.
    rng = np.random.default_rng(7)
    q, fdp, power = 0.1, [], []
    for _ in range(400):
        cal = np.sort(rng.normal(size=500))
        is_out = rng.random(200) < 0.2
        scores = np.where(is_out, rng.normal(3.0, 1.0, 200), rng.normal(size=200))
        flagged = benjamini_hochberg(conformal_p_values(cal, scores), q)
        fdp.append((flagged & ~is_out).sum() / max(flagged.sum(), 1))
        power.append((flagged & is_out).sum() / max(is_out.sum(), 1))
    assert np.mean(fdp) <= q * 0.8 + 0.015
    assert np.mean(power) > 0.5  # it does flag: a rule that rejects nothing would pass above


def test_refuses_bad_levels_and_nan() -> None:
    with pytest.raises(InvalidParameterError,
                       match=r"The 'q' parameter of benjamini_hochberg must be a float in "
                             r"\(0, 1\)\. Got 1\.5 instead\."):
        benjamini_hochberg(np.array([0.1]), 1.5)
    with pytest.raises(ValueError, match="'q' parameter"):
        benjamini_hochberg(np.array([0.1]), True)
    with pytest.raises(ValueError, match="NaN"):
        benjamini_hochberg(np.array([0.1, np.nan]), 0.1)
    with pytest.raises(ValueError, match="one-dimensional"):
        benjamini_hochberg(np.zeros((2, 2)), 0.1)
    assert benjamini_hochberg(np.array([]), 0.1).shape == (0,)


def test_batch_decisions_keep_forced_rows_out_of_the_procedure() -> None:
    # Two rows with score +inf (non-finite input) are OOD and must not loosen the BH threshold
    # for the others: with them counted, m and the rank of each p-value would change.
    p = np.array([0.0, 0.0, 0.04, 0.5, 0.9])
    score = np.array([np.inf, np.inf, 3.0, 0.1, -1.0])
    got = batch_decisions(score, p, 0.1)
    want_rest = benjamini_hochberg(p[2:], 0.1)
    assert got[:2].all()
    assert (got[2:] == want_rest).all()
    # Counting the forced rows would have flagged row 2 (0.04 <= 0.1*3/5): the rule differs.
    assert benjamini_hochberg(p, 0.1)[2] and not got[2]
    finite = np.array([1.0, 2.0, 3.0])
    assert (batch_decisions(finite, np.array([0.01, 0.2, 0.5]), 0.1)
            == benjamini_hochberg(np.array([0.01, 0.2, 0.5]), 0.1)).all()
