"""Attractor discovery for the bundle: training codes and Gaussian codes fitted to them, iterated
under ``f(z) = E(D(z))`` until they stop moving, terminal points merged within a radius.

The iteration and the merge are :func:`oodguard.inspect.discover` (the one implementation, also
behind the inspection report); this module encodes the training data, draws the noise codes,
sets the tolerances from the training codes and says what went wrong."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from oodguard.errors import ExportError, parameter_error
from oodguard.inspect.iteration import Discovery, discover, merge_points
from oodguard.inspect.latent_map import TorchMap
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
    discovery : Discovery, optional
        The run itself (per code: start, terminal point, convergence, steps), sources
        ``"train"`` and ``"noise"``: the bundle's inspection report is made from it.
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
    discovery: Discovery | None = None

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
        raise parameter_error("max_steps, max_codes", "ints >= 1 (max_codes: or None)",
                              (max_steps, max_codes), owner="discover_attractors")
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
    latent = TorchMap(encoder, decoder, input_shape=tuple(x.shape[1:]),
                      latent_dim=int(codes.shape[1]), max_batch=None)
    total = len(codes) + n_noise
    with progress_bar(total, "attractors", log, progress=progress, unit="code") as bar:
        def on_step(t: int, newly: int) -> None:
            bar.update(newly)
            bar.set_postfix_str(f"step {t + 1}/{max_steps}")

        found = discover(latent.step, {"train": codes.numpy(), "noise": noise.numpy()},
                         tol=tol, radius=radius, max_steps=max_steps,
                         max_attractors=max_attractors, on_step=on_step)
    train, gauss = found.runs["train"], found.runs["noise"]
    n = len(codes)
    n_nonfinite = int((~train.finite).sum() + (~gauss.finite).sum())
    if n_nonfinite == total:
        raise ExportError(
            f"the latent map z ▶ E(D(z)) diverges: all {total} codes (training and "
            f"Gaussian) reached NaN or infinity within {max_steps} steps, so there is no "
            "attractor to measure distances to. Check the model (a decoder without a bounded "
            "output activation, exploding weights); training with weight decay or denoising "
            "makes the map contractive"
        )
    if n_nonfinite:
        log.warning(
            "%d of %d codes diverged to NaN/infinity under z ▶ E(D(z)) within %d steps; their "
            "terminal points are dropped from the attractor bank", n_nonfinite, total,
            max_steps,
        )
    if not found.merged_converged:
        log.warning(
            "none of %d codes converged within %d steps (tol %.3g): the latent map "
            "z ▶ E(D(z)) does not contract here, so the exported 'attractors' are merely where "
            "iteration stopped. steps_to_converge will read T for every input and the "
            "attractor distances measure distance to arbitrary points; the step-norm, rate and "
            "latent kNN/Mahalanobis features still hold. Training with weight decay or "
            "denoising makes the map contractive; max_steps= bounds this search",
            total, max_steps, tol,
        )
    report = AttractorReport(
        attractors=found.attractors,
        members=found.members,
        n_data=n,
        n_data_converged=int(train.converged.sum()),
        n_noise=n_noise,
        n_noise_converged=int(gauss.converged.sum()),
        n_dropped=found.n_dropped,
        max_steps=max_steps,
        scale=scale,
        tol=tol,
        merge_radius=radius,
        seconds=time.perf_counter() - t0,
        n_nonfinite=n_nonfinite,
        n_train=n_train,
        discovery=found,
    )
    log.info("attractor discovery: %s", report.summary())
    return report
