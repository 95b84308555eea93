"""The inspection's pictures (matplotlib, the ``demo`` extra): decoded attractors with their
basin sizes, trajectories projected to 2-D by PCA, contraction histograms, and the monitor's
curves over epochs."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from oodguard.calibration.plotting import pyplot, save_figure
from oodguard.inspect.report import InspectionReport

__all__ = ["plot_inspection", "plot_monitor"]

MAX_SHOWN = 32


def _as_image(x: np.ndarray) -> np.ndarray | None:
    """A sample as a 2-D image: itself when 2-D (or 1 or 3 channels), a square when its size
    is a square number, else None (drawn as a line)."""
    if x.ndim == 2:
        return x
    if x.ndim == 3 and x.shape[0] in (1, 3):
        return x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1).clip(0, 1)
    side = math.isqrt(x.size)
    return x.reshape(side, side) if side * side == x.size else None


def _attractors(plt: Any, r: InspectionReport, out: Path) -> Path:
    k = min(r.attractor_count, MAX_SHOWN)
    ncol = min(max(k, 1), 8)
    nrow = max(1, math.ceil(k / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.6 * ncol, 2.3 * nrow), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= k:
            ax.axis("off")
            continue
        img = _as_image(r.decoded[i])
        if img is None:
            ax.plot(r.decoded[i].reshape(-1), lw=0.8)
        else:
            ax.imshow(img, cmap="gray")
        mem = r.memorization[i]
        mem_s = "" if not np.isfinite(mem) else f"\nmem {mem:.2f}"
        ax.set_title(f"{r.basin_train[i]}+{r.basin_noise[i]}{mem_s}", fontsize=7)
    fig.suptitle(f"{r.attractor_count} attractors, decoded (largest {k}); title: basin size "
                 "from training + Gaussian codes", fontsize=8)
    return save_figure(plt, fig, out / "attractors.png")


def _trajectories(plt: Any, r: InspectionReport, paths: np.ndarray, out: Path) -> Path:
    """``paths [T + 1, n, d]``, projected with the PCA of the paths and the attractors."""
    pts = np.concatenate([paths.reshape(-1, paths.shape[-1]), r.attractors]).astype(np.float64)
    pts = pts[np.isfinite(pts).all(axis=1)]
    mean = pts.mean(0)
    _, _, vt = np.linalg.svd(pts - mean, full_matrices=False)
    basis = vt[:2].T if vt.shape[0] >= 2 else np.eye(paths.shape[-1], 2)

    def proj(a: np.ndarray) -> np.ndarray:
        return (a - mean) @ basis

    fig, ax = plt.subplots(figsize=(5.5, 5))
    a2 = proj(r.attractors)
    ax.scatter(a2[:, 0], a2[:, 1], s=30 + 120 * r.basin_train / r.basin_train.max(initial=1),
               c="black", marker="x", label="attractors", zorder=3)
    for i in range(paths.shape[1]):
        p = proj(paths[:, i])
        ax.plot(p[:, 0], p[:, 1], "-", lw=0.9, alpha=0.8)
        ax.plot(p[0, 0], p[0, 1], "o", ms=3, color="gray")
    ax.set_title(f"{paths.shape[1]} trajectories over {paths.shape[0] - 1} steps (PCA of the "
                 "latent space); dots: z0", fontsize=8)
    ax.legend(fontsize=7)
    return save_figure(plt, fig, out / "trajectories.png")


def _contraction(plt: Any, r: InspectionReport, out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, values, name in ((axes[0], r.lipschitz, "local Lipschitz estimate"),
                             (axes[1], r.step_ratio, "step ratio ‖z2−z1‖ / ‖z1−z0‖")):
        v = values[np.isfinite(values)]
        if len(v):
            ax.hist(v, bins=40, color="tab:blue", alpha=0.8)
        ax.axvline(1.0, color="tab:red", lw=1, label="1 (no contraction)")
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel("training codes", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("contraction of f = E∘D at training codes (< 1: contracting)", fontsize=9)
    return save_figure(plt, fig, out / "contraction.png")


def plot_inspection(report: InspectionReport, paths: np.ndarray,
                    out: str | os.PathLike[str]) -> list[Path]:
    """Write ``attractors.png``, ``trajectories.png`` and ``contraction.png`` into the
    existing folder ``out``; ``paths [T + 1, n, d]`` are the trajectories to draw."""
    out = Path(out)
    plt = pyplot()
    return [_attractors(plt, report, out), _trajectories(plt, report, paths, out),
            _contraction(plt, report, out)]


def plot_monitor(history: Mapping[str, list[Any]], path: str | os.PathLike[str]) -> str:
    """Attractor counts, memorization coefficient and Lipschitz median over epochs."""
    plt = pyplot()
    epochs = history["epoch"]

    def col(name: str) -> list[float]:
        return [np.nan if v is None else v for v in history[name]]

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    axes[0].plot(epochs, col("attractors_train"), "o-", ms=3, label="from training codes")
    axes[0].plot(epochs, col("attractors_noise"), "s-", ms=3, label="from N(0, I) codes")
    axes[0].set_ylabel("attractors")
    axes[0].legend(fontsize=7)
    axes[1].plot(epochs, col("memorization"), "o-", ms=3, color="tab:purple")
    axes[1].set_ylabel("memorization coefficient")
    axes[2].plot(epochs, col("lipschitz_median"), "o-", ms=3, color="tab:green")
    axes[2].axhline(1.0, color="tab:red", lw=0.8)
    axes[2].set_ylabel("median local Lipschitz")
    for ax in axes:
        ax.set_xlabel("epoch")
    save_figure(plt, fig, Path(path))
    return str(path)
