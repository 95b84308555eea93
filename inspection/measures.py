"""Measurements on the latent map beyond its iteration (:mod:`oodguard.inspect.iteration`):
local contraction and the memorization coefficient.

Contraction takes a ``step`` function (``z ▶ f(z)`` on float32 arrays ``(M, d)``), so the same
code measures a torch model during training and a bundle's ONNX graph afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oodguard.errors import parameter_error
from oodguard.inspect.iteration import Step

__all__ = ["Memorization", "contraction_ratios", "memorization_coefficient"]


@dataclass(frozen=True, eq=False)
class Memorization:
    """The memorization coefficient of each decoded attractor (Fumero et al., 2026, §4.1):

    ``mem(z*) = max_{x ∈ X_train} cos(D(z*), x)``

    — the cosine similarity of the decoded attractor to its closest training sample. 1 means
    the attractor decodes to (a multiple of) a training sample: the model stores that sample.

    Attributes
    ----------
    per_attractor : ndarray of float64, shape (K,)
    nearest : ndarray of int, shape (K,)
        Index of the closest training sample.
    """

    per_attractor: np.ndarray
    nearest: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.per_attractor.mean()) if len(self.per_attractor) else float("nan")

    @property
    def std(self) -> float:
        return float(self.per_attractor.std()) if len(self.per_attractor) else float("nan")


def memorization_coefficient(decoded: np.ndarray, x_train: np.ndarray, *,
                             chunk: int = 4096) -> Memorization:
    """``max_x cos(D(z*), x)`` for each decoded attractor (rows of ``decoded``, any sample
    shape) over the training samples ``x_train``.

    A zero vector has cosine 0 with everything (instead of NaN).
    """
    if len(x_train) == 0:
        raise ValueError("x_train is empty: the memorization coefficient needs training samples")
    a = np.asarray(decoded, dtype=np.float64).reshape(len(decoded), -1)
    x = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
    if a.shape[1] != x.shape[1]:
        raise ValueError(f"decoded attractors have {a.shape[1]} values per sample, training "
                         f"samples {x.shape[1]}; they must have the same shape")
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    best = np.full(len(a), -np.inf)
    where = np.zeros(len(a), dtype=np.int64)
    for i in range(0, len(x), chunk):
        xc = x[i:i + chunk]
        xn = xc / np.maximum(np.linalg.norm(xc, axis=1, keepdims=True), 1e-12)
        cos = an @ xn.T
        j = np.argmax(cos, axis=1)
        c = cos[np.arange(len(a)), j]
        better = c > best
        best[better] = c[better]
        where[better] = j[better] + i
    return Memorization(np.clip(best, -1.0, 1.0), where)


def contraction_ratios(step: Step, z: np.ndarray, *, eps: float, directions: int = 4,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two local contraction measures of ``f`` at the codes ``z (M, d)``.

    Returns ``(lipschitz, step_ratio)``, each of shape ``(M,)``:

    - ``lipschitz``: ``max_u ‖f(z + εu) − f(z)‖ / ε`` over ``directions`` random unit
      vectors ``u`` (a finite-difference estimate of the local Lipschitz constant along
      those directions; ``< 1``: contracting there);
    - ``step_ratio``: ``‖f(f(z)) − f(z)‖ / ‖f(z) − z‖``, the ratio of the second step to the
      first (NaN where the first step is zero).
    """
    if eps <= 0:
        raise parameter_error("eps", "> 0", eps)
    z = np.asarray(z, dtype=np.float32)
    rng = np.random.default_rng(seed)
    fz = step(z)
    lip = np.zeros(len(z))
    for _ in range(directions):
        u = rng.normal(size=z.shape)
        u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
        moved = step((z + eps * u).astype(np.float32))
        lip = np.maximum(lip, np.linalg.norm((moved - fz).astype(np.float64), axis=1) / eps)
    first = np.linalg.norm((fz - z).astype(np.float64), axis=1)
    second = np.linalg.norm((step(fz) - fz).astype(np.float64), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(first > 0, second / first, np.nan)
    return lip, ratio
