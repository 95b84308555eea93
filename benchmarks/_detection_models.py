"""The detection benchmark's autoencoders, training recipes and independent baselines (torch).

Models work on flattened rows ``(N, dim)`` (the conv models reshape inside), expose
``encode``/``decode`` and so export through ``oodguard.export.export_bundle(model=...)``
unchanged. The training loop generalises ``oodguard.demo.train.train_autoencoder`` (which
builds only its own sigmoid MLP) to any model, linear outputs and the three recipes:

- ``wd_denoise``: AdamW weight decay 1e-4 and Gaussian input noise (s.d. 0.1 of the data's
  scale) — the recipe that makes ``E∘D`` contractive;
- ``none``: plain Adam, no corruption;
- ``mask``: weight decay 1e-4 and half of each input zeroed (MAE-like).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# The suite's autoencoders are the ones oodguard.fit trains (on flattened rows here).
from oodguard.training.models import MLPAE, ConvAE

__all__ = ["RECIPES", "ModelSpec", "PaperScore", "build", "baselines", "pyod_scores", "train"]

RECIPES = ("wd_denoise", "none", "mask")


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: data family, architecture, recipe, latent size, seed."""

    family: str
    arch: str  # "mlp" or "conv"
    recipe: str
    latent: int
    seed: int
    epochs: int

    @property
    def model_id(self) -> str:
        return f"{self.family}-{self.arch}-{self.recipe}-z{self.latent}-s{self.seed}"


def build(spec: ModelSpec, dim: int, shape: tuple[int, ...], output: str) -> nn.Module:
    torch.manual_seed(spec.seed)
    if spec.arch == "conv":
        return ConvAE(shape, spec.latent, output)
    return MLPAE(dim, spec.latent, max(64, 2 * spec.latent), output)


def train(model: nn.Module, x: np.ndarray, recipe: str, *, epochs: int, seed: int,
          batch_size: int = 64, lr: float = 3e-3) -> nn.Module:
    """Train ``model`` on ``x`` with ``recipe`` (see the module docstring). Seeded."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}. Got {recipe!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = torch.as_tensor(x, dtype=torch.float32)
    scale = float(data.std())
    wd = 0.0 if recipe == "none" else 1e-4
    opt: torch.optim.Optimizer
    if recipe == "none":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(data), generator=gen)
        for i in range(0, len(data), batch_size):
            batch = data[perm[i : i + batch_size]]
            if recipe == "wd_denoise":
                inp = batch + 0.1 * scale * torch.randn(batch.shape, generator=gen)
            elif recipe == "mask":
                inp = batch * (torch.rand(batch.shape, generator=gen) >= 0.5)
            else:
                inp = batch
            loss = nn.functional.mse_loss(model(inp), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


@torch.inference_mode()
def _codes(model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(z0, recon_error)`` in float64, computed in torch outside the graph (chunks of 512)."""
    zs, errs = [], []
    for i in range(0, len(x), 512):
        xb = torch.as_tensor(x[i : i + 512], dtype=torch.float32)
        z = model.encode(xb)  # type: ignore[operator]
        r = model.decode(z)  # type: ignore[operator]
        zs.append(z.double().numpy())
        errs.append(((xb - r).double() ** 2).mean(dim=1).numpy())
    return np.concatenate(zs), np.concatenate(errs)


class Baselines:
    """The classic baselines, fitted on the training codes, independent of the graph:
    reconstruction error, latent Mahalanobis (Ledoit–Wolf covariance of the training codes)
    and latent kNN (distance to the 5th nearest training code)."""

    NAMES = ("recon", "maha", "knn")

    def __init__(self, model: nn.Module, x_train: np.ndarray, k: int = 5) -> None:
        from sklearn.covariance import LedoitWolf
        from sklearn.neighbors import NearestNeighbors

        self.model = model
        z, _ = _codes(model, x_train)
        self.lw = LedoitWolf().fit(z)
        self.nn = NearestNeighbors(n_neighbors=k).fit(z)
        self.k = k

    def scores(self, x: np.ndarray) -> dict[str, np.ndarray]:
        z, err = _codes(self.model, x)
        finite = np.isfinite(z).all(axis=1)
        maha = np.full(len(z), np.inf)
        knn = np.full(len(z), np.inf)
        if finite.any():
            maha[finite] = self.lw.mahalanobis(z[finite])
            knn[finite] = self.nn.kneighbors(z[finite])[0][:, -1]
        return {"recon": np.nan_to_num(err, nan=np.inf), "maha": maha, "knn": knn}


class PaperScore:
    """The paper's OOD score as secondary accounts of its appendix describe it (the paper's own
    text could not be checked here): trajectory points and attractors L2-normalised, attractors
    merged where their cosine similarity exceeds ``merge_cos`` (greedily, in the bank's order:
    an attractor within ``merge_cos`` of one already kept is dropped), and the score is the mean
    over ``t = 0..T`` of the distance from the normalised ``z_t`` to the nearest kept
    attractor. Computed here in torch, outside the graph; the graph's
    ``mean_attractor_distance`` is the same mean with Euclidean (unnormalised) distances."""

    def __init__(self, model: nn.Module, attractors: np.ndarray, steps: int = 32,
                 merge_cos: float = 0.99) -> None:
        a = np.asarray(attractors, dtype=np.float64)
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        keep: list[int] = []
        for i in range(len(a)):
            if not keep or float((a[keep] @ a[i]).max()) <= merge_cos:
                keep.append(i)
        self.model, self.steps, self.attractors = model, steps, a[keep]

    @torch.inference_mode()
    def scores(self, x: np.ndarray) -> np.ndarray:
        out = []
        bank = torch.as_tensor(self.attractors, dtype=torch.float64)
        for i in range(0, len(x), 512):
            z = self.model.encode(torch.as_tensor(x[i : i + 512], dtype=torch.float32))  # type: ignore[operator]
            total = torch.zeros(len(z), dtype=torch.float64)
            for t in range(self.steps + 1):
                zn = z.double() / z.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
                cos = (zn @ bank.T).max(dim=1).values.clamp(-1.0, 1.0)
                total += torch.sqrt(2.0 - 2.0 * cos)  # ‖zn − a‖ for unit vectors
                if t < self.steps:
                    z = self.model.encode(self.model.decode(z))  # type: ignore[operator]
            out.append((total / (self.steps + 1)).numpy())
        return np.nan_to_num(np.concatenate(out), nan=np.inf)


def baselines(model: nn.Module, x_train: np.ndarray) -> Baselines:
    return Baselines(model, x_train)


def pyod_scores(x_train: np.ndarray, sets: dict[str, np.ndarray],
                seed: int) -> dict[str, np.ndarray] | str:
    """PyOD's ``AutoEncoder`` with the library's defaults (10 epochs, hidden 64-32, batch norm,
    dropout 0.2, standardised inputs), seeded, trained on ``x_train``; its
    ``decision_function`` on every set. A string (the reason) when PyOD is not installed or
    fails."""
    try:
        from pyod.models.auto_encoder import AutoEncoder
    except ImportError as exc:
        return f"PyOD not installed ({exc}); pip install -r requirements/bench.txt"
    try:
        det = AutoEncoder(random_state=seed, verbose=0, device="cpu")
        det.fit(x_train)
        out = {}
        for k, v in sets.items():
            s = np.asarray(det.decision_function(v), dtype=np.float64)
            out[k] = np.nan_to_num(s, nan=np.inf)
        return out
    except Exception as exc:  # a peer's failure is a result, not a crash
        return f"PyOD AutoEncoder failed: {type(exc).__name__}: {exc}"
