"""The measurements on the latent map: iteration to convergence, attractors and their basins,
contraction, and the memorization coefficient.

Everything here takes a ``step`` function (``z ▶ f(z)`` on float32 arrays ``(M, d)``) or a
:class:`~oodguard.inspect.latent_map.LatentMap`, so the same code measures a torch model during
training and a bundle's ONNX graph afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Basins",
    "Iteration",
    "Memorization",
    "contraction_ratios",
    "find_basins",
    "iterate",
    "memorization_coefficient",
    "trajectory",
]

Step = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class Iteration:
    """Codes iterated under ``f`` until their step is at most ``tol`` or ``max_steps`` ran out.

    Attributes
    ----------
    terminal : ndarray of float32, shape (M, d)
        The last point of each trajectory.
    converged : ndarray of bool, shape (M,)
        Whether ``‖z_{t+1} − z_t‖ ≤ tol`` happened within ``max_steps``.
    steps : ndarray of int, shape (M,)
        Steps taken until convergence (``max_steps`` where never).
    finite : ndarray of bool, shape (M,)
        False where the trajectory overflowed to NaN or infinity.
    """

    terminal: np.ndarray
    converged: np.ndarray
    steps: np.ndarray
    finite: np.ndarray
    tol: float
    max_steps: int


def iterate(step: Step, z0: np.ndarray, *, tol: float, max_steps: int) -> Iteration:
    """Iterate ``z ▶ f(z)`` from ``z0 (M, d)``; only the codes still moving are stepped."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1. Got {max_steps}")
    z = np.array(z0, dtype=np.float32, copy=True)
    converged = np.zeros(len(z), dtype=bool)
    steps = np.full(len(z), max_steps, dtype=np.int64)
    active = np.arange(len(z))
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(max_steps):
            if len(active) == 0:
                break
            nxt = step(z[active])
            moved = np.linalg.norm(nxt - z[active], axis=1)
            z[active] = nxt
            done = moved <= tol
            converged[active[done]] = True
            steps[active[done]] = t + 1
            # a NaN step is never <= tol; stop stepping it all the same
            active = active[~done & np.isfinite(moved)]
    finite = np.asarray(np.isfinite(z).all(axis=1))
    return Iteration(z, converged & finite, steps, finite, float(tol), int(max_steps))


def trajectory(step: Step, z0: np.ndarray, steps: int) -> np.ndarray:
    """The points ``z_0 … z_T`` of each code, time-major: ``(T + 1, M, d)``."""
    out = [np.asarray(z0, dtype=np.float32)]
    for _ in range(steps):
        out.append(step(out[-1]))
    return np.stack(out)


@dataclass(frozen=True, eq=False)
class Basins:
    """Distinct attractors and how many codes of each source reached each.

    Attributes
    ----------
    attractors : ndarray of float32, shape (K, d)
        Converged terminal points merged within ``radius`` (greedy leader clustering, as in
        the exporter's discovery), ordered by basin size (largest first).
    sizes : dict of str to ndarray of int, shape (K,)
        Per source (e.g. ``"train"``, ``"noise"``): converged codes whose terminal point lies
        nearest that attractor.
    """

    attractors: np.ndarray
    sizes: dict[str, np.ndarray]
    radius: float

    @property
    def count(self) -> int:
        return len(self.attractors)

    def count_from(self, source: str) -> int:
        """Attractors reached by at least one code of ``source``."""
        return int((self.sizes[source] > 0).sum())


def find_basins(terminals: dict[str, Iteration], radius: float) -> Basins:
    """Merge the converged terminal points of every source and count each basin per source.

    Where nothing converged, the finite terminal points are merged instead (the map may not
    be contractive: the count then describes where the budget ended, and the caller's report
    says how many converged).
    """
    points = {k: it.terminal[it.converged] for k, it in terminals.items()}
    if not any(len(p) for p in points.values()):
        points = {k: it.terminal[it.finite] for k, it in terminals.items()}
    stacked = np.concatenate([p for p in points.values()]) if points else np.empty((0, 0))
    if len(stacked) == 0:
        d = next(iter(terminals.values())).terminal.shape[1] if terminals else 0
        return Basins(np.empty((0, d), np.float32), {k: np.zeros(0, np.int64) for k in points},
                      float(radius))
    # Imported here: the exporter imports this package (its inspection files), so a module-level
    # import of oodguard.export would make the two import each other half-initialised.
    from oodguard.export.attractors import merge_points

    centers, _ = merge_points(stacked, radius)
    sizes = {k: np.bincount(_nearest(p, centers), minlength=len(centers)) for k, p in
             points.items()}
    order = np.argsort(-sum(sizes.values()), kind="stable")
    return Basins(centers[order], {k: v[order] for k, v in sizes.items()}, float(radius))


def _nearest(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    p = points.astype(np.float64)
    c = centers.astype(np.float64)
    d2 = (p * p).sum(1)[:, None] - 2 * p @ c.T + (c * c).sum(1)[None]
    return np.argmin(d2, axis=1)


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
        raise ValueError(f"eps must be > 0. Got {eps}")
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
