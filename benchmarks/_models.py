"""The benchmark's autoencoders and the straightforward torch reference (needs torch).

- ``demo``: the demo's ``MLPAutoencoder(64, 32, 8)`` trained briefly on digits 0–4 (so that
  ``E∘D`` is contractive and attractors are real, as in a deployment);
- ``large``: an MLP autoencoder 784-512-256-32 (ELU, sigmoid output) with random weights
  (PyTorch's default initialisation, seeded) — speed does not depend on the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from oodguard.export.baselines import LatentBaselines


@dataclass
class BenchModel:
    """An encoder/decoder pair with its attractor bank and inputs to feed it."""

    name: str
    encoder: nn.Module
    decoder: nn.Module
    attractors: np.ndarray  # (K, d) float32
    tol: float
    inputs: np.ndarray  # (M, dim) float32, tiled to the batch sizes
    train: np.ndarray  # training inputs: the latent baselines' reference sets are fitted on them
    layers: list[tuple[int, int]]  # (in, out) of every Linear of encoder then decoder
    description: str

    def flops(self, steps: int, batch: int) -> float:
        """Multiply-add FLOPs of one call: ``T+1`` encoder and ``T`` decoder passes plus the
        attractor product ``(T+1)·K·d``; elementwise work is not counted."""
        enc = sum(2 * i * o for i, o in self.layers[: len(self.layers) // 2])
        dec = sum(2 * i * o for i, o in self.layers[len(self.layers) // 2 :])
        k, d = self.attractors.shape
        return float(batch * ((steps + 1) * (enc + 2 * k * d) + steps * dec))


def _mlp(sizes: list[int], *, final: nn.Module | None) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            mods.append(nn.ELU())
    if final is not None:
        mods.append(final)
    return nn.Sequential(*mods).eval()


def _attractors(encoder: nn.Module, decoder: nn.Module, x: np.ndarray) -> tuple[np.ndarray, float]:
    from oodguard.export.attractors import discover_attractors

    rep = discover_attractors(encoder, decoder, x, n_noise=128, max_steps=200, max_attractors=64)
    return rep.attractors, rep.tol


def demo_model(*, epochs: int = 40, seed: int = 0) -> BenchModel:
    from oodguard.calibration.data import load_digits_data
    from oodguard.demo.train import train_autoencoder
    from oodguard.export.autoencoder import as_encoder_decoder

    data = load_digits_data(seed=seed)
    model = train_autoencoder(data.train, epochs=epochs, seed=seed, progress=False)
    enc, dec = as_encoder_decoder(model=model)
    a, tol = _attractors(enc, dec, data.train)
    inputs = np.concatenate([data.test, *(v for _, v in data.ood.values())]).astype(np.float32)
    return BenchModel(
        "demo", enc, dec, a, tol, inputs, data.train,
        [(64, 32), (32, 8), (8, 32), (32, 64)],
        f"demo MLPAutoencoder 64-32-8, trained {epochs} epochs on digits 0-4",
    )


def large_model(*, seed: int = 0) -> BenchModel:
    torch.manual_seed(seed)
    enc = _mlp([784, 512, 256, 32], final=None)
    dec = _mlp([32, 256, 512, 784], final=nn.Sigmoid())
    for p in [*enc.parameters(), *dec.parameters()]:
        p.requires_grad_(False)
    rng = np.random.default_rng(seed)
    inputs = rng.uniform(0, 1, size=(1024, 784)).astype(np.float32)
    a, tol = _attractors(enc, dec, inputs[:256])
    return BenchModel(
        "large", enc, dec, a, tol, inputs, inputs[:256],
        [(784, 512), (512, 256), (256, 32), (32, 256), (256, 512), (512, 784)],
        "MLP autoencoder 784-512-256-32, random weights",
    )


def baselines_of(model: BenchModel, steps: int) -> LatentBaselines:
    """The latent baselines' reference sets for ``T = steps``, as the exporter fits them."""
    from oodguard.export.baselines import fit_latent_baselines

    return fit_latent_baselines(model.encoder, model.decoder, model.train, steps=steps,
                                resolution=model.tol)


def batch_of(model: BenchModel, n: int) -> np.ndarray:
    reps = -(-n // len(model.inputs))
    return np.ascontiguousarray(np.tile(model.inputs, (reps, 1))[:n])


_EXACT = "donot_use_mm_for_euclid_dist"


@torch.inference_mode()
def torch_reference(
    encoder: nn.Module,
    decoder: nn.Module,
    attractors: torch.Tensor,
    x: torch.Tensor,
    *,
    steps: int,
    tol: float,
    baselines: LatentBaselines,
) -> torch.Tensor:
    """The features as a user would write them from the paper: a Python loop over ``T`` steps
    and the features in plain torch, batch first, distances by ``torch.cdist`` (in its exact
    mode: the default matrix-product mode loses ~1e-2 near an attractor, where in-distribution
    codes end).

    The latent baselines are ``torch.cdist`` + ``topk`` over the bank and ``‖(z − μ) W‖``.

    Returns features ``[N, F]`` in :data:`oodguard.features.FEATURE_NAMES` order.
    """
    n = x.shape[0]
    z = encoder(x)
    x_hat = decoder(z)
    recon = ((x - x_hat) ** 2).reshape(n, -1).mean(dim=1)
    traj = [z]
    z = encoder(x_hat)  # z1 = E(D(z0)): no need to decode z0 twice
    traj.append(z)
    for _ in range(steps - 1):
        z = encoder(decoder(z))
        traj.append(z)
    zs = torch.stack(traj, dim=1)  # [N, T+1, d]
    step = (zs[:, 1:] - zs[:, :-1]).norm(dim=-1)  # [N, T]
    t = torch.arange(steps, dtype=x.dtype, device=x.device)
    y = torch.log(step + tol)
    tc = t - t.mean()
    rate = ((y - y.mean(dim=1, keepdim=True)) * tc).sum(dim=1) / (tc * tc).sum()
    never = torch.full_like(step, float(steps))
    to_converge = torch.where(step <= tol, t.expand_as(step), never).min(dim=1).values
    d = zs.shape[-1]
    dist = torch.cdist(zs.reshape(-1, d), attractors, compute_mode=_EXACT).min(dim=1).values
    dist = dist.reshape(n, steps + 1)
    base = []
    for ref, zq in ((baselines.initial, zs[:, 0]), (baselines.terminal, zs[:, -1])):
        bank = torch.from_numpy(ref.bank).to(x.device)
        mean = torch.from_numpy(ref.mean).to(x.device)
        knn = torch.cdist(zq, bank, compute_mode=_EXACT).topk(
            baselines.k, dim=1, largest=False).values[:, -1]
        maha = ((zq - mean) @ torch.from_numpy(ref.whitening).to(x.device)).norm(dim=-1)
        base += [knn, maha]
    return torch.stack(
        [
            recon,
            step[:, 0],
            step[:, -1],
            rate,
            to_converge,
            step.sum(dim=1),
            (zs[:, -1] - zs[:, 0]).norm(dim=-1),
            dist[:, -1],
            dist.mean(dim=1),
            *base,
        ],
        dim=1,
    )
