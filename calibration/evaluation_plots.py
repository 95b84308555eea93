"""Plots of an :class:`~oodguard.calibration.evaluate.EvaluationReport` (needs matplotlib,
the ``demo`` extra): ``roc.png``, ``scores.png`` and ``p_values.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from oodguard.calibration.detection_metrics import roc_curve
from oodguard.calibration.evaluate import EvaluationReport
from oodguard.calibration.plotting import pyplot, save_figure

__all__ = ["PLOT_FILES", "plot_evaluation"]

PLOT_FILES = ("roc.png", "scores.png", "p_values.png")


def plot_evaluation(report: EvaluationReport, out: str | Path) -> list[Path]:
    """Write ``roc.png``, ``scores.png`` and ``p_values.png`` into the existing folder ``out``
    (replacing files of those names); returns their paths."""
    out = Path(out)
    plt = pyplot()
    return [_roc(plt, report, out), _scores(plt, report, out), _p_values(plt, report, out)]


def _roc(plt: Any, r: EvaluationReport, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    for i, s in enumerate(r.ood_sets):
        color = f"C{i % 10}"
        fpr, tpr = roc_curve(scores_in=r.scores_in, scores_out=s.scores)
        # line styles keep curves that coincide (two perfect detectors) both visible
        ax.plot(fpr, tpr, color=color, lw=1.8, ls=("-", "--", "-.", ":")[i % 4],
                label=f"{s.name} (AUROC {s.auroc:.3f})")
        ax.plot([r.fpr_at_threshold], [s.tpr_at_threshold], "o", color=color, ms=7, mec="k")
    ax.plot([], [], "o", color="w", mec="k", label=f"calibrated threshold (alpha={r.alpha:g})")
    ax.axvline(r.alpha, color="0.5", ls="--", lw=0.8)
    ax.plot([0, 1], [0, 1], "k:", lw=0.6)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-positive rate (in-distribution flagged)")
    ax.set_ylabel("true-positive rate (OOD flagged)")
    ax.set_title(f"ROC: {r.n_in} in-distribution inputs vs each OOD set")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(plt, fig, out / "roc.png")


def _scores(plt: Any, r: EvaluationReport, out: Path) -> Path:
    sets = r.ood_sets
    ncol = 1 if len(sets) == 1 else 2
    nrow = (len(sets) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.4 * ncol, 3.6 * nrow), squeeze=False)
    for ax, s in zip(axes.flat, sets, strict=False):
        both = np.concatenate([r.scores_in, s.scores])
        finite = both[np.isfinite(both)]
        lo = min(float(finite.min()), r.threshold) if len(finite) else 0.0
        hi = max(float(np.quantile(finite, 0.99)), r.threshold) if len(finite) else 1.0
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 50)
        ax.hist(np.clip(r.scores_in, lo, hi), bins=bins, alpha=0.55, density=True,
                label=f"in-distribution ({r.n_in})")
        ax.hist(np.clip(s.scores, lo, hi), bins=bins, alpha=0.55, density=True,
                label=f"{s.name} ({s.n})")
        ax.axvline(r.threshold, color="k", ls="--", lw=1, label=f"threshold (alpha={r.alpha:g})")
        ax.set_title(f"score: in-distribution vs {s.name}")
        ax.set_xlabel("score (higher = more OOD; clipped at the 99th percentile)")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    for ax in axes.flat[len(sets):]:
        ax.axis("off")
    return save_figure(plt, fig, out / "scores.png")


def _p_values(plt: Any, r: EvaluationReport, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.hist(r.p_values_in, bins=np.linspace(0, 1, 21), density=True, alpha=0.7,
            label=f"in-distribution p-values ({r.n_in})")
    ax.axhline(1.0, color="k", lw=1, label="uniform (calibrated)")
    ax.axvline(r.alpha, color="C3", ls="--", lw=1,
               label=f"alpha={r.alpha:g}; flagged {r.fpr_at_threshold:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("conformal p-value")
    ax.set_ylabel("density")
    ax.set_title(f"In-distribution p-values vs uniform: KS D={r.ks_statistic:.3f}, "
                 f"p={r.ks_pvalue:.3g}\n(scores vs the {r.n_calibration} calibration scores: "
                 f"KS D={r.ks_calibration_statistic:.3f}, p={r.ks_calibration_pvalue:.3g})",
                 fontsize=9.5)
    ax.legend(fontsize=8, loc="upper right")
    return save_figure(plt, fig, out / "p_values.png")
