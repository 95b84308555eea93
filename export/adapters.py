"""Adapters for autoencoders people already have, as :class:`EncoderDecoder` modules.

``export_bundle(model=adapter(...))`` exports them like any encoder/decoder pair:

- :func:`vit_mae` — ``transformers``' ``ViTMAEForPreTraining``: the encoder runs without
  masking and with the patches in their own order (MAE's random shuffle would make the code
  random), its code is the last hidden state ``[N, 1 + L, h]`` (a sequence latent, flattened by
  the exporter), and the decoder maps it back to pixels with the identity ``ids_restore``.
- :func:`pyod_autoencoder` — PyOD's ``AutoEncoder``: its inner ``encoder``/``decoder`` and the
  standardisation PyOD applies outside its torch module, as the graph's preprocessing, so the
  bundle scores raw inputs as PyOD does.

Neither library is imported here: the adapters read the fitted objects they are given.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from oodguard.export.autoencoder import EncoderDecoder
from oodguard.export.model_errors import ModelSplitError
from oodguard.export.preprocess import Standardize

__all__ = ["pyod_autoencoder", "vit_mae"]


class _MAEEncoder(nn.Module):
    """``pixels [N, C, H, W] -> last hidden state [N, 1 + L, h]``: no masking, fixed order."""

    order: torch.Tensor

    def __init__(self, vit: nn.Module, patches: int) -> None:
        super().__init__()
        self.vit = vit
        # noise = 0, 1, …, L−1: argsort keeps every patch in place, so ids_restore is the
        # identity and the code is a function of the image alone.
        self.register_buffer("order", torch.arange(patches, dtype=torch.float32)[None])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        noise = self.order.expand(pixels.shape[0], -1)
        return self.vit(pixel_values=pixels, noise=noise).last_hidden_state


class _MAEDecoder(nn.Module):
    """``hidden [N, 1 + L, h] -> pixels [N, C, H, W]`` through MAE's decoder and unpatchify."""

    ids: torch.Tensor

    def __init__(self, model: nn.Module, patches: int) -> None:
        super().__init__()
        self.decoder: Any = model.decoder
        self.model: list[Any] = [model]  # for unpatchify; a list keeps it out of the module tree
        self.register_buffer("ids", torch.arange(patches)[None])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        ids = self.ids.expand(hidden.shape[0], -1)
        logits = self.decoder(hidden, ids_restore=ids).logits
        return self.model[0].unpatchify(logits)


def vit_mae(model: nn.Module) -> EncoderDecoder:
    """An exportable copy of a ``transformers`` ``ViTMAEForPreTraining``.

    The copy's ``config.mask_ratio`` is 0 and the patch order fixed, so the encoder sees the
    whole image and is deterministic; the decoder reconstructs pixels (normalised per patch if
    the model was trained with ``norm_pix_loss``, as MAE's own loss compares them). The caller's
    model is not modified.

    Raises
    ------
    ModelSplitError
        ``model`` is not a ViT-MAE for pre-training (no ``vit``, ``decoder``, ``unpatchify``).
    """
    config = getattr(model, "config", None)
    if not all(hasattr(model, a) for a in ("vit", "decoder", "unpatchify")) or config is None:
        raise ModelSplitError(
            f"vit_mae() needs a transformers ViTMAEForPreTraining (with .vit, .decoder and "
            f".unpatchify); got {type(model).__name__}"
        )
    m: Any = copy.deepcopy(model).float().cpu().eval()
    m.config.mask_ratio = 0.0
    for mod in m.modules():  # the embeddings may hold their own reference to the config
        cfg = getattr(mod, "config", None)
        if cfg is not None and hasattr(cfg, "mask_ratio"):
            cfg.mask_ratio = 0.0
    patches = (int(config.image_size) // int(config.patch_size)) ** 2
    return EncoderDecoder(_MAEEncoder(m.vit, patches), _MAEDecoder(m, patches),
                          name="transformers.ViTMAEForPreTraining").eval()


def pyod_autoencoder(detector: Any) -> EncoderDecoder:
    """An exportable copy of a fitted PyOD ``AutoEncoder``.

    Its torch module's ``encoder``/``decoder``, behind PyOD's own standardisation
    ``(x − mean) / (std + 1e-8)`` when the detector was fitted with ``preprocessing=True``. The
    bundle then takes raw inputs, as ``detector.decision_function`` does. The caller's detector is
    not modified.

    Raises
    ------
    ModelSplitError
        ``detector`` is not fitted, or its module has no ``encoder``/``decoder``.
    """
    module = getattr(detector, "model", None)
    if not isinstance(module, nn.Module) or not all(
            isinstance(getattr(module, a, None), nn.Module) for a in ("encoder", "decoder")):
        raise ModelSplitError(
            f"pyod_autoencoder() needs a fitted pyod.models.auto_encoder.AutoEncoder (its "
            f".model with .encoder and .decoder); got {type(detector).__name__} with model "
            f"{type(module).__name__} (call detector.fit(X) first)"
        )
    pre = None
    if getattr(detector, "preprocessing", False):
        eps = 1e-8  # pyod.utils.torch_utility.TorchDataset's default
        pre = Standardize(detector.X_mean, detector.X_std + eps)
    m = copy.deepcopy(module).float().cpu().eval()
    return EncoderDecoder(m.encoder, m.decoder, pre, name="pyod.AutoEncoder").eval()
