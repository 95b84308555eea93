"""The one iteration of the latent map ``f(z) = E(D(z))`` and the one attractor discovery.

Everything that iterates the map goes through :func:`iterate`: the exporter's attractor
discovery and its latent baselines (:mod:`oodguard.export`, with a torch step), the inspection
report (a torch step during training, the bundle's ONNX graph afterwards), the data-free
dictionary and the trajectory pictures. :func:`discover` is the one attractor discovery built on
it: the exporter runs it once per export and the bundle's inspection report is made from that
same run, so the two cannot disagree.

The module needs numpy only (``oodguard inspect BUNDLE`` runs without torch); a step is any
``z [M, d] ▶ f(z) [M, d]`` on float32 arrays (see :class:`~oodguard.inspect.LatentMap`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np

from oodguard.errors import parameter_error

__all__ = [
    "Basins",
    "Discovery",
    "Iteration",
    "Step",
    "discover",
    "find_basins",
    "iterate",
    "merge_points",
    "trajectory",
]

Step = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class Iteration:
    """Codes iterated under ``f``.

    Attributes
    ----------
    terminal : ndarray of float32, shape (M, d)
        The last point of each trajectory.
    converged : ndarray of bool, shape (M,)
        Whether ``‖z_{t+1} − z_t‖ ≤ tol`` happened within ``max_steps`` (all False without
        ``tol``).
    steps : ndarray of int, shape (M,)
        Steps taken until convergence (``max_steps`` where never).
    finite : ndarray of bool, shape (M,)
        False where the trajectory overflowed to NaN or infinity.
    step_norms : ndarray of float64, shape (M, max_steps), or None
        ``‖z_{t+1} − z_t‖`` of every step (``record_norms=True``).
    path : ndarray of float32, shape (max_steps + 1, M, d), or None
        Every point ``z_0 … z_T``, time-major (``record_path=True``).
    """

    terminal: np.ndarray
    converged: np.ndarray
    steps: np.ndarray
    finite: np.ndarray
    tol: float
    max_steps: int
    step_norms: np.ndarray | None = None
    path: np.ndarray | None = None

    def subset(self, rows: slice) -> Iteration:
        """The same iteration restricted to ``rows`` (a slice of the codes)."""
        return Iteration(
            self.terminal[rows], self.converged[rows], self.steps[rows], self.finite[rows],
            self.tol, self.max_steps,
            None if self.step_norms is None else self.step_norms[rows],
            None if self.path is None else self.path[:, rows])


def iterate(
    step: Step,
    z0: np.ndarray,
    *,
    max_steps: int,
    tol: float | None = None,
    until_converged: bool = True,
    record_norms: bool = False,
    record_path: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> Iteration:
    """Iterate ``z ▶ f(z)`` from ``z0 (M, d)`` for at most ``max_steps`` steps.

    With ``until_converged`` (the default) a code leaves the batch as soon as its step is
    within ``tol`` (or not finite), and iteration stops when none is left: the codes still
    moving are stepped together, as one batch. Without it every code takes exactly
    ``max_steps`` steps (a fixed horizon ``T``, as in the bundle's graph); convergence within
    ``tol`` is still recorded when ``tol`` is given.

    ``on_step(t, newly_converged)`` is called after each step (a progress bar).
    """
    if max_steps < 1:
        raise parameter_error("max_steps", "an int >= 1", max_steps, owner="iterate")
    if until_converged and tol is None:
        raise parameter_error("tol", "a number when until_converged=True", tol,
                              owner="iterate")
    z = np.array(z0, dtype=np.float32, copy=True)
    if z.ndim != 2:
        raise ValueError(f"codes must be an (M, d) array; got shape {z.shape}")
    m = len(z)
    converged = np.zeros(m, dtype=bool)
    steps = np.full(m, max_steps, dtype=np.int64)
    norms = np.full((m, max_steps), np.nan) if record_norms else None
    path = np.empty((max_steps + 1, *z.shape), np.float32) if record_path else None
    if path is not None:
        path[0] = z
    active = np.arange(m)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(max_steps):
            if len(active) == 0:
                break
            cur = z[active]
            nxt = np.asarray(step(cur), dtype=np.float32)
            moved = np.linalg.norm(nxt - cur, axis=1)
            z[active] = nxt
            if norms is not None:
                norms[active, t] = moved
            if path is not None:
                path[t + 1] = z
            newly = 0
            if tol is not None:
                done = moved <= tol
                first = done & ~converged[active]
                converged[active[first]] = True
                steps[active[first]] = t + 1
                newly = int(first.sum())
                if until_converged:
                    # a code that overflowed to NaN or infinity never comes back; stop stepping
                    # it (its step's norm may overflow earlier, while the code is still finite)
                    active = active[~done & np.isfinite(nxt).all(axis=1)]
            if on_step is not None:
                on_step(t, newly)
    finite = np.asarray(np.isfinite(z).all(axis=1))
    return Iteration(z, converged & finite, steps, finite, float("nan") if tol is None else
                     float(tol), int(max_steps), norms, path)


def trajectory(step: Step, z0: np.ndarray, steps: int) -> np.ndarray:
    """The points ``z_0 … z_T`` of each code, time-major: ``(T + 1, M, d)``."""
    run = iterate(step, z0, max_steps=steps, until_converged=False, record_path=True)
    return cast(np.ndarray, run.path)


def merge_points(points: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy leader clustering: a point joins the first center within ``radius``, else it
    becomes a center. Returns ``(centers [K, d], members [K])``."""
    centers: list[np.ndarray] = []
    members: list[int] = []
    bank = np.empty((0, points.shape[1]), dtype=np.float64)
    for p in points.astype(np.float64):
        if len(bank):
            d = np.linalg.norm(bank - p, axis=1)
            j = int(np.argmin(d))
            if d[j] <= radius:
                members[j] += 1
                continue
        centers.append(p)
        members.append(1)
        bank = np.vstack([bank, p[None]])
    return np.asarray(centers, dtype=np.float32), np.asarray(members)


@dataclass(frozen=True, eq=False)
class Discovery:
    """One attractor discovery: every source's codes iterated to convergence, one batch.

    Attributes
    ----------
    attractors : ndarray of float32, shape (K, d)
        Merged terminal points (leader order; by members, most first, when capped).
    members : ndarray of int, shape (K,)
        Terminal points merged into each attractor.
    runs : dict of str to Iteration
        Per source (e.g. ``"train"``, ``"noise"``), in the order given.
    sources : dict of str to ndarray of float32, shape (M, d)
        The codes each source started from.
    merged_converged : bool
        Whether the converged terminal points were merged; False when none converged and the
        finite terminal points stood in (the map does not contract within ``max_steps``).
    n_dropped : int
        Attractors beyond ``max_attractors`` left out (the fewest members).
    """

    attractors: np.ndarray
    members: np.ndarray
    runs: dict[str, Iteration]
    sources: dict[str, np.ndarray]
    tol: float
    radius: float
    max_steps: int
    merged_converged: bool
    n_dropped: int = 0

    def merged_points(self, source: str) -> np.ndarray:
        """The terminal points of ``source`` that were merged into the attractors."""
        run = self.runs[source]
        return run.terminal[run.converged if self.merged_converged else run.finite]


def discover(
    step: Step,
    sources: Mapping[str, np.ndarray],
    *,
    tol: float,
    radius: float,
    max_steps: int,
    max_attractors: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Discovery:
    """Iterate the codes of every source (one batch) until they converge and merge their
    terminal points within ``radius`` (:func:`merge_points`; sources in the order given).

    Where nothing converged, the finite terminal points are merged instead: the attractors
    then describe where the budget ended (``Discovery.merged_converged`` is False). At most
    ``max_attractors`` are kept, those that gathered the most terminal points.
    """
    names = list(sources)
    blocks = [np.asarray(sources[n], dtype=np.float32) for n in names]
    run = iterate(step, np.concatenate(blocks), tol=tol, max_steps=max_steps, on_step=on_step)
    ends = np.cumsum([len(b) for b in blocks])
    runs = {n: run.subset(slice(e - len(b), e)) for n, b, e in zip(names, blocks, ends,
                                                                    strict=True)}
    merged_converged = bool(run.converged.any())
    ok = run.converged if merged_converged else run.finite
    if ok.any():
        centers, members = merge_points(run.terminal[ok], radius)
    else:
        centers, members = np.empty((0, run.terminal.shape[1]), np.float32), np.zeros(0, int)
    dropped = 0
    if max_attractors is not None and len(centers) > max_attractors:
        keep = np.argsort(-members, kind="stable")[:max_attractors]
        dropped = len(centers) - max_attractors
        centers, members = centers[keep], members[keep]
    return Discovery(centers, members, runs, dict(zip(names, blocks, strict=True)), float(tol),
                     float(radius), int(max_steps), merged_converged, dropped)


@dataclass(frozen=True, eq=False)
class Basins:
    """Distinct attractors and how many codes of each source reached each.

    Attributes
    ----------
    attractors : ndarray of float32, shape (K, d)
        Ordered by basin size (largest first).
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


def basins_of(found: Discovery) -> Basins:
    """The basins of a discovery's attractors: each merged terminal point counts for its
    nearest attractor, per source; largest basin first."""
    centers = found.attractors
    sizes = {k: np.bincount(_nearest(found.merged_points(k), centers), minlength=len(centers))
             for k in found.runs}
    if len(centers) == 0:
        return Basins(centers, {k: np.zeros(0, np.int64) for k in found.runs}, found.radius)
    order = np.argsort(-sum(sizes.values()), kind="stable")
    return Basins(centers[order], {k: v[order] for k, v in sizes.items()}, found.radius)


def find_basins(terminals: dict[str, Iteration], radius: float) -> Basins:
    """Merge the converged terminal points of every source and count each basin per source
    (where nothing converged, the finite terminal points: see :func:`discover`)."""
    if not terminals:
        return Basins(np.empty((0, 0), np.float32), {}, float(radius))
    converged = any(it.converged.any() for it in terminals.values())
    points = np.concatenate([it.terminal[it.converged if converged else it.finite]
                             for it in terminals.values()])
    centers, members = (merge_points(points, radius) if len(points) else
                        (np.empty((0, points.shape[1]), np.float32), np.zeros(0, int)))
    first = next(iter(terminals.values()))
    return basins_of(Discovery(centers, members, dict(terminals), {}, first.tol, float(radius),
                               first.max_steps, converged))


def _nearest(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    if len(points) == 0 or len(centers) == 0:
        return np.zeros(0, dtype=np.int64)
    p = points.astype(np.float64)
    c = centers.astype(np.float64)
    d2 = (p * p).sum(1)[:, None] - 2 * p @ c.T + (c * c).sum(1)[None]
    return np.argmin(d2, axis=1)
