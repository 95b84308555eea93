"""The classic latent baselines, fitted on training codes and evaluated inside the graph.

Two reference sets are fitted, one for the initial codes ``z0 = E(x)`` and one for the terminal
points ``zT`` of the same training codes after ``T`` steps of ``f = E∘D``:

- **kNN**: the Euclidean distance to the ``k``-th nearest code of a bank of at most
  ``max_bank`` (default 4096) training codes. The bank is *all* training codes when there are
  that few, else a seeded uniform subsample without replacement. A subsample, not k-means
  centroids: the ``k``-th neighbour distance in a uniform subsample of ``M`` of ``N`` codes
  estimates the same density quantity as the ``k·N/M``-th neighbour in the full set, whereas a
  centroid stands for a varying mass of codes and the distance to the ``k``-th centroid is no
  longer a density estimate (and it moves with the k-means seed and iteration count). Scoring a
  row of ``x_train`` itself finds its own code at distance 0 when it is in the bank, so the
  feature is then the distance to the ``(k−1)``-th *other* code: with ``k = 5`` (default) that
  is a small downward bias on training rows only; validation and test rows are never in the bank.
- **Mahalanobis**: ``sqrt((z − μ)ᵀ Σ⁻¹ (z − μ))`` with ``μ`` the training codes' mean and ``Σ``
  their Ledoit–Wolf shrunk covariance (computed here in numpy; equal to scikit-learn's
  ``LedoitWolf``), stored as a whitening matrix ``W`` with ``W Wᵀ = Σ⁻¹`` so that the graph
  computes ``‖(z − μ) W‖``: one Sub, one MatMul and a norm. Subtracting ``μ`` before the product
  (rather than folding it into a Gemm bias) keeps float32 precision when ``‖μ‖`` is large
  against the spread. Eigenvalues of ``Σ`` are floored at ``resolution²`` (the exporter passes
  the convergence tolerance ``tol``) and at ``1e-6`` of their mean. Terminal points are known
  only to about ``tol`` (iteration stops mattering below it, and float32 round-off between two
  runtimes moves ``zT`` by far less but not by nothing), so directions in which the training
  terminal points spread less than ``tol`` are not resolved: without the floor a collapsed
  terminal distribution (all training codes on a few attractors) gave whitening gains of
  ``5·10⁵`` and ``terminal_mahalanobis`` moved by 2% of its median between ONNX Runtime and
  torch (demo autoencoder after 1 epoch, T = 2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from torch import nn

from oodguard.errors import ExportError, parameter_error
from oodguard.inspect.iteration import iterate
from oodguard.inspect.latent_map import TorchMap

__all__ = [
    "DEFAULT_KNN_K",
    "DEFAULT_MAX_BANK",
    "LatentBaselines",
    "LatentReference",
    "fit_latent_baselines",
    "fit_reference",
    "ledoit_wolf",
]

log = logging.getLogger(__name__)

DEFAULT_KNN_K = 5
DEFAULT_MAX_BANK = 4096
_EIG_FLOOR = 1e-6


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit–Wolf shrunk covariance of the rows of ``x [n, d]`` (not assumed centred).

    Returns ``(covariance [d, d] float64, shrinkage)``; the same estimator as
    ``sklearn.covariance.LedoitWolf`` (which the export does not import).
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    xc = x - x.mean(axis=0)
    emp = xc.T @ xc / n
    if n == 1:
        return emp, 0.0
    mu = float(np.trace(emp)) / d
    x2 = xc * xc
    beta_ = float((x2.T @ x2).sum())
    delta_ = float(((xc.T @ xc) ** 2).sum()) / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * float(np.trace(emp)) + d * mu**2) / d
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    cov = (1.0 - shrinkage) * emp
    cov.flat[:: d + 1] += shrinkage * mu
    return cov, float(shrinkage)


@dataclass(frozen=True, eq=False)
class LatentReference:
    """One reference set in latent space.

    Attributes
    ----------
    bank : ndarray of float32, shape (M, d)
        Codes for the kNN distance.
    mean : ndarray of float32, shape (d,)
    whitening : ndarray of float32, shape (d, d)
        ``W`` with ``W Wᵀ = Σ⁻¹``: Mahalanobis distance = ``‖(z − mean) W‖``.
    shrinkage : float
        Ledoit–Wolf shrinkage of the covariance.
    n_fit : int
        Codes the mean and covariance were fitted on.
    """

    bank: np.ndarray
    mean: np.ndarray
    whitening: np.ndarray
    shrinkage: float
    n_fit: int

    def to_dict(self) -> dict[str, float | int]:
        return {"bank_size": len(self.bank), "n_fit": self.n_fit, "shrinkage": self.shrinkage}


@dataclass(frozen=True, eq=False)
class LatentBaselines:
    """The kNN parameter and the two reference sets (at ``z0`` and at ``zT``)."""

    k: int
    initial: LatentReference
    terminal: LatentReference
    # the norms of the T steps the bank codes took to their terminal points ([M, T]; not part
    # of the graph: the exporter's contraction measure reads them instead of iterating again)
    bank_steps: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), compare=False,
                                   repr=False)

    def to_dict(self) -> dict[str, object]:
        return {"k": self.k, "initial": self.initial.to_dict(),
                "terminal": self.terminal.to_dict()}


def fit_reference(
    codes: np.ndarray,
    *,
    k: int,
    max_bank: int = DEFAULT_MAX_BANK,
    seed: int = 0,
    resolution: float = 0.0,
) -> LatentReference:
    """Bank (all codes, or a seeded subsample of ``max_bank``), mean and whitening of ``codes``.

    Raises
    ------
    ExportError
        Fewer codes than ``k`` or non-finite codes.
    """
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or len(codes) < k:
        raise ExportError(
            f"the kNN baseline needs at least k={k} training codes of shape (N, d); got "
            f"{codes.shape}. Pass more training inputs or a smaller knn_k"
        )
    if not np.isfinite(codes).all():
        raise ExportError(
            "training codes (or their terminal points after T steps) hold NaN or infinity; "
            "the latent baselines cannot be fitted. Check the encoder, or lower steps if the "
            "latent map diverges"
        )
    if len(codes) > max_bank:
        idx = np.sort(np.random.default_rng(seed).choice(len(codes), max_bank, replace=False))
        bank = codes[idx]
    else:
        bank = codes
    cov, shrinkage = ledoit_wolf(codes)
    lam, vec = np.linalg.eigh(cov)
    floor = max(_EIG_FLOOR * float(lam.mean()), resolution**2, np.finfo(np.float64).tiny)
    if float(lam.mean()) <= 0 and resolution <= 0:  # one distinct code, no scale: Euclidean
        lam = np.ones_like(lam)
    w = vec / np.sqrt(np.maximum(lam, floor))
    return LatentReference(
        bank=bank.astype(np.float32), mean=codes.mean(axis=0).astype(np.float32),
        whitening=w.astype(np.float32), shrinkage=shrinkage, n_fit=len(codes),
    )


@torch.inference_mode()
def fit_latent_baselines(
    encoder: nn.Module,
    decoder: nn.Module,
    x_train: np.ndarray,
    *,
    steps: int,
    k: int = DEFAULT_KNN_K,
    max_bank: int = DEFAULT_MAX_BANK,
    seed: int = 0,
    resolution: float = 0.0,
    batch_size: int = 4096,
) -> LatentBaselines:
    """Fit both reference sets: ``z0`` of all of ``x_train``, and ``zT`` of the bank's codes
    (``T = steps`` iterations of ``f``, as in the graph). ``resolution`` floors the standard
    deviation of every principal direction (the exporter passes the convergence tolerance)."""
    if not (isinstance(k, int) and k >= 1):
        raise parameter_error("knn_k", "an int >= 1", k)
    if not (isinstance(max_bank, int) and max_bank >= k):
        raise parameter_error("max_bank", f"an int >= knn_k={k}", max_bank)
    x = torch.as_tensor(np.asarray(x_train), dtype=torch.float32)
    codes = torch.cat([encoder(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    initial = fit_reference(codes.numpy(), k=k, max_bank=max_bank, seed=seed,
                            resolution=resolution)
    latent = TorchMap(encoder, decoder, input_shape=tuple(x.shape[1:]),
                      latent_dim=int(codes.shape[1]), max_batch=None)
    run = iterate(latent.step, initial.bank, max_steps=steps, until_converged=False,
                  record_norms=True)
    term, bank_steps = run.terminal, cast(np.ndarray, run.step_norms)
    finite = np.isfinite(term).all(axis=1)
    if not finite.all():
        log.warning("%d of %d bank codes reach NaN/infinity within T=%d steps; the terminal "
                    "reference set leaves them out", int((~finite).sum()), len(term), steps)
    terminal = fit_reference(term[finite], k=k, max_bank=max_bank, seed=seed,
                             resolution=resolution)
    return LatentBaselines(k=k, initial=initial, terminal=terminal, bank_steps=bank_steps)


def reference_from_points(points: np.ndarray, k: int) -> LatentBaselines:
    """Baselines over a fixed set of points for both ``z0`` and ``zT`` (modules built without
    training codes, e.g. in tests and benchmarks: the attractor bank)."""
    ref = fit_reference(points, k=min(k, len(points)))
    return LatentBaselines(k=min(k, len(points)), initial=ref, terminal=ref)
