"""Evaluate a calibrated guard on the user's own data: in-distribution inputs and named OOD sets.

>>> from oodguard.calibration import evaluate                      # doctest: +SKIP
>>> report = evaluate("bundle/", x_test, {"noise": x_noise, "letters": x_letters})
>>> print(report.table())

Per OOD set: AUROC, AUPR-in, AUPR-out, FPR at 95% TPR, and the guard's own operating point
(FPR on the in-distribution inputs and TPR on the set at the calibrated threshold). Beside the
combined score, every feature of the bundle (the classic baselines ``recon_error``,
``latent_knn``, ``latent_mahalanobis`` among them) is scored alone: one-sided both ways (higher
= OOD, lower = OOD) and two-sided (distance from the in-distribution median); the report says
in words where the combined score loses to one of them by more than ``LOSS_MARGIN``. For the
in-distribution inputs: a Kolmogorov–Smirnov test of their conformal p-values against the
uniform distribution that calibration promises for exchangeable data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oodguard import __version__
from oodguard.calibration.detection_metrics import aupr, auroc, fpr_at_tpr
from oodguard.errors import (
    CalibrationError,
    InvalidInputError,
    NonFiniteInputError,
    parameter_error,
)
from oodguard.guard import Guard
from oodguard.scoring import score_threshold

__all__ = ["EvaluationReport", "OODSetEvaluation", "evaluate", "ks_tests"]

log = logging.getLogger(__name__)

#: the two-sample KS p-value below which ``evaluate`` says the held-out data does not look
#: exchangeable with the calibration data
EXCHANGEABILITY_LEVEL = 0.01
#: Marks ``evaluation.json`` as written by this function (the CLI recognises its own output).
EVALUATION_SCHEMA = 1
#: AUROC by which a single feature must beat the combined score to be reported as a loss.
LOSS_MARGIN = 0.02
#: How a single feature is scored: higher = OOD, lower = OOD, far from the median either way.
FEATURE_TESTS = ("higher", "lower", "two_sided")


@dataclass(frozen=True, eq=False)
class OODSetEvaluation:
    """Detection metrics for one OOD set (OOD = positive class; higher score = more OOD).

    Attributes
    ----------
    name : str
    n : int
        Rows in the set.
    auroc, aupr_in, aupr_out, fpr95 : float
        Threshold-free metrics (see :mod:`oodguard.calibration.detection_metrics`).
    tpr_at_threshold : float
        Fraction of this set the guard flags (``p ≤ alpha``).
    scores : ndarray of float64, shape (n,)
        The guard's scores; ``+inf`` for rows with non-finite input.
    features : mapping of feature name to {test: AUROC}
        Each feature of the bundle alone, per test in :data:`FEATURE_TESTS` (``"higher"``: a
        larger value is more OOD; ``"lower"``: a smaller one; ``"two_sided"``: the distance
        from the in-distribution inputs' median). Picking the best of them needs the OOD set:
        a hindsight comparison, not a detector.
    """

    name: str
    n: int
    auroc: float
    aupr_in: float
    aupr_out: float
    fpr95: float
    tpr_at_threshold: float
    scores: np.ndarray
    features: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def losses(self, margin: float = LOSS_MARGIN) -> list[str]:
        """In words, each single feature that beats the combined score's AUROC by more than
        ``margin`` on this set, strongest first."""
        beats = sorted(((auc, name, test) for name, tests in self.features.items()
                        for test, auc in tests.items() if auc > self.auroc + margin),
                       reverse=True)
        return [f"on {self.name!r} the combined score (AUROC {self.auroc:.3f}) loses to "
                f"{name} {_TEST_WORDS[test]} (AUROC {auc:.3f}, {auc - self.auroc:+.3f})"
                for auc, name, test in beats]


_TEST_WORDS = {"higher": "one-sided (higher = OOD)", "lower": "one-sided (lower = OOD)",
               "two_sided": "two-sided (far from the median)"}


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """What :func:`evaluate` measured.

    Attributes
    ----------
    alpha : float
        Target false-positive rate of the decisions.
    threshold : float
        Score above which an input is flagged (``score > threshold ⇔ p ≤ alpha``).
    n_calibration : int
        Calibration scores behind the p-values (their resolution is ``1/(n_calibration+1)``).
    fpr_at_threshold : float
        Fraction of the in-distribution inputs flagged; should be near ``alpha`` (at most
        ``alpha`` in expectation) when they come from the calibration distribution.
    ks_statistic, ks_pvalue : float
        Kolmogorov–Smirnov test of ``p_values_in`` against uniform on [0, 1]. Conditional on
        one calibration set, so anti-conservative when ``N`` is much larger than
        ``n_calibration`` (see ``ks_calibration_*``).
    ks_calibration_statistic, ks_calibration_pvalue : float
        Two-sample KS test of the (finite) in-distribution scores against the calibration
        scores: the same question with both sample sizes accounted for.
    scores_in, p_values_in : ndarray of float64, shape (N,)
        The in-distribution inputs' scores (higher = more OOD) and conformal p-values.
    ood_sets : tuple of OODSetEvaluation
        In the order given.
    """

    alpha: float
    threshold: float
    n_calibration: int
    fpr_at_threshold: float
    ks_statistic: float
    ks_pvalue: float
    ks_calibration_statistic: float
    ks_calibration_pvalue: float
    scores_in: np.ndarray
    p_values_in: np.ndarray
    ood_sets: tuple[OODSetEvaluation, ...]

    @property
    def n_in(self) -> int:
        return len(self.scores_in)

    def __getitem__(self, name: str) -> OODSetEvaluation:
        for s in self.ood_sets:
            if s.name == name:
                return s
        raise KeyError(f"no OOD set {name!r}; sets are {[s.name for s in self.ood_sets]}")

    def to_dict(self) -> dict[str, Any]:
        """The metrics as plain JSON types (no score arrays); ``evaluation.json`` holds this."""
        return {
            "oodguard_evaluation": EVALUATION_SCHEMA,
            "oodguard_version": __version__,
            "alpha": self.alpha,
            "threshold": self.threshold,
            "n_calibration": self.n_calibration,
            "in_distribution": {
                "n": self.n_in,
                "fpr_at_threshold": self.fpr_at_threshold,
                "p_value_ks_uniform": {"statistic": self.ks_statistic, "pvalue": self.ks_pvalue},
                "score_ks_calibration": {"statistic": self.ks_calibration_statistic,
                                         "pvalue": self.ks_calibration_pvalue},
                "exchangeability": self.exchangeability_note(),
            },
            "ood_sets": {
                s.name: {
                    "n": s.n,
                    "auroc": s.auroc,
                    "aupr_in": s.aupr_in,
                    "aupr_out": s.aupr_out,
                    "fpr95": s.fpr95,
                    "fpr_at_threshold": self.fpr_at_threshold,
                    "tpr_at_threshold": s.tpr_at_threshold,
                    "features": {k: dict(v) for k, v in s.features.items()},
                    "losses": s.losses(),
                }
                for s in self.ood_sets
            },
        }

    def exchangeability_note(self) -> str | None:
        """In words, when the held-out in-distribution data does not look exchangeable with the
        calibration data (the two-sample KS test of their scores rejects at
        ``EXCHANGEABILITY_LEVEL``), else None: the conformal guarantee then does not cover it."""
        if not self.ks_calibration_pvalue < EXCHANGEABILITY_LEVEL:
            return None
        return (f"the held-out data does not look exchangeable with the calibration data "
                f"(its scores vs the calibration scores: KS p={self.ks_calibration_pvalue:.2g}); "
                f"the false-positive rate alpha={self.alpha:g} is not guaranteed for it "
                f"(measured {self.fpr_at_threshold:.3f}). It may have drifted: recalibrate on "
                "data like it, and watch the stream with drift= (docs/drift.md)")

    def table(self) -> str:
        """A fixed-width text table, one row per OOD set."""
        width = max(8, *(len(s.name) for s in self.ood_sets))
        head = (f"{'OOD set':<{width}} {'n':>7} {'AUROC':>7} {'AUPR-in':>8} {'AUPR-out':>9} "
                f"{'FPR95':>7} {'FPR@thr':>8} {'TPR@thr':>8}")
        lines = [
            f"in-distribution: {self.n_in} inputs; alpha={self.alpha:g}, threshold="
            f"{self.threshold:.4g} (from {self.n_calibration} calibration scores)",
            f"flagged in-distribution (FPR at threshold): {self.fpr_at_threshold:.4f}",
            f"p-values vs uniform: KS D={self.ks_statistic:.4f}, p={self.ks_pvalue:.3g}; scores "
            f"vs calibration scores: KS D={self.ks_calibration_statistic:.4f}, "
            f"p={self.ks_calibration_pvalue:.3g}",
            *(["WARNING: " + note] if (note := self.exchangeability_note()) else []),
            head,
            "-" * len(head),
        ]
        for s in self.ood_sets:
            lines.append(
                f"{s.name:<{width}} {s.n:>7} {s.auroc:>7.4f} {s.aupr_in:>8.4f} {s.aupr_out:>9.4f} "
                f"{s.fpr95:>7.4f} {self.fpr_at_threshold:>8.4f} {s.tpr_at_threshold:>8.4f}"
            )
        feats = list(dict.fromkeys(f for s in self.ood_sets for f in s.features))
        if feats:
            lines += ["", self.feature_table()]
        losses = [w for s in self.ood_sets for w in s.losses()]
        if feats:
            lines.append("")
            lines += losses or [f"the combined score is within {LOSS_MARGIN} AUROC of every "
                                "single feature on every set"]
        return "\n".join(lines)

    def feature_table(self) -> str:
        """AUROC of the combined score and of each feature alone, per OOD set: one-sided
        higher = OOD / lower = OOD, and two-sided (``hi/lo/2s``)."""
        feats = list(dict.fromkeys(f for s in self.ood_sets for f in s.features))
        width = max(24, *(len(f) for f in feats))
        cols = [max(14, len(s.name)) for s in self.ood_sets]
        head = f"{'AUROC hi/lo/2s':<{width}} " + " ".join(
            f"{s.name:>{c}}" for s, c in zip(self.ood_sets, cols, strict=True))
        lines = [head, "-" * len(head),
                 f"{'combined':<{width}} " + " ".join(
                     f"{s.auroc:>{c}.3f}" for s, c in zip(self.ood_sets, cols, strict=True))]
        for f in feats:
            cells = []
            for s, c in zip(self.ood_sets, cols, strict=True):
                t = s.features.get(f, {})
                cell = "/".join(f"{t[k]:.2f}" if k in t else "-" for k in FEATURE_TESTS)
                cells.append(f"{cell:>{c}}")
            lines.append(f"{f:<{width}} " + " ".join(cells))
        return "\n".join(lines)


def _score(guard: Guard, x: Any, label: str,
           chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, p-values and features of ``x`` in chunks of ``chunk`` rows, logging progress.

    Rows are scored independently, so chunking does not change any number.
    """
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    n = len(x) if x.ndim else 0
    if n == 0:
        raise InvalidInputError(
            f"{label} is empty (shape {tuple(x.shape)}); pass at least one input of shape "
            f"{guard.input_spec.shape}", reason="shape",
        )
    scores, p, feats = [], [], []
    for start in range(0, n, chunk):
        try:
            r = guard.check(x[start : start + chunk])
        except NonFiniteInputError as err:  # a guard loaded with nonfinite="raise"
            raise NonFiniteInputError(f"{label}: {err}") from err
        except InvalidInputError as err:
            raise InvalidInputError(f"{label}: {err}", reason=err.reason) from err
        scores.append(r.score)
        p.append(r.p_value)
        feats.append(np.asarray(r.features, dtype=np.float64))
        if n > chunk:
            log.info("scored %s: %d/%d inputs", label, min(start + chunk, n), n)
    return np.concatenate(scores), np.concatenate(p), np.concatenate(feats)


def feature_aurocs(names: Any, f_in: np.ndarray, f_out: np.ndarray) -> dict[str, dict[str, float]]:
    """Per feature, AUROC of each test in :data:`FEATURE_TESTS` (in-distribution ``f_in``
    ``[N, F]`` against OOD ``f_out`` ``[M, F]``; non-finite values count as most OOD)."""
    out = {}
    for j, name in enumerate(names):
        a = np.nan_to_num(f_in[:, j], nan=np.inf)
        b = np.nan_to_num(f_out[:, j], nan=np.inf)
        med = float(np.median(a[np.isfinite(a)])) if np.isfinite(a).any() else 0.0
        hi = auroc(scores_in=a, scores_out=b)
        out[str(name)] = {"higher": hi, "lower": 1.0 - hi,
                          "two_sided": auroc(scores_in=np.abs(a - med),
                                             scores_out=np.abs(b - med))}
    return out


def ks_tests(
    p_in: np.ndarray, scores_in: np.ndarray, calibration_scores: np.ndarray
) -> tuple[float, float, float, float]:
    """``(D, p)`` of the one-sample KS test of the p-values against uniform, then ``(D, p)`` of
    the two-sample KS test of the scores against the calibration scores.

    The conformal guarantee is marginal over the draw of the calibration set: given one set of
    ``n`` calibration scores, the p-values' distribution deviates from uniform by about
    ``1/sqrt(n)``, so with many more test inputs than calibration scores the first test rejects
    even for exchangeable data. The second test asks the same question (do these inputs come
    from the calibration distribution?) with both sample sizes accounted for.
    """
    from scipy.stats import kstest  # the calibrate extra (scikit-learn needs it too)

    one = kstest(p_in, "uniform")
    finite = scores_in[np.isfinite(scores_in)]
    if len(finite) == 0:  # every input non-finite: certainly not the calibration distribution
        return float(one.statistic), float(one.pvalue), 1.0, 0.0
    two = kstest(finite, calibration_scores)
    return float(one.statistic), float(one.pvalue), float(two.statistic), float(two.pvalue)


def evaluate(
    guard: Guard | str | os.PathLike[str],
    x_in: Any,
    ood: Mapping[str, Any],
    *,
    alpha: float | None = None,
    providers: str = "auto",
    chunk: int = 4096,
) -> EvaluationReport:
    """Score in-distribution inputs and named OOD sets with a calibrated guard; measure how
    well the scores separate them and whether the p-values behave as calibrated.

    Parameters
    ----------
    guard : Guard, or the path of a calibrated bundle
        A path is loaded without Prometheus metrics. A ``Guard`` is used as is (its metrics,
        if any, count these inputs too: load it with ``registry=None`` to avoid that).
    x_in : array of float, shape (N, *input_shape)
        In-distribution inputs not used for calibration (a held-out test split).
    ood : mapping of name to array of float, shape (M_k, *input_shape)
        One or more OOD sets.
    alpha : float, optional
        Target false-positive rate for the decisions; default the guard's. Must lie in
        ``[1/(n+1), 1)`` for ``n`` calibration scores.
    providers : str
        ONNX Runtime providers when ``guard`` is a path.
    chunk : int
        Rows scored per call (bounds memory; does not change the results).

    Returns
    -------
    EvaluationReport

    Raises
    ------
    NotCalibratedError
        The bundle has no calibration (run ``oodguard calibrate`` first).
    InvalidInputError
        An empty input set, or inputs whose dtype, rank or shape the bundle refuses; the
        message names the set.
    CalibrationError
        ``alpha`` outside ``[1/(n+1), 1)``.
    ValueError
        ``ood`` is empty or has a name that is not a non-empty string; ``chunk < 1``.
    """
    if not isinstance(ood, Mapping) or not ood:
        raise ValueError("evaluate needs at least one OOD set: ood={'name': x_ood, ...}")
    for name in ood:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"OOD set names must be non-empty strings; got {name!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise parameter_error("chunk", "a positive int", chunk, owner="evaluate")
    if not isinstance(guard, Guard):
        guard = Guard.load(guard, providers=providers, registry=None)
    cal = guard.scorer.calibration_scores
    n_cal = len(cal)
    a = guard.alpha if alpha is None else float(alpha)
    if not 1.0 / (n_cal + 1) <= a < 1.0:
        raise CalibrationError(
            f"alpha must lie in [1/(n+1), 1) = [{1 / (n_cal + 1):.4g}, 1) for this calibration "
            f"(n={n_cal}); got {alpha}. Pass a larger alpha or calibrate on more data"
        )
    threshold = score_threshold(cal, a)

    s_in, p_in, f_in = _score(guard, x_in, "in-distribution inputs", chunk)
    fpr = float(np.mean(p_in <= a))
    ks, ks_p, ks2, ks2_p = ks_tests(p_in, s_in, cal)
    sets = []
    for name, x in ood.items():
        s_out, p_out, f_out = _score(guard, x, f"OOD set {name!r}", chunk)
        sets.append(OODSetEvaluation(
            name=name,
            n=len(s_out),
            auroc=auroc(scores_in=s_in, scores_out=s_out),
            aupr_in=aupr(scores_in=s_in, scores_out=s_out, positive="in"),
            aupr_out=aupr(scores_in=s_in, scores_out=s_out, positive="out"),
            fpr95=fpr_at_tpr(scores_in=s_in, scores_out=s_out, tpr=0.95),
            tpr_at_threshold=float(np.mean(p_out <= a)),
            scores=s_out,
            features=feature_aurocs(guard.feature_names, f_in, f_out),
        ))
        log.info("evaluated %s (%d inputs): AUROC %.4f", name, len(s_out), sets[-1].auroc)
    return EvaluationReport(
        alpha=a, threshold=threshold, n_calibration=n_cal, fpr_at_threshold=fpr,
        ks_statistic=ks, ks_pvalue=ks_p, ks_calibration_statistic=ks2,
        ks_calibration_pvalue=ks2_p, scores_in=s_in, p_values_in=p_in, ood_sets=tuple(sets),
    )
