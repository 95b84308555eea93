"""Detection metrics in numpy: AUROC, AUPR, FPR at 95% TPR and the ROC curve.

OOD is the positive class and higher scores mean more OOD. Every function takes its two score
arrays by keyword only (``auroc(scores_in=…, scores_out=…)``): scikit-learn's metrics take
``(y_true, y_score)`` positionally, and a call written in that habit — ``auroc(y, scores)`` —
would otherwise return a plausible, wrong number instead of failing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, ParamSpec, TypeVar

import numpy as np

from oodguard.errors import parameter_error

__all__ = ["aupr", "auroc", "fpr_at_tpr", "roc_curve"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _keyword_only(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn a positional call into a TypeError that explains the keyword convention.

    The wrapped function is already keyword-only (so mypy flags positional calls); this only
    replaces Python's terse "takes 0 positional arguments" with a message saying why.
    """
    name = fn.__name__
    call: Callable[..., _R] = fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _R:
        if args:
            raise TypeError(
                f"{name}() takes its arguments by keyword only, got {len(args)} positional: "
                f"call {name}(scores_in=…, scores_out=…) with the in-distribution and the OOD "
                "scores (higher = more OOD). scikit-learn's (y_true, y_score) order is not "
                "accepted, because a call in that order would silently give a wrong number"
            )
        return call(**kwargs)

    return wrapper


def _scores(name: str, which: str, values: Any) -> np.ndarray:
    """``values`` as a non-empty 1-D float64 array without NaN (``±inf`` allowed)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name}: {which} must be a 1-D array of scores; got shape {v.shape}")
    if len(v) == 0:
        raise ValueError(
            f"{name} needs at least one in-distribution and one OOD score; {which} is empty"
        )
    if np.isnan(v).any():
        raise ValueError(
            f"{name} got NaN scores in {which} ({int(np.isnan(v).sum())} of {len(v)}); "
            "a score must be a number (+inf is allowed for rows the guard cannot score)"
        )
    return v


def _pair(name: str, scores_in: Any, scores_out: Any) -> tuple[np.ndarray, np.ndarray]:
    return _scores(name, "scores_in", scores_in), _scores(name, "scores_out", scores_out)


def _average_ranks(v: np.ndarray) -> np.ndarray:
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    starts = ends - counts + 1
    return ((starts + ends) / 2.0)[inv]


def _counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) at each distinct threshold, highest
    first, with "score ≥ threshold" flagged."""
    s = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # the last index of each run of equal scores: ties enter the curve together
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return tps, fps


@_keyword_only
def auroc(*, scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """Area under the ROC curve: ``P(score_out > score_in) + ½ P(tie)`` (Mann–Whitney).

    Parameters
    ----------
    scores_in : array of float, shape (N,)
        In-distribution scores; higher = more OOD.
    scores_out : array of float, shape (M,)
        OOD scores (the positive class).

    Returns
    -------
    float in [0, 1]; 0.5 is chance, 1 separates perfectly. Equals scikit-learn's
    ``roc_auc_score(y, s)`` with ``y = 1`` for OOD.

    Raises
    ------
    ValueError
        An empty array, a non-1-D array or NaN scores (``+inf`` is allowed).
    TypeError
        Positional arguments.
    """
    a, b = _pair("auroc", scores_in, scores_out)
    ranks = _average_ranks(np.concatenate([a, b]))
    r_out = ranks[len(a) :].sum()
    return float((r_out - len(b) * (len(b) + 1) / 2.0) / (len(a) * len(b)))


@_keyword_only
def aupr(
    *, scores_in: np.ndarray, scores_out: np.ndarray, positive: Literal["out", "in"] = "out"
) -> float:
    """Area under the precision–recall curve, as average precision (step-wise, no
    interpolation): ``Σ_k (R_k − R_{k−1}) P_k`` over the distinct thresholds.

    Parameters
    ----------
    scores_in, scores_out : array of float, shapes (N,) and (M,)
        Scores; higher = more OOD.
    positive : "out" or "in"
        ``"out"`` (AUPR-out): OOD is the positive class, ranked by score. ``"in"`` (AUPR-in):
        in-distribution is the positive class, ranked by ``-score``.

    Returns
    -------
    float in (0, 1]; chance level is the positive fraction, ``M/(N+M)`` for AUPR-out. Equals
    scikit-learn's ``average_precision_score`` (ties enter together).

    Raises
    ------
    ValueError
        Empty, non-1-D or NaN scores, or ``positive`` not "out"/"in".
    TypeError
        Positional arguments.
    """
    a, b = _pair("aupr", scores_in, scores_out)
    if positive == "out":
        pos, neg = b, a
    elif positive == "in":
        pos, neg = -a, -b
    else:
        raise parameter_error("positive", "'out' or 'in'", positive, owner="aupr")
    tps, fps = _counts(pos, neg)
    precision = tps / (tps + fps)
    recall = tps / len(pos)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@_keyword_only
def fpr_at_tpr(*, scores_in: np.ndarray, scores_out: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at the highest threshold that flags at least ``tpr`` of the OOD scores.

    Parameters
    ----------
    scores_in, scores_out : array of float, shapes (N,) and (M,)
        Scores; higher = more OOD; "flagged" means ``score ≥ threshold``.
    tpr : float in (0, 1]
        Target true-positive rate (0.95 gives the usual FPR95).

    Returns
    -------
    float in [0, 1]: the fraction of in-distribution scores at or above that threshold.

    Raises
    ------
    ValueError
        Empty, non-1-D or NaN scores, or ``tpr`` outside (0, 1].
    TypeError
        Positional arguments.
    """
    a, b = _pair("fpr_at_tpr", scores_in, scores_out)
    if not 0.0 < tpr <= 1.0:
        raise parameter_error("tpr", "a float in (0, 1]", tpr, owner="fpr_at_tpr")
    b = np.sort(b)[::-1]
    k = max(int(np.ceil(tpr * len(b) - 1e-9)) - 1, 0)
    return float(np.mean(a >= b[k]))


@_keyword_only
def roc_curve(*, scores_in: np.ndarray, scores_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve over every distinct threshold, from (0, 0) to (1, 1).

    Parameters
    ----------
    scores_in, scores_out : array of float, shapes (N,) and (M,)
        Scores; higher = more OOD.

    Returns
    -------
    fpr, tpr : ndarray of float64, shape (K + 1,)
        With ``K`` distinct scores; the same points as scikit-learn's
        ``roc_curve(y, s, drop_intermediate=False)``.

    Raises
    ------
    ValueError
        Empty, non-1-D or NaN scores.
    TypeError
        Positional arguments.
    """
    a, b = _pair("roc_curve", scores_in, scores_out)
    tps, fps = _counts(b, a)
    return np.r_[0.0, fps / len(a)], np.r_[0.0, tps / len(b)]
