"""The demo's plots: ROC curves, score histograms, per-feature AUROCs, decoded attractors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from oodguard.calibration.detection_metrics import roc_curve
from oodguard.calibration.plotting import pyplot, save_figure

__all__ = ["plot_all"]



def plot_all(
    out: Path,
    scores_in: Mapping[str, np.ndarray],
    scores_out: Mapping[str, Mapping[str, np.ndarray]],
    aurocs: Mapping[str, Mapping[str, float]],
    threshold: float,
    decoded_attractors: np.ndarray,
) -> list[Path]:
    """Write the PNGs into ``out``; returns their paths.

    ``scores_in[score]`` are in-distribution test scores; ``scores_out[set][score]`` OOD ones;
    ``aurocs[set][score]``; ``decoded_attractors [K, 8, 8]``.
    """
    plt = pyplot()
    paths = []
    sets = list(scores_out)
    ncol = 2
    nrow = (len(sets) + 1) // 2

    fig, axes = plt.subplots(nrow, ncol, figsize=(10, 4.5 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, sets, strict=False):
        for score in scores_in:
            fpr, tpr = roc_curve(scores_in=scores_in[score], scores_out=scores_out[name][score])
            main = score in ("combined", "recon_error")
            ax.plot(fpr, tpr, lw=2.2 if main else 0.8, alpha=1.0 if main else 0.6,
                    label=f"{score} ({aurocs[name][score]:.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.6)
        ax.set_title(f"ROC: test digits 0–4 vs {name}")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.legend(fontsize=6.5, loc="lower right")
    for ax in axes.flat[len(sets):]:
        ax.axis("off")
    paths.append(save_figure(plt, fig, out / "roc.png"))

    fig, axes = plt.subplots(nrow, ncol, figsize=(10, 3.6 * nrow), squeeze=False)
    inside = scores_in["combined"]
    for ax, name in zip(axes.flat, sets, strict=False):
        outside = scores_out[name]["combined"]
        both = np.concatenate([inside, outside])
        hi = np.quantile(both[np.isfinite(both)], 0.99)
        bins = np.linspace(min(both.min(), 0.0), hi, 50)
        ax.hist(np.clip(inside, None, hi), bins=bins, alpha=0.6, density=True, label="digits 0–4")
        ax.hist(np.clip(outside, None, hi), bins=bins, alpha=0.6, density=True, label=name)
        ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
        ax.set_title(f"combined score: in vs {name}")
        ax.set_xlabel("score (higher = more OOD; clipped at the 99th percentile)")
        ax.legend(fontsize=7)
    for ax in axes.flat[len(sets):]:
        ax.axis("off")
    paths.append(save_figure(plt, fig, out / "histograms.png"))

    scores = list(scores_in)
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(sets)
    for i, name in enumerate(sets):
        ax.bar(np.arange(len(scores)) + i * width, [aurocs[name][s] for s in scores], width,
               label=name)
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    ax.set_xticks(np.arange(len(scores)) + 0.4 - width / 2)
    ax.set_xticklabels(scores, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("AUROC (feature read as higher = OOD)")
    ax.set_ylim(0, 1.02)
    ax.set_title("What each score separates")
    ax.legend(fontsize=7, ncol=len(sets))
    paths.append(save_figure(plt, fig, out / "feature_auroc.png"))

    k = len(decoded_attractors)
    cols = min(k, 10)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.3 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, decoded_attractors, strict=False):
        ax.imshow(img, cmap="gray_r", vmin=0, vmax=1)
    fig.suptitle(f"{k} attractors, decoded", fontsize=10)
    paths.append(save_figure(plt, fig, out / "attractors.png"))
    return paths
