"""Adapting a user's autoencoder to the encoder/decoder pair the exporter needs."""

from __future__ import annotations

import copy

import torch
from torch import nn

from oodguard.errors import ExportError

__all__ = ["as_encoder_decoder"]


class _Method(nn.Module):
    """Exposes ``model.<method>`` as a module's ``forward`` (for models with encode/decode)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


def as_encoder_decoder(
    *,
    model: nn.Module | None = None,
    encoder: nn.Module | None = None,
    decoder: nn.Module | None = None,
) -> tuple[nn.Module, nn.Module]:
    """Frozen, float32, CPU, eval-mode copies of the encoder and decoder.

    Pass either ``encoder`` and ``decoder``, or one ``model`` with ``encode`` and ``decode``
    methods. The caller's modules are not modified (they are deep-copied).
    """
    if model is not None:
        if encoder is not None or decoder is not None:
            raise ValueError("pass either model= or encoder= and decoder=, not both")
        methods = (getattr(model, "encode", None), getattr(model, "decode", None))
        if not all(callable(m) for m in methods):
            raise ExportError(
                f"model {type(model).__name__} has no encode/decode methods; pass "
                "encoder= and decoder= modules instead"
            )
        shared = copy.deepcopy(model).float().cpu().eval()
        enc: nn.Module = _Method(shared, "encode")
        dec: nn.Module = _Method(shared, "decode")
    else:
        if encoder is None or decoder is None:
            raise ValueError("pass both encoder= and decoder= (or model= with encode/decode)")
        enc = copy.deepcopy(encoder).float().cpu().eval()
        dec = copy.deepcopy(decoder).float().cpu().eval()
    for module in (enc, dec):
        for p in module.parameters():
            p.requires_grad_(False)
    return enc, dec
