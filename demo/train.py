"""A small MLP autoencoder and its training loop.

Weight decay and denoising are what make the latent map ``E∘D`` contractive, so that
in-distribution codes settle onto attractors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from oodguard.errors import parameter_error
from oodguard.progress import progress_bar, wants_progress

__all__ = ["EncoderDecoder", "MLPAutoencoder", "train_autoencoder"]

log = logging.getLogger(__name__)


class EncoderDecoder(nn.Module):
    """``encode``/``decode`` (what the exporter calls) over ``self.encoder``/``self.decoder``."""

    encoder: nn.Module
    decoder: nn.Module

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class MLPAutoencoder(EncoderDecoder):
    """``dim ▶ hidden ▶ latent ▶ hidden ▶ dim`` with a sigmoid output (inputs in [0, 1])."""

    def __init__(self, dim: int = 64, hidden: int = 32, latent: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ELU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.ELU(), nn.Linear(hidden, dim), nn.Sigmoid()
        )


def train_autoencoder(
    x: np.ndarray,
    *,
    latent: int = 8,
    hidden: int = 32,
    epochs: int = 400,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    noise: float = 0.1,
    corruption: str = "noise",
    mask_fraction: float = 0.5,
    seed: int = 0,
    progress: bool | None = None,
    on_epoch: Callable[[int, nn.Module], object] | None = None,
) -> MLPAutoencoder:
    """Train a denoising MLP autoencoder on ``x [N, dim]`` (values in [0, 1]). Seeded.

    ``corruption="noise"`` adds Gaussian noise of s.d. ``noise`` to the inputs; ``"mask"`` zeroes
    a random ``mask_fraction`` of each input's values (MAE-like), which DESIGN.md reports flips
    the direction of the trajectory features.

    ``progress``: a bar over the epochs (default: when stderr is a terminal and INFO is logged,
    see :mod:`oodguard.progress`); without a bar, the loss is logged at the first epoch and
    every tenth of the run. ``False`` logs nothing.

    ``on_epoch(epochs_done, model)`` is called before the first epoch (0) and after each one
    (e.g. :class:`oodguard.inspect.AttractorMonitor` every few epochs).
    """
    if corruption not in ("noise", "mask"):
        raise parameter_error("corruption", "'noise' or 'mask'", corruption,
                              owner="train_autoencoder")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = torch.as_tensor(x, dtype=torch.float32)
    model = MLPAutoencoder(data.shape[1], hidden, latent)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    t0 = time.perf_counter()
    drawn = wants_progress(log, progress)
    bar = progress_bar(epochs, "training", log, progress=drawn, unit="epoch")
    every = max(epochs // 10, 1)
    total = 0.0
    if on_epoch is not None:
        on_epoch(0, model)
    for epoch in range(epochs):
        perm = torch.randperm(len(data), generator=gen)
        total = 0.0
        for i in range(0, len(data), batch_size):
            batch = data[perm[i : i + batch_size]]
            if corruption == "noise":
                noisy = (batch + noise * torch.randn(batch.shape, generator=gen)).clamp(0, 1)
            else:
                keep = torch.rand(batch.shape, generator=gen) >= mask_fraction
                noisy = batch * keep
            loss = nn.functional.mse_loss(model(noisy), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        sched.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
        bar.update()
        bar.set_postfix_str(f"loss {total / len(data):.5f}")
        if (not drawn and progress is not False
                and (epoch == 0 or (epoch + 1) % every == 0 or epoch + 1 == epochs)):
            log.info("epoch %d/%d  loss %.5f  (%.1fs)", epoch + 1, epochs, total / len(data),
                     time.perf_counter() - t0)
    bar.close()
    if drawn:
        log.info("trained %d epochs in %.1fs; loss %.5f", epochs, time.perf_counter() - t0,
                 total / len(data))
    return model.eval()
