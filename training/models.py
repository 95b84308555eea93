"""The autoencoders :func:`oodguard.fit` trains, one per input shape, and the latent-size rule.

- :class:`MLPAE` for vectors ``(d,)`` (and any input flattened to one);
- :class:`ConvAE` for images ``(C, H, W)`` (``H`` and ``W`` multiples of 4): two stride-2
  convolutions, a linear bottleneck and the mirror image;
- :class:`Conv1dAE` for sequences ``(C, L)`` (``L`` a multiple of 4), the same in one dimension.

Every model exposes ``encode``/``decode`` (:class:`oodguard.demo.train.EncoderDecoder`), so
``oodguard.export.export_bundle(model=...)`` exports it unchanged. The detection benchmark
(``benchmarks/_detection_models.py``) trains the same :class:`MLPAE` and :class:`ConvAE` on
flattened rows (``flat=True``); ELU activations, as the suite's hand-trained models have.
"""

from __future__ import annotations

import math

from torch import nn

from oodguard.demo.train import EncoderDecoder
from oodguard.errors import parameter_error

__all__ = ["ARCHITECTURES", "Conv1dAE", "ConvAE", "MLPAE", "build_autoencoder", "choose_arch",
           "latent_size"]

ARCHITECTURES = ("mlp", "conv2d", "conv1d")


def latent_size(dim: int) -> int:
    """The bottleneck for inputs of ``dim`` values: ``round(√dim)`` clipped to ``[2, 64]``.

    It reproduces the sizes the detection suite's hand-trained models use (64 ▶ 8, 256 ▶ 16,
    30 ▶ 5 where the suite has 4, 13 ▶ 4) and keeps the bottleneck small, which the paper
    names as one of what makes the latent map contract; 784 ▶ 28."""
    return int(min(64, max(2, round(math.sqrt(dim)))))


def _output(mods: list[nn.Module], output: str) -> list[nn.Module]:
    if output == "sigmoid":
        mods.append(nn.Sigmoid())
    return mods


class MLPAE(EncoderDecoder):
    """``dim ▶ hidden ▶ hidden/2 ▶ latent ▶ hidden/2 ▶ hidden ▶ dim`` (ELU); ``output``
    ``"sigmoid"`` for inputs in [0, 1], ``"linear"`` otherwise. ``shape``: the sample shape
    when it is not ``(dim,)`` (flattened first, reshaped back last)."""

    def __init__(self, dim: int, latent: int, hidden: int, output: str,
                 shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        h2 = max(hidden // 2, latent)
        enc: list[nn.Module] = [nn.Linear(dim, hidden), nn.ELU(), nn.Linear(hidden, h2),
                                nn.ELU(), nn.Linear(h2, latent)]
        dec = _output([nn.Linear(latent, h2), nn.ELU(), nn.Linear(h2, hidden), nn.ELU(),
                       nn.Linear(hidden, dim)], output)
        if shape is not None and len(shape) > 1:
            enc.insert(0, nn.Flatten())
            dec.append(nn.Unflatten(1, shape))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)


class ConvAE(EncoderDecoder):
    """A small conv autoencoder over images of ``shape`` ``(H, W)`` (one channel) or
    ``(C, H, W)``, ``H`` and ``W`` multiples of 4: two stride-2 convolutions (16, 32 channels),
    a linear bottleneck, and the mirror image. ``flat=True`` takes and returns flattened rows
    (the detection benchmark's convention); otherwise ``(N, C, H, W)``."""

    def __init__(self, shape: tuple[int, ...], latent: int, output: str, *,
                 flat: bool = True) -> None:
        super().__init__()
        c, h, w = (1, *shape) if len(shape) == 2 else shape
        if h % 4 or w % 4:
            raise parameter_error("shape", "(C, H, W) with H and W multiples of 4", shape,
                                  owner="ConvAE")
        self.h, self.w = h, w
        flat_size = 32 * (h // 4) * (w // 4)
        self.encoder = nn.Sequential(
            nn.Unflatten(1, (c, h, w)) if flat else nn.Identity(),
            nn.Conv2d(c, 16, 3, stride=2, padding=1), nn.ELU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ELU(),
            nn.Flatten(), nn.Linear(flat_size, latent),
        )
        self.decoder = nn.Sequential(*_output([
            nn.Linear(latent, flat_size), nn.ELU(), nn.Unflatten(1, (32, h // 4, w // 4)),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.ELU(),
            nn.ConvTranspose2d(16, c, 4, stride=2, padding=1),
            nn.Flatten() if flat else nn.Identity(),
        ], output))


class Conv1dAE(EncoderDecoder):
    """:class:`ConvAE` in one dimension, over sequences ``(C, L)`` with ``L`` a multiple of 4,
    given as ``(N, C, L)``."""

    def __init__(self, shape: tuple[int, int], latent: int, output: str) -> None:
        super().__init__()
        c, length = shape
        if length % 4:
            raise parameter_error("shape", "(C, L) with L a multiple of 4", shape,
                                  owner="Conv1dAE")
        flat_size = 32 * (length // 4)
        self.encoder = nn.Sequential(
            nn.Conv1d(c, 16, 5, stride=2, padding=2), nn.ELU(),
            nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.ELU(),
            nn.Flatten(), nn.Linear(flat_size, latent),
        )
        self.decoder = nn.Sequential(*_output([
            nn.Linear(latent, flat_size), nn.ELU(), nn.Unflatten(1, (32, length // 4)),
            nn.ConvTranspose1d(32, 16, 4, stride=2, padding=1), nn.ELU(),
            nn.ConvTranspose1d(16, c, 4, stride=2, padding=1),
        ], output))


def choose_arch(shape: tuple[int, ...]) -> str:
    """``"mlp"`` for vectors ``(d,)``; ``"conv1d"`` for sequences ``(C, L)`` with ``L`` a
    multiple of 4 and at least 8; ``"conv2d"`` for images ``(C, H, W)`` with ``H`` and ``W``
    multiples of 4 and at least 8; ``"mlp"`` over the flattened input otherwise (a grayscale
    image ``(H, W)`` is a sequence of ``H`` channels unless given as ``(1, H, W)``)."""
    if len(shape) == 2 and shape[1] % 4 == 0 and shape[1] >= 8:
        return "conv1d"
    if len(shape) == 3 and all(s % 4 == 0 and s >= 8 for s in shape[1:]):
        return "conv2d"
    return "mlp"


def build_autoencoder(shape: tuple[int, ...], *, arch: str, latent: int, output: str,
                      hidden: int | None = None) -> EncoderDecoder:
    """An untrained autoencoder for samples of ``shape`` (call ``torch.manual_seed`` first
    for reproducible weights). ``hidden`` (MLP only): default ``max(64, 2·latent)``, the
    suite's rule."""
    if arch not in ARCHITECTURES:
        raise parameter_error("arch", f"one of {ARCHITECTURES}", arch, owner="oodguard.fit")
    if output not in ("sigmoid", "linear"):
        raise parameter_error("output", "'sigmoid' or 'linear'", output, owner="oodguard.fit")
    if arch == "conv2d":
        if len(shape) != 3:
            raise parameter_error("arch", "'conv2d' only for images shaped (C, H, W)",
                                  arch, owner="oodguard.fit")
        return ConvAE(shape, latent, output, flat=False)
    if arch == "conv1d":
        if len(shape) != 2:
            raise parameter_error("arch", "'conv1d' only for sequences shaped (C, L)", arch,
                                  owner="oodguard.fit")
        return Conv1dAE((shape[0], shape[1]), latent, output)
    dim = math.prod(shape)
    return MLPAE(dim, latent, hidden or max(64, 2 * latent), output, shape)
