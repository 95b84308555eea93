"""Attractor discovery: iterate codes under ``f(z) = E(D(z))`` until they stop moving, then
merge terminal points that lie within a radius of each other."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from oodguard.errors import ExportError
from oodguard.progress import progress_bar

__all__ = ["AttractorReport", "discover_attractors", "merge_points"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class AttractorReport:
    """What discovery found.

    Attributes
    ----------
    attractors : ndarray of float32, shape (K, d)
    members : ndarray of int, shape (K,)
        Terminal points merged into each attractor.
    scale : float
        Median ``‖z0‖`` of the training codes; tolerances are relative to it.
    tol, merge_radius : float
        Absolute convergence tolerance and merge radius.
    n_nonfinite : int
        Codes (training and Gaussian) whose iteration overflowed to NaN or infinity; their
        terminal points were dropped.
    n_train : int
        Training codes available; ``n_data`` of them were iterated (a seeded subsample when
        ``max_codes`` was smaller).
    """

    attractors: np.ndarray
    members: np.ndarray
    n_data: int
    n_data_converged: int
    n_noise: int
    n_noise_converged: int
    n_dropped: int
    max_steps: int
    scale: float
    tol: float
    merge_radius: float
    seconds: float
    n_nonfinite: int = 0
    n_train: int = 0

    def record(self) -> dict[str, float | int]:
        """The manifest's record of discovery (``dynamics["discovery"]``)."""
        return {"n_train": self.n_train or self.n_data, "n_data": self.n_data,
                "n_data_converged": self.n_data_converged, "n_noise": self.n_noise,
                "n_noise_converged": self.n_noise_converged, "max_steps": self.max_steps,
                "attractors": len(self.attractors), "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        return (
            f"{len(self.attractors)} attractors from {self.n_data} training codes "
            f"({self.n_data_converged} converged) and {self.n_noise} Gaussian codes "
            f"({self.n_noise_converged} converged, {self.n_nonfinite} diverged to NaN/inf and "
            f"dropped) in {self.seconds:.2f}s; "
            f"tol={self.tol:.3g}, merge radius={self.merge_radius:.3g}"
        )


def _iterate(
    encoder: nn.Module, decoder: nn.Module, z: torch.Tensor, tol: float, max_steps: int,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Iterate each code until its step is ≤ tol or the budget ends; (terminal, converged).
    The bar counts converged codes."""
    z = z.clone()
    converged = torch.zeros(len(z), dtype=torch.bool)
    active = torch.arange(len(z))
    with progress_bar(len(z), "attractors", log, progress=progress, unit="code") as bar:
        for step in range(max_steps):
            if len(active) == 0:
                break
            cur = z[active]
            nxt = encoder(decoder(cur))
            done = torch.linalg.vector_norm(nxt - cur, dim=1) <= tol
            z[active] = nxt
            converged[active[done]] = True
            active = active[~done]
            bar.update(int(done.sum()))
            bar.set_postfix_str(f"step {step + 1}/{max_steps}")
    return z, converged


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


@torch.inference_mode()
def discover_attractors(
    encoder: nn.Module,
    decoder: nn.Module,
    x_train: np.ndarray | torch.Tensor,
    *,
    n_noise: int = 256,
    rel_tol: float = 1e-3,
    rel_merge_radius: float = 0.05,
    max_steps: int = 500,
    max_attractors: int = 1024,
    batch_size: int = 4096,
    seed: int = 0,
    progress: bool | None = None,
    max_codes: int | None = None,
) -> AttractorReport:
    """Find the attractors of ``f = E∘D`` from training codes and data-free Gaussian codes.

    Parameters
    ----------
    x_train : array, shape (N, *input_shape)
        Training inputs (float32 after the same scaling as in training).
    n_noise : int
        Codes drawn from a Gaussian fitted to the training codes (mean and per-axis std).
    rel_tol, rel_merge_radius : float
        Convergence tolerance and merge radius, relative to the median training-code norm.
    max_steps : int
        Step budget per code. All codes are iterated as one batch; a code leaves the batch as
        soon as its step is within tolerance, and iteration stops when none is left.
    max_codes : int, optional
        Iterate at most this many training codes (a seeded subsample; default all): the cost
        is ``(max_codes + n_noise) × steps`` evaluations of the map, which for a map that does
        not contract is the full ``max_steps`` each.
    max_attractors : int
        Keep at most this many attractors (those that gathered the most terminal points).
    progress : bool or None
        A bar of converged codes; default when stderr is a terminal and INFO is logged.
    """
    t0 = time.perf_counter()
    x = torch.as_tensor(np.asarray(x_train), dtype=torch.float32)
    if len(x) == 0:
        raise ExportError("x_train is empty; attractor discovery needs training inputs")
    if max_steps < 1 or (max_codes is not None and max_codes < 1):
        raise ValueError(f"max_steps and max_codes must be >= 1. Got {max_steps}, {max_codes}")
    n_train = len(x)
    if max_codes is not None and max_codes < n_train:
        pick = np.sort(np.random.default_rng(seed).choice(n_train, max_codes, replace=False))
        x = x[torch.from_numpy(pick)]
    codes = torch.cat([encoder(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    if codes.ndim != 2:
        raise ExportError(
            f"the encoder must map x {tuple(x.shape)} to codes of shape (N, d); got "
            f"{tuple(codes.shape)}. Flatten the latent inside the encoder"
        )
    scale = float(codes.norm(dim=1).median())
    if not np.isfinite(scale) or scale <= 0:
        raise ExportError(f"training codes have median norm {scale}; the encoder looks broken")
    tol = rel_tol * scale
    radius = rel_merge_radius * scale
    gen = torch.Generator().manual_seed(seed)
    noise = codes.mean(0) + codes.std(0) * torch.randn(
        n_noise, codes.shape[1], generator=gen
    )
    terminal, converged = _iterate(encoder, decoder, torch.cat([codes, noise]), tol, max_steps,
                                   progress)
    n = len(codes)
    points = terminal.numpy()
    finite = np.isfinite(points).all(axis=1)
    n_nonfinite = int((~finite).sum())
    if n_nonfinite == len(points):
        raise ExportError(
            f"the latent map z ▶ E(D(z)) diverges: all {len(points)} codes (training and "
            f"Gaussian) reached NaN or infinity within {max_steps} steps, so there is no "
            "attractor to measure distances to. Check the model (a decoder without a bounded "
            "output activation, exploding weights); training with weight decay or denoising "
            "makes the map contractive"
        )
    if n_nonfinite:
        log.warning(
            "%d of %d codes diverged to NaN/infinity under z ▶ E(D(z)) within %d steps; their "
            "terminal points are dropped from the attractor bank", n_nonfinite, len(points),
            max_steps,
        )
    ok = converged.numpy() & finite
    if not ok.any():
        log.warning(
            "none of %d codes converged within %d steps (tol %.3g): the latent map "
            "z ▶ E(D(z)) does not contract here, so the exported 'attractors' are merely where "
            "iteration stopped. steps_to_converge will read T for every input and the "
            "attractor distances measure distance to arbitrary points; the step-norm, rate and "
            "latent kNN/Mahalanobis features still hold. Training with weight decay or "
            "denoising makes the map contractive; max_steps= bounds this search",
            len(points), max_steps, tol,
        )
        ok = finite
    centers, members = merge_points(points[ok], radius)
    dropped = 0
    if len(centers) > max_attractors:
        keep = np.argsort(-members, kind="stable")[:max_attractors]
        dropped = len(centers) - max_attractors
        centers, members = centers[keep], members[keep]
    report = AttractorReport(
        attractors=centers,
        members=members,
        n_data=n,
        n_data_converged=int(converged[:n].sum()),
        n_noise=n_noise,
        n_noise_converged=int(converged[n:].sum()),
        n_dropped=dropped,
        max_steps=max_steps,
        scale=scale,
        tol=tol,
        merge_radius=radius,
        seconds=time.perf_counter() - t0,
        n_nonfinite=n_nonfinite,
        n_train=n_train,
    )
    log.info("attractor discovery: %s", report.summary())
    return report
