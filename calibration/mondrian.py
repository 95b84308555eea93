"""Per-group (Mondrian) calibration: each group's own conformal calibration scores, so that a
guarded classifier's false-positive rate holds class by class (see :mod:`oodguard.groups`).

The scorer is fitted on every group's rows together (the fit part); only the conformal step is
per group: the calibration part's scores are split by label. A group needs at least
``1/alpha − 1`` calibration rows, else none of its rows could ever be flagged at ``alpha``;
:func:`group_calibration` refuses it with a message naming the group and its count.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from oodguard.decisions import min_calibration_size
from oodguard.errors import CalibrationError
from oodguard.groups import GroupCalibration

__all__ = ["check_groups", "group_calibration"]


def check_groups(groups: Any, n: int) -> np.ndarray:
    """``groups`` as a 1-D array of ``n`` integer or string labels (CalibrationError
    otherwise), before any work is done."""
    g = np.asarray(groups)
    if g.ndim != 1 or len(g) != n:
        raise CalibrationError(f"groups must hold one label per validation row: {n} labels, "
                               f"got an array of shape {g.shape}")
    if not (np.issubdtype(g.dtype, np.integer) or np.issubdtype(g.dtype, np.str_)):
        raise CalibrationError(f"groups must be integer or string labels (class ids, names); "
                               f"got dtype {g.dtype}")
    return g


def group_calibration(cal_scores: np.ndarray, cal_groups: np.ndarray, labels: np.ndarray,
                      alpha: float) -> GroupCalibration:
    """Each label's sorted calibration scores.

    Parameters
    ----------
    cal_scores : float64 ``[n_cal]``, the calibration part's scores (higher = more OOD)
    cal_groups : ``[n_cal]``, their labels
    labels : every label of the validation data (a group with no calibration row is refused)
    alpha : the target false-positive rate

    Raises
    ------
    CalibrationError
        A group has fewer than ``1/alpha − 1`` calibration rows (the message names every such
        group and its count).
    """
    need = min_calibration_size(alpha)
    uniq = np.unique(labels)
    scores = [np.sort(cal_scores[cal_groups == g]) for g in uniq]
    small = {g: len(s) for g, s in zip(uniq.tolist(), scores, strict=True) if len(s) < need}
    if small:
        described = ", ".join(f"group {g!r} has {n}" for g, n in list(small.items())[:10])
        raise CalibrationError(
            f"per-group calibration at alpha={alpha:g} needs at least 1/alpha − 1 = {need} "
            f"calibration rows in every group, and {described} (the calibration part is about "
            f"1 − fit_fraction of each group's validation rows): add validation rows of "
            "those groups, raise alpha, or merge small groups")
    return GroupCalibration(uniq.tolist(), scores)
