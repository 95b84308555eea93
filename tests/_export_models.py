"""Tiny models of the families users bring to the exporter (issue 11's table), random-init.

Shared by the ``tests/test_export_*.py`` files and ``benchmarks/export.py`` (with larger sizes
there): conv, spatial latent, VAEs, sequence models, maps that do not contract, swapped and
non-deterministic modules.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def images(n: int, channels: int = 1, side: int = 28, seed: int = 0) -> np.ndarray:
    """Smooth random images in [0, 1], ``[n, channels, side, side]`` float32."""
    rng = np.random.default_rng(seed)
    g = np.linspace(0, 1, side, dtype=np.float32)
    fx, fy, ph = (rng.uniform(1, 4, (n, channels, 1, 1)).astype(np.float32) for _ in range(3))
    img = 0.5 + 0.5 * np.sin(2 * np.pi * (fx * g[None, None, :, None] + fy * g + ph))
    return np.ascontiguousarray(img, dtype=np.float32)


def sines(n: int, length: int = 128, seed: int = 0) -> np.ndarray:
    """Noisy sine waves ``[n, 1, length]`` float32."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length, dtype=np.float32)
    f = rng.uniform(2, 5, (n, 1, 1))
    p = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    return (np.sin(2 * np.pi * f * t + p) + 0.05 * rng.standard_normal((n, 1, length))).astype(
        np.float32)


def conv_ae(latent: int = 32, side: int = 28, width: int = 8) -> tuple[nn.Module, nn.Module]:
    """Conv AE for ``[N, 1, side, side]`` (BatchNorm, LeakyReLU/GELU), flat latent."""
    s = side // 4
    enc = nn.Sequential(
        nn.Conv2d(1, width, 3, 2, 1), nn.BatchNorm2d(width), nn.LeakyReLU(0.1),
        nn.Conv2d(width, 2 * width, 3, 2, 1), nn.GELU(), nn.Flatten(),
        nn.Linear(2 * width * s * s, latent))
    dec = nn.Sequential(
        nn.Linear(latent, 2 * width * s * s), nn.GELU(), nn.Unflatten(1, (2 * width, s, s)),
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.LeakyReLU(0.1),
        nn.ConvTranspose2d(width, 1, 4, 2, 1), nn.Sigmoid())
    return enc, dec


def spatial_ae(channels: int = 3, side: int = 16) -> tuple[nn.Module, nn.Module]:
    """A conv AE whose latent is spatial ``[N, 8, side/4, side/4]`` (not flattened)."""
    enc = nn.Sequential(nn.Conv2d(channels, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1),
                        nn.Tanh())
    dec = nn.Sequential(nn.ConvTranspose2d(8, 8, 4, 2, 1), nn.ReLU(),
                        nn.ConvTranspose2d(8, channels, 4, 2, 1), nn.Sigmoid())
    return enc, dec


class VAE(nn.Module):
    """``encode(x) -> (mu, logvar)`` (or a ``Normal`` with ``distribution=True``); ``decode``.
    ``sample=True`` makes ``encode`` return a sample ``mu + sigma·eps`` even in eval mode."""

    def __init__(self, dim: int = 12, latent: int = 3, *, distribution: bool = False,
                 sample: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, 16), nn.Tanh())
        self.mu = nn.Linear(16, latent)
        self.logvar = nn.Linear(16, latent)
        self.dec = nn.Sequential(nn.Linear(latent, 16), nn.Tanh(), nn.Linear(16, dim))
        self.distribution, self.sample = distribution, sample

    def encode(self, x: torch.Tensor) -> Any:
        h = self.body(x)
        mu, logvar = self.mu(h), self.logvar(h)
        if self.sample:
            return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        if self.distribution:
            return torch.distributions.Normal(mu, torch.exp(0.5 * logvar), validate_args=False)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)


class DropoutEncoder(nn.Module):
    """Functional dropout that stays on in eval mode."""

    def __init__(self, dim: int = 12, latent: int = 3) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(F.dropout(x, 0.5, training=True))


def mlp_ae(dim: int = 12, latent: int = 3) -> tuple[nn.Module, nn.Module]:
    enc = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, latent))
    dec = nn.Sequential(nn.Linear(latent, 16), nn.Tanh(), nn.Linear(16, dim))
    return enc, dec


def tabular(n: int, dim: int = 12, seed: int = 0) -> np.ndarray:
    """Correlated Gaussian rows ``[n, dim]`` with features on very different scales."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 3)) @ rng.standard_normal((3, dim))
    scale = np.logspace(-1, 2, dim)
    return ((base + 0.1 * rng.standard_normal((n, dim))) * scale + 5.0).astype(np.float32)


class LastState(nn.Module):
    """An LSTM returning ``(output, h)`` as a GRU does (``h`` of its ``(h, c)`` state)."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, (h, _) = self.lstm(x)
        return y, h


def _rnn(cell: str, inp: int, hidden: int) -> nn.Module:
    if cell == "lstm":
        return LastState(nn.LSTM(inp, hidden, batch_first=True))
    return nn.GRU(inp, hidden, batch_first=True)


class GRUEncoder(nn.Module):
    """A GRU (or ``cell="lstm"``) encoder ``[N, 1, L] -> [N, latent]``."""

    def __init__(self, hidden: int = 16, latent: int = 8, cell: str = "gru") -> None:
        super().__init__()
        self.gru = _rnn(cell, 1, hidden)
        self.out = nn.Linear(hidden, latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(x.transpose(1, 2))
        return self.out(h[-1])


class GRUDecoder(nn.Module):
    """A GRU (or ``cell="lstm"``) decoder ``[N, latent] -> [N, 1, length]``."""

    def __init__(self, length: int = 128, hidden: int = 16, latent: int = 8,
                 cell: str = "gru") -> None:
        super().__init__()
        self.length = length
        self.inp = nn.Linear(latent, hidden)
        self.gru = _rnn(cell, hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.inp(z)[:, None, :].expand(-1, self.length, -1)
        y, _ = self.gru(h)
        return self.out(y).transpose(1, 2)


def conv1d_ae(length: int = 128) -> tuple[nn.Module, nn.Module]:
    """A Conv1d AE with a sequence latent ``[N, 4, length/4]``."""
    enc = nn.Sequential(nn.Conv1d(1, 8, 5, 2, 2), nn.ReLU(), nn.Conv1d(8, 4, 5, 2, 2))
    dec = nn.Sequential(nn.ConvTranspose1d(4, 8, 4, 2, 1), nn.ReLU(),
                        nn.ConvTranspose1d(8, 1, 4, 2, 1))
    return enc, dec


class Rotation(nn.Module):
    """A decoder that rotates a 2-D code by ``angle`` (norm-preserving: never converges)."""

    def __init__(self, angle: float = 0.3) -> None:
        super().__init__()
        c, s = float(np.cos(angle)), float(np.sin(angle))
        self.register_buffer("r", torch.tensor([[c, -s], [s, c]]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.r


def roundtrip(path: Any, x_train: np.ndarray, x_val: np.ndarray, x_test: np.ndarray,
              **export_kw: Any) -> tuple[Any, np.ndarray]:
    """Export (T = 4, few noise codes), calibrate on ``x_val``, load a Guard and score
    ``x_test`` at batch 256 and row by row (batch 1); the two must agree exactly. Returns the
    export report and the scores."""
    from oodguard import Guard
    from oodguard.calibration import calibrate
    from oodguard.export import export_bundle

    kw = {"steps": 4, "n_noise": 16} | export_kw
    report = export_bundle(path / "raw", x_train=x_train, **kw)
    calibrate(report.path, x_val, alpha=0.1, out=path / "cal")
    guard = Guard.load(path / "cal")
    big = np.concatenate([guard.check(x_test[i : i + 256]).score
                          for i in range(0, len(x_test), 256)])
    one = np.concatenate([guard.check(x_test[i : i + 1]).score for i in range(8)])
    assert np.isfinite(big).all()
    np.testing.assert_array_equal(one, big[:8])
    return report, big
