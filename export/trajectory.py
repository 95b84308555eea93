"""The fused trajectory graph as a torch module: ``x [N, ...] ▶ features [N, F]``.

The same module is the torch reference and the thing exported to ONNX, so the two compute the
same formulas (see :mod:`oodguard.features`). The ``T`` steps are unrolled at export time and the
attractor bank is a constant buffer. Nearest attractors are chosen with one matrix product
with a bias (argmax of ``z·a − ‖a‖²/2``) over all ``N·(T+1)`` trajectory points and the distance
to the chosen one is then computed exactly: the expanded form alone loses precision near an
attractor, which is precisely where in-distribution codes end up. The trajectory is kept
time-major ``[T+1, N, d]`` inside the graph (contiguous slices over ``t``).

The latent baselines (see :mod:`oodguard.export.baselines`) take the same route on codes centred
on the reference mean: the ``k`` nearest by one float64 matrix product with a bias and a TopK,
then their exact distances, of which the largest; Mahalanobis is ``‖(z − μ) W‖``.
"""

from __future__ import annotations

import torch
from torch import nn

from oodguard.errors import parameter_error
from oodguard.export.baselines import DEFAULT_KNN_K, LatentBaselines, reference_from_points
from oodguard.features import FEATURE_NAMES

__all__ = ["INVARIANT_WIDTH", "TrajectoryFeatures", "aligned_log", "aligned_row_sum",
           "slope_weights"]

# ONNX Runtime's CPU reductions and Eigen's elementwise Log round the last (size mod 16)
# elements of a row or tensor differently from the vectorised rest, so a row's bits depended on
# where it lay in the batch (recon_error: 9 of 40 rows with 30 inputs; the embedding guard's
# Mahalanobis distance: 14 of 67 rows with a 31-wide whitened embedding). Rows and tensors whose
# sizes are multiples of 16 (the AVX-512 packet, which covers 8 and 4) round the same way in
# every batch: the two helpers below pad to it.
INVARIANT_WIDTH = 16


def aligned_row_sum(t: torch.Tensor) -> torch.Tensor:
    """``[N]``: the sums of the rows of ``t [N, W]``, zero-padded to a multiple of
    :data:`INVARIANT_WIDTH` wide (the zeros do not change a sum) so that ONNX Runtime gives each
    row the same bits whatever the batch."""
    return torch.nn.functional.pad(t, (0, -t.shape[1] % INVARIANT_WIDTH)).sum(dim=1)


def aligned_log(t: torch.Tensor) -> torch.Tensor:
    """``[N]``: ``log t`` of ``t [N]``, taken on an ``[N, 16]`` block (``t`` and ones) so that the
    tensor's size is a multiple of :data:`INVARIANT_WIDTH` for every batch."""
    block = torch.nn.functional.pad(t.unsqueeze(1), (0, INVARIANT_WIDTH - 1), value=1.0)
    return torch.log(block)[:, 0]


def slope_weights(steps: int) -> torch.Tensor:
    """Weights ``w [T]`` with ``Σ_t w_t y_t`` = least-squares slope of ``y_t`` over ``t``."""
    t = torch.arange(steps, dtype=torch.float64)
    c = t - t.mean()
    denom = (c * c).sum()
    return (c / denom if denom > 0 else torch.zeros_like(c)).float()


class TrajectoryFeatures(nn.Module):
    """Iterate ``z_{t+1} = E(D(z_t))`` ``steps`` times from ``z0 = E(x)`` and compute features.

    Parameters
    ----------
    encoder, decoder : nn.Module
        ``encoder(x [N, *shape]) -> z [N, d]``, ``decoder(z) -> x̂ [N, *shape]``.
    attractors : Tensor, shape (K, d)
    steps : int
        ``T >= 2``.
    tol : float
        Convergence tolerance on ``‖z_{t+1} − z_t‖`` (``steps_to_converge``; also the ``eps``
        inside ``convergence_rate``'s logarithm, so converged steps flatten at ``log(tol)``
        instead of amplifying float rounding).
    baselines : LatentBaselines, optional
        Reference sets for ``latent_*`` and ``terminal_*`` (fitted on training codes by the
        exporter). Without them the attractor bank serves as the reference set for both, with
        ``k = min(5, K)`` — for tests and benchmarks, not for a bundle.
    """

    feature_names = FEATURE_NAMES
    attractors: torch.Tensor
    attractors_t: torch.Tensor
    attractor_half_sq: torch.Tensor
    slope_w: torch.Tensor
    t_index: torch.Tensor

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        attractors: torch.Tensor,
        *,
        steps: int,
        tol: float,
        baselines: LatentBaselines | None = None,
    ) -> None:
        super().__init__()
        if steps < 2:
            raise parameter_error("steps", "an int >= 2 (convergence_rate is a slope)", steps,
                                  owner="TrajectoryFeatures")
        if attractors.ndim != 2 or len(attractors) == 0:
            raise ValueError(
                f"attractors must be a non-empty (K, d) tensor. Got {attractors.shape}"
            )
        if not tol > 0:
            raise parameter_error("tol", "> 0", tol, owner="TrajectoryFeatures")
        self.encoder = encoder
        self.decoder = decoder
        self.steps = int(steps)
        self.tol = float(tol)
        a = attractors.detach().float()
        self.register_buffer("attractors", a)
        self.register_buffer("attractors_t", a.T.contiguous())
        self.register_buffer("attractor_half_sq", -0.5 * (a * a).sum(1))
        self.register_buffer("slope_w", slope_weights(self.steps))
        self.register_buffer("t_index", torch.arange(self.steps, dtype=torch.float32))
        if baselines is None:
            baselines = reference_from_points(a.numpy(), DEFAULT_KNN_K)
        self.knn_k = int(baselines.k)
        for tag, ref in (("initial", baselines.initial), ("terminal", baselines.terminal)):
            mean = torch.from_numpy(ref.mean).float()
            bank = torch.from_numpy(ref.bank).float() - mean
            if bank.shape[1] != a.shape[1] or len(bank) < self.knn_k:
                raise ValueError(
                    f"the {tag} kNN bank must be (M >= k={self.knn_k}, d={a.shape[1]}). "
                    f"Got {tuple(bank.shape)}"
                )
            self.register_buffer(f"{tag}_bank", bank)
            b64 = bank.double()
            self.register_buffer(f"{tag}_bank_t", b64.T.contiguous())
            self.register_buffer(f"{tag}_bank_half_sq", -0.5 * (b64 * b64).sum(1))
            self.register_buffer(f"{tag}_mean", mean)
            self.register_buffer(f"{tag}_whitening", torch.from_numpy(ref.whitening).float())

    def knn_distance(self, zc: torch.Tensor, tag: str) -> torch.Tensor:
        """Distance ``[N]`` from each row of ``zc = z − μ [N, d]`` to its ``k``-th nearest bank
        code (the bank is stored centred on the same ``μ``).

        The ``k`` nearest come from the expanded form ``zc·b − ‖b‖²/2`` in float64: in float32
        its error (``~‖zc‖²·1e-7``) exceeded the spread of the many terminal bank codes that sit
        on one attractor, so torch and ONNX Runtime picked different neighbours for the same
        ``zT`` (terminal_knn differed by 4e-4 on the demo autoencoder). The largest of their
        exact float32 distances is returned. (Taking ``2k`` float32 candidates instead did not
        fix the disagreement and cost a second TopK.)
        """
        bank = getattr(self, f"{tag}_bank")
        score = torch.addmm(getattr(self, f"{tag}_bank_half_sq"), zc.double(),
                            getattr(self, f"{tag}_bank_t"))
        idx = torch.topk(score, self.knn_k, dim=1).indices  # [N, k], in any order
        near = bank.index_select(0, idx.reshape(-1)).reshape(zc.shape[0], self.knn_k, -1)
        return torch.linalg.vector_norm(zc[:, None, :] - near, dim=-1).amax(dim=1)

    def mahalanobis(self, zc: torch.Tensor, tag: str) -> torch.Tensor:
        """``‖(z − μ) W‖ [N]`` from ``zc = z − μ``: Mahalanobis distance under the reference
        set's shrunk covariance."""
        return torch.linalg.vector_norm(zc @ getattr(self, f"{tag}_whitening"), dim=-1)

    def baseline_features(self, z: torch.Tensor, tag: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(knn [N], mahalanobis [N])`` of ``z [N, d]`` against the ``tag`` reference set."""
        zc = z - getattr(self, f"{tag}_mean")
        return self.knn_distance(zc, tag), self.mahalanobis(zc, tag)

    def time_major(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Z [T+1, N, d], x̂ [N, *shape])``: the trajectory, time first, and ``D(z0)``.

        Time-major because stacking the steps is then one contiguous concatenation and every
        slice over ``t`` a contiguous block; the batch-first layout cost a strided copy of the
        whole trajectory per slice (about a quarter of the graph's time at batch 4096).
        """
        z = self.encoder(x)
        x_hat = self.decoder(z)
        zs = [z]
        z = self.encoder(x_hat)  # z1 = E(D(z0)) reuses the reconstruction
        zs.append(z)
        for _ in range(self.steps - 1):
            z = self.encoder(self.decoder(z))
            zs.append(z)
        n, d = zs[0].shape
        # cat, not stack: one Concat into [(T+1)·N, d] without a copy per step to add an axis
        return torch.cat(zs, dim=0).reshape(self.steps + 1, n, d), x_hat

    def trajectory(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Z [N, T+1, d], x̂ [N, *shape])``: the latent trajectory and ``D(z0)``."""
        traj, x_hat = self.time_major(x)
        return traj.transpose(0, 1), x_hat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        traj, x_hat = self.time_major(x)
        return self.features(x, x_hat, traj)

    def features(self, x: torch.Tensor, x_hat: torch.Tensor, traj: torch.Tensor) -> torch.Tensor:
        """``features [N, F]`` from the input, ``D(z0)`` and the time-major trajectory
        ``traj [T+1, N, d]`` (see :mod:`oodguard.features` for the formulas)."""
        n = x.shape[0]
        d = traj.shape[-1]
        sq = (x - x_hat).pow(2).reshape(n, -1)
        recon = aligned_row_sum(sq) * (1.0 / sq.shape[1])
        step = torch.linalg.vector_norm(traj[1:] - traj[:-1], dim=-1)  # [T, N]
        # ONNX Runtime's CPU Log (Eigen) rounds the tensor's last (size mod 16) elements
        # differently from the vectorised rest, so a row's convergence_rate changed bits
        # with the batch size. Padding T to a multiple of 16 makes the size a multiple of 16
        # for every batch (the padded steps are dropped before the slope).
        padded = torch.nn.functional.pad(step, (0, 0, 0, -self.steps % 16), value=1.0)
        rate = self.slope_w @ torch.log(padded + self.tol)[: self.steps]
        never = torch.full_like(step, float(self.steps))
        to_converge = torch.where(step <= self.tol, self.t_index[:, None], never).amin(dim=0)
        points = traj.reshape(-1, d)  # [(T+1)*N, d]
        # argmin_a ‖p − a‖² = argmax_a (p·a − ‖a‖²/2): one Gemm with a bias, no broadcast Sub
        nearest = torch.argmax(torch.addmm(self.attractor_half_sq, points, self.attractors_t),
                               dim=1)
        dist = torch.linalg.vector_norm(points - self.attractors.index_select(0, nearest), dim=-1)
        dist = dist.reshape(self.steps + 1, n)
        knn0, maha0 = self.baseline_features(traj[0], "initial")
        knn_t, maha_t = self.baseline_features(traj[-1], "terminal")
        return torch.stack(
            [
                recon,
                step[0],
                step[-1],
                rate,
                to_converge,
                step.sum(dim=0),
                torch.linalg.vector_norm(traj[-1] - traj[0], dim=-1),
                dist[-1],
                dist.mean(dim=0),
                knn0,
                maha0,
                knn_t,
                maha_t,
            ],
            dim=1,
        )
