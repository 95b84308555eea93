"""Choosing features and their directions without OOD data.

Which features separate OOD data, and in which direction, depends on how the autoencoder was
trained (DESIGN.md: with masking augmentation OOD codes converge *faster*). A plain combination
of every feature dilutes the strongest one. So the calibrator learns both from a *reference*
set: the user's OOD validation data when there is some, otherwise synthetic outliers made from
the in-distribution fit inputs themselves (:func:`make_proxies`):

- ``noise``: Gaussian noise at half the inputs' standard deviation;
- ``mixup``: convex mixtures of two inputs (λ ∈ [0.3, 0.7]) — near-OOD lookalikes;
- ``permute``: each input's values permuted — same marginal statistics, no structure.

Each feature gets the direction in which it separates reference from in-distribution data, and
features are added greedily, strongest first, while the max-combination's AUROC on the
reference set grows by more than ``min_gain``. Only the fit part is used: the calibration part
stays untouched, so the conformal guarantee holds whatever is selected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oodguard.calibration.evaluation import auroc

__all__ = ["PROXY_KINDS", "Selection", "make_proxies", "select_features"]

PROXY_KINDS = ("noise", "mixup", "permute")


def make_proxies(
    x: np.ndarray, *, kinds: Sequence[str] = PROXY_KINDS, seed: int = 0
) -> np.ndarray:
    """Synthetic outliers from in-distribution inputs ``x [n, ...]``: ``len(kinds)·n`` rows."""
    unknown = set(kinds) - set(PROXY_KINDS)
    if unknown:
        raise ValueError(f"unknown proxy kinds {sorted(unknown)}; choose from {PROXY_KINDS}")
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    flat = x.reshape(len(x), -1)
    out = []
    for kind in kinds:
        if kind == "noise":
            p = flat + rng.normal(0.0, 0.5 * float(flat.std()), flat.shape)
        elif kind == "mixup":
            lam = rng.uniform(0.3, 0.7, (len(flat), 1))
            p = lam * flat + (1.0 - lam) * flat[rng.permutation(len(flat))]
        else:
            p = rng.permuted(flat, axis=1)
        out.append(p.astype(np.float32).reshape(x.shape))
    return np.concatenate(out)


@dataclass(frozen=True)
class Selection:
    """Selected feature positions (into the candidates), their directions, and the per-feature
    reference AUROCs (of ``+z``) that chose them."""

    selected: tuple[int, ...]
    direction: np.ndarray  # [U] over all candidates, +1 / -1
    aurocs: np.ndarray  # [U]
    combined_auroc: float


def select_features(z_id: np.ndarray, z_ref: np.ndarray, *, min_gain: float = 0.002) -> Selection:
    """Greedy forward selection of one-sided features for ``max_j d_j·z_j``.

    Parameters
    ----------
    z_id : ndarray, shape (n, U) — standardised in-distribution features
    z_ref : ndarray, shape (m, U) — the same for the reference (OOD or proxy) set
    """
    u = z_id.shape[1]
    a = np.array([auroc(z_id[:, j], z_ref[:, j]) for j in range(u)])
    direction = np.where(a >= 0.5, 1.0, -1.0)
    order = [int(j) for j in np.argsort(-np.abs(a - 0.5), kind="stable")]

    def combined(sel: list[int]) -> float:
        return auroc(
            (z_id[:, sel] * direction[sel]).max(axis=1),
            (z_ref[:, sel] * direction[sel]).max(axis=1),
        )

    chosen = [order[0]]
    best = combined(chosen)
    for j in order[1:]:
        score = combined([*chosen, j])
        if score > best + min_gain:
            chosen.append(j)
            best = score
    return Selection(tuple(chosen), direction, a, best)
