"""Choosing features and their directions without OOD data.

Which features separate OOD data, and in which direction, depends on how the autoencoder was
trained (DESIGN.md: with masking augmentation OOD codes converge *faster*). A plain combination
of every feature dilutes the strongest one. So the calibrator learns both from a *reference*
set: the user's OOD validation data when there is some, otherwise synthetic outliers made from
the in-distribution fit inputs themselves (:func:`make_proxies`; every kind is computed on the
flattened input, so it applies to images, signals and tables alike):

- ``noise``: Gaussian noise at half the inputs' standard deviation added to each input;
- ``mixup``: convex mixtures of two inputs (λ ∈ [0.3, 0.7]) — near-OOD lookalikes;
- ``permute``: each input's values permuted — same marginal statistics, no structure;
- ``scaled_noise``: pure Gaussian noise around the data mean, s.d. 1–4 × the data's;
- ``brightness``: inputs pulled towards the data's minimum or maximum (factor 0.3–0.7);
- ``contrast``: each input's deviations from its own mean shrunk to 10–40 %;
- ``blur``: three passes of a width-3 moving average along the flattened input;
- ``constant``: constant inputs, values uniform over the data's range;
- ``gradient``: linear ramps between two values of the data's range;
- ``patch_shuffle``: the flattened input cut into 4 blocks, put back in random order.

Kinds meant to look more like real shifts (not in the default set; measured in
``benchmarks/detection.py``'s rules and ``benchmarks/calibration_study.py``):

- ``phase``: each input's Fourier phases randomised (amplitudes, hence its power spectrum and
  mean, kept): the same texture statistics, none of the structure;
- ``shuffle_16`` / ``shuffle_64``: the ``patch_shuffle`` with 16 / 64 blocks (finer scales).

Each feature gets the direction in which it separates reference from in-distribution data
(``0`` — a two-sided test — where some kinds of reference input move it up and others down,
see :func:`select_features`). The *required* features (the classic baselines, see
:data:`BASELINE_FEATURES`) are always kept; other features are added greedily while the
max-combination's AUROC on the reference set grows by more than ``min_gain`` without any kind of
reference input losing. Only the fit part is used: the calibration part stays untouched, so the
conformal guarantee holds whatever is selected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oodguard.calibration.detection_metrics import auroc

__all__ = [
    "BASELINE_FEATURES",
    "CLASSIFIER_BASELINES",
    "DEFAULT_PROXY_KINDS",
    "PROXY_KINDS",
    "Selection",
    "make_proxies",
    "required_baselines",
    "select_features",
]

DEFAULT_PROXY_KINDS = (
    "noise", "mixup", "permute", "scaled_noise", "brightness", "contrast", "blur", "constant",
    "gradient", "patch_shuffle",
)
# The default proxy set above is calibrate()'s (chosen in benchmarks/calibration_study.py);
# every kind make_proxies knows:
PROXY_KINDS = (*DEFAULT_PROXY_KINDS, "phase", "shuffle_16", "shuffle_64")
# The classic baselines: a selection never reverses them, and keeps them (required_baselines):
# a combination that leaves out its strongest classic input loses to it, e.g. 0.34 against 0.88
# AUROC on recurrent AEs. The last is the classic baseline of a guarded classifier, present only
# in its bundles (oodguard.training.embedding): the class-conditional Mahalanobis distance on
# the classifier's feature layer (Lee et al. 2018). The proxies alone never selected it; kept,
# it raised the guard on all four models of benchmarks/classifier_ood.py (docs/fit.md).
BASELINE_FEATURES = ("recon_error", "latent_knn", "latent_mahalanobis", "embedding_mahalanobis")
# What a guarded classifier's selection always keeps: the reconstruction error and the
# classifier's own embedding distance, which takes the place of the autoencoder's latent
# distances (those stay candidates, and are never reversed). Measured on benchmarks/
# classifier_ood.py's four models and five held-out ones (docs/fit.md): with all four baselines
# required the latent distances of an autoencoder trained on a few hundred rows diluted the
# embedding distance (tabular scrambled features 0.81 against 0.92 with these two).
CLASSIFIER_BASELINES = ("recon_error", "embedding_mahalanobis")


def required_baselines(names: Sequence[str]) -> tuple[str, ...]:
    """The baselines among ``names`` that a selection always keeps: :data:`CLASSIFIER_BASELINES`
    in a guarded classifier's bundle (one with ``embedding_mahalanobis``), else the classic
    ones of :data:`BASELINE_FEATURES`."""
    keep = CLASSIFIER_BASELINES if "embedding_mahalanobis" in names else BASELINE_FEATURES
    return tuple(b for b in keep if b in names)


def _smooth(flat: np.ndarray) -> np.ndarray:
    out = flat
    for _ in range(3):
        pad = np.concatenate([out[:, :1], out, out[:, -1:]], axis=1)
        out = (pad[:, :-2] + pad[:, 1:-1] + pad[:, 2:]) / 3.0
    return out


def _proxy(kind: str, flat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, dim = flat.shape
    lo, hi = float(flat.min()), float(flat.max())
    mean, std = float(flat.mean()), float(flat.std()) or 1.0
    if kind == "noise":
        return flat + rng.normal(0.0, 0.5 * std, flat.shape)
    if kind == "mixup":
        lam = rng.uniform(0.3, 0.7, (n, 1))
        return lam * flat + (1.0 - lam) * flat[rng.permutation(n)]
    if kind == "permute":
        return rng.permuted(flat, axis=1)
    if kind == "scaled_noise":
        return mean + rng.normal(0.0, 1.0, flat.shape) * rng.uniform(1.0, 4.0, (n, 1)) * std
    if kind == "brightness":
        target = np.where(rng.random((n, 1)) < 0.5, lo, hi)
        k = rng.uniform(0.3, 0.7, (n, 1))
        return k * flat + (1.0 - k) * target
    if kind == "contrast":
        m = flat.mean(axis=1, keepdims=True)
        return m + (flat - m) * rng.uniform(0.1, 0.4, (n, 1))
    if kind == "blur":
        return _smooth(flat)
    if kind == "constant":
        return np.repeat(rng.uniform(lo, hi, (n, 1)), dim, axis=1)
    if kind == "gradient":
        a, b = rng.uniform(lo, hi, (n, 1)), rng.uniform(lo, hi, (n, 1))
        return a + (b - a) * np.linspace(0.0, 1.0, dim)[None, :]
    if kind == "phase":
        spec = np.fft.rfft(flat - flat.mean(axis=1, keepdims=True), axis=1)
        phi = rng.uniform(0.0, 2.0 * np.pi, spec.shape)
        phi[:, 0] = 0.0
        if dim % 2 == 0:
            phi[:, -1] = 0.0  # the Nyquist term of a real signal is real
        return np.fft.irfft(np.abs(spec) * np.exp(1j * phi), n=dim, axis=1) + flat.mean(
            axis=1, keepdims=True)
    # patch_shuffle, shuffle_16, shuffle_64
    pieces = {"patch_shuffle": 4, "shuffle_16": 16, "shuffle_64": 64}[kind]
    blocks = np.array_split(np.arange(dim), min(pieces, dim))
    out = np.empty_like(flat)
    for i in range(n):
        out[i] = flat[i, np.concatenate([blocks[k] for k in rng.permutation(len(blocks))])]
    return out


def make_proxies(
    x: np.ndarray, *, kinds: Sequence[str] = DEFAULT_PROXY_KINDS, seed: int = 0
) -> np.ndarray:
    """Synthetic outliers from in-distribution inputs ``x [n, ...]``: ``len(kinds)·n`` float32
    rows of ``x``'s shape, one block of ``n`` per kind, in the order of ``kinds``."""
    unknown = set(kinds) - set(PROXY_KINDS)
    if unknown:
        raise ValueError(f"unknown proxy kinds {sorted(unknown)}; choose from {PROXY_KINDS}")
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float32)
    flat = x.reshape(len(x), -1).astype(np.float64)
    out = [_proxy(kind, flat, rng).astype(np.float32).reshape(x.shape) for kind in kinds]
    return np.concatenate(out)


@dataclass(frozen=True)
class Selection:
    """Selected feature positions (into the candidates), their directions, and the per-feature
    reference AUROCs (of ``+z``, pooled and per group) that chose them."""

    selected: tuple[int, ...]
    direction: np.ndarray  # [U] over all candidates, +1 / -1 / 0 (two-sided)
    aurocs: np.ndarray  # [U]
    combined_auroc: float
    group_aurocs: np.ndarray  # [G, U]


def _directions(a: np.ndarray, ga: np.ndarray, two_sided_margin: float | None) -> np.ndarray:
    direction = np.where(a >= 0.5, 1.0, -1.0)
    if two_sided_margin is not None:
        both = (ga.max(axis=0) > 0.5 + two_sided_margin) & (
            ga.min(axis=0) < 0.5 - two_sided_margin
        )
        direction[both] = 0.0
    return direction


def select_features(
    z_id: np.ndarray,
    z_ref: np.ndarray,
    *,
    groups: Sequence[np.ndarray] | None = None,
    required: Sequence[int] = (),
    keep_sign: Sequence[int] = (),
    min_gain: float = 0.01,
    max_loss: float = 0.002,
    two_sided_margin: float | None = 0.1,
) -> Selection:
    """Greedy forward selection of features for ``max_j s_j`` with ``s_j = d_j·z_j``
    (``|z_j|`` where ``d_j = 0``).

    Directions: ``d_j = +1`` where the pooled reference AUROC of ``z_j`` is ≥ 0.5, else ``−1``;
    ``0`` (two-sided) where one group's AUROC exceeds ``0.5 + two_sided_margin`` and another's
    falls below ``0.5 − two_sided_margin`` (``None``: never two-sided). The ``keep_sign``
    features (distances whose large values are unusual by construction: the classic baselines)
    are never turned around: where the reference set says ``−1`` they get ``0``, a two-sided
    test that keeps their usual power and adds the other tail — or, with
    ``two_sided_margin=None`` (every test one-sided), ``+1``.

    Start from the ``required`` features (or, with none, the feature with the best reference
    AUROC); then repeatedly add the feature that gives the best reference AUROC of the
    combination, if that gain exceeds ``min_gain`` *and* no group of the reference set (one
    proxy kind, see :func:`make_proxies`) loses more than ``max_loss``. Both rules keep the
    strongest feature from being diluted by one that only helps against some kinds of
    outliers (a plain greedy rule with ``min_gain=0.002`` lost up to 0.044 on digits 5–9).

    Parameters
    ----------
    z_id : ndarray, shape (n, U) — standardised in-distribution features
    z_ref : ndarray, shape (m, U) — the same for the reference (OOD or proxy) set
    groups : index arrays into ``z_ref``, one per kind of reference input; default one group
    required : candidate positions that are always selected
    """
    u = z_id.shape[1]
    parts = list(groups) if groups is not None else [np.arange(len(z_ref))]
    a = np.array([auroc(scores_in=z_id[:, j], scores_out=z_ref[:, j]) for j in range(u)])
    ga = np.array([[auroc(scores_in=z_id[:, j], scores_out=z_ref[g, j]) for j in range(u)]
                   for g in parts])
    direction = _directions(a, ga, two_sided_margin)
    for j in keep_sign:
        if direction[j] < 0:
            # one-sided (no margin): keep the usual direction; else add the other tail
            direction[j] = 1.0 if two_sided_margin is None else 0.0
    s_id = np.where(direction == 0, np.abs(z_id), z_id * direction)
    s_ref = np.where(direction == 0, np.abs(z_ref), z_ref * direction)

    def per_group(sel: list[int]) -> np.ndarray:
        c_id = s_id[:, sel].max(axis=1)
        return np.array([auroc(scores_in=c_id, scores_out=s_ref[g][:, sel].max(axis=1))
                         for g in parts])

    def pooled(sel: list[int]) -> float:
        return auroc(scores_in=s_id[:, sel].max(axis=1), scores_out=s_ref[:, sel].max(axis=1))

    strength = np.array([auroc(scores_in=s_id[:, j], scores_out=s_ref[:, j]) for j in range(u)])
    chosen = [int(j) for j in dict.fromkeys(required)] or [int(np.argmax(strength))]
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
    return Selection(tuple(chosen), direction, a, best, ga)
