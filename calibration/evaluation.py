"""Detection metrics in numpy: AUROC and FPR at 95% TPR (OOD = positive class)."""

from __future__ import annotations

import numpy as np

__all__ = ["auroc", "fpr_at_tpr", "roc_curve"]


def _average_ranks(v: np.ndarray) -> np.ndarray:
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    starts = ends - counts + 1
    return ((starts + ends) / 2.0)[inv]


def auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """P(score_out > score_in) + ½ P(tie): the Mann–Whitney form of the ROC area.

    Higher scores must mean more OOD. ``+inf`` is allowed; NaN is not.
    """
    a = np.asarray(scores_in, dtype=np.float64)
    b = np.asarray(scores_out, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("auroc needs at least one in-distribution and one OOD score")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("auroc got NaN scores")
    ranks = _average_ranks(np.concatenate([a, b]))
    r_out = ranks[len(a) :].sum()
    return float((r_out - len(b) * (len(b) + 1) / 2.0) / (len(a) * len(b)))


def fpr_at_tpr(scores_in: np.ndarray, scores_out: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of in-distribution scores at or above the threshold that flags ``tpr`` of OOD."""
    b = np.sort(np.asarray(scores_out, dtype=np.float64))[::-1]
    if len(b) == 0:
        raise ValueError("fpr_at_tpr needs OOD scores")
    k = max(int(np.ceil(tpr * len(b))) - 1, 0)
    return float(np.mean(np.asarray(scores_in, dtype=np.float64) >= b[k]))


def roc_curve(scores_in: np.ndarray, scores_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` over all thresholds, from (0, 0) to (1, 1), for plotting."""
    a = np.asarray(scores_in, dtype=np.float64)
    b = np.asarray(scores_out, dtype=np.float64)
    thr = np.unique(np.concatenate([a, b]))[::-1]
    fpr = (a[None, :] >= thr[:, None]).mean(1)
    tpr = (b[None, :] >= thr[:, None]).mean(1)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])
