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
features are added greedily while the max-combination's AUROC on the reference set grows by
more than ``min_gain`` without any kind of reference input losing (see
:func:`select_features`). Only the fit part is used: the calibration part stays untouched, so
the conformal guarantee holds whatever is selected.
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


def select_features(
    z_id: np.ndarray,
    z_ref: np.ndarray,
    *,
    groups: Sequence[np.ndarray] | None = None,
    min_gain: float = 0.01,
    max_loss: float = 0.002,
) -> Selection:
    """Greedy forward selection of one-sided features for ``max_j d_j·z_j``.

    Start from the feature with the best reference AUROC; then repeatedly add the feature that
    gives the best reference AUROC of the combination, if that gain exceeds ``min_gain`` *and*
    no group of the reference set (one proxy kind, see :func:`make_proxies`) loses more than
    ``max_loss``. Both rules keep the strongest feature from being diluted by one that only
    helps against some kinds of outliers: over 20 re-drawn splits of the digits demo, with a
    denoising and with a masking autoencoder, they kept the combined AUROC within 0.0001 of
    the best single feature on every OOD set (a plain greedy rule with ``min_gain=0.002`` lost
    up to 0.044 on digits 5–9).

    Parameters
    ----------
    z_id : ndarray, shape (n, U) — standardised in-distribution features
    z_ref : ndarray, shape (m, U) — the same for the reference (OOD or proxy) set
    groups : index arrays into ``z_ref``, one per kind of reference input; default one group
    """
    u = z_id.shape[1]
    a = np.array([auroc(scores_in=z_id[:, j], scores_out=z_ref[:, j]) for j in range(u)])
    direction = np.where(a >= 0.5, 1.0, -1.0)
    parts = list(groups) if groups is not None else [np.arange(len(z_ref))]

    def signed(z: np.ndarray, sel: list[int]) -> np.ndarray:
        return (z[:, sel] * direction[sel]).max(axis=1)

    def per_group(sel: list[int]) -> np.ndarray:
        s_id = signed(z_id, sel)
        return np.array([auroc(scores_in=s_id, scores_out=signed(z_ref[g], sel)) for g in parts])

    def pooled(sel: list[int]) -> float:
        return auroc(scores_in=signed(z_id, sel), scores_out=signed(z_ref, sel))

    chosen = [int(np.argmax(np.abs(a - 0.5)))]
    best, best_groups = pooled(chosen), per_group(chosen)
    while len(chosen) < u:
        trials = []
        for j in range(u):
            if j in chosen:
                continue
            g = per_group([*chosen, j])
            if (g >= best_groups - max_loss).all():
                trials.append((pooled([*chosen, j]), j, g))
        if not trials:
            break
        score, j, g = max(trials, key=lambda t: t[0])
        if score <= best + min_gain:
            break
        chosen.append(j)
        best, best_groups = score, g
    return Selection(tuple(chosen), direction, a, best)
