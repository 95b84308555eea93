"""Adapting a user's autoencoder to the flat encoder/decoder pair the exporter needs.

The exporter works with two modules: ``encoder(x [N, *input_shape]) -> z [N, d]`` and
``decoder(z [N, d]) -> x̂ [N, *input_shape]``, both float32, on the CPU, in eval mode
(:func:`prepare_autoencoder` returns them as :class:`Autoencoder`). Users' models rarely look like
that, so this module reads:

- ``model=`` with ``encode``/``decode`` methods, or ``encoder``/``decoder`` submodules (PyOD,
  most ``nn.Sequential`` pairs), or any ``nn.Sequential`` split at a named layer (``split=``);
- encoders that return a tuple, a dict (``ModelOutput``) or a ``torch.distributions``
  distribution: ``latent=`` says which part is the code (``"mean"``, an index, a key or a
  callable); a distribution gives its mean;
- latents of any shape (``[N, 8, 4, 4]``, ``[N, L, h]``): flattened to ``[N, d]`` for the
  dynamics and distances and reshaped back for the decoder inside the graph;
- float64, float16 and bfloat16 models: exported as float32 copies, with the source dtype kept
  so that the exporter measures the graph against the model as given.

Modules left in training mode are switched to eval *in the copy* with a warning that names them:
the bundle serves eval-mode semantics (BatchNorm running statistics, no dropout) whatever the
caller's flag, and refusing would only make every user add ``.eval()``; the warning tells the
user that their model as they hold it behaves differently from the bundle.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from oodguard.export.model_errors import (
    LatentOutputError,
    ModelSplitError,
    UnsupportedDtypeError,
)

__all__ = [
    "Autoencoder",
    "BoundMethod",
    "EncoderDecoder",
    "Latent",
    "as_encoder_decoder",
    "describe_output",
    "resolve_modules",
    "select_latent",
    "select_reconstruction",
]

log = logging.getLogger(__name__)

Latent = int | str | Callable[[Any], torch.Tensor] | None
"""Which part of the encoder's output is the code: ``None`` (a tensor, or a distribution's mean),
``"mean"`` (a distribution's mean, the first of a tuple such as ``(mu, logvar)``, or the
``mean``/``mu``/``loc``/``z_mean`` entry of a dict), an index into a tuple, a dict key, or a
callable ``output -> tensor``."""

_MEAN_KEYS = ("mean", "mu", "loc", "z_mean", "latent_mean")
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class EncoderDecoder(nn.Module):
    """An encoder and a decoder as one module (``model=``), with an optional ``preprocess``
    module applied to raw inputs before the encoder (see :mod:`oodguard.export.preprocess`).
    The adapters (:mod:`oodguard.export.adapters`) return one."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module,
                 preprocess: nn.Module | None = None, *, name: str = "") -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.preprocess = preprocess
        self.name = name

    def forward(self, x: torch.Tensor) -> Any:
        return self.decoder(self.encoder(x))


def describe_output(out: Any) -> str:
    """A short description of a module's output: ``Tensor[2, 8]``, ``tuple(Tensor[2, 8], …)``,
    ``dict{'mu': Tensor[2, 8]}``, ``Normal(batch [2, 8])``."""
    if isinstance(out, torch.Tensor):
        return f"Tensor{list(out.shape)} {str(out.dtype).removeprefix('torch.')}"
    if isinstance(out, torch.distributions.Distribution):
        return f"{type(out).__name__}(batch {list(out.batch_shape)})"
    if isinstance(out, Mapping):
        inner = ", ".join(f"{k!r}: {describe_output(v)}" for k, v in list(out.items())[:8])
        return f"{type(out).__name__}{{{inner}}}"
    if isinstance(out, (tuple, list)):
        inner = ", ".join(describe_output(v) for v in out[:8])
        return f"{type(out).__name__}({inner})"
    return type(out).__name__


def _mean_of(out: Any) -> Any:
    if isinstance(out, torch.distributions.Distribution):
        return out.mean
    return out


def select_latent(out: Any, latent: Latent) -> torch.Tensor:
    """The code inside an encoder's output (see :data:`Latent`).

    Raises
    ------
    LatentOutputError
        The output is not a tensor and ``latent`` does not say which part is the code; the
        message shows the output and what to pass.
    """
    got = describe_output(out)
    if callable(latent) and not isinstance(latent, str):
        z = _mean_of(latent(out))
    elif isinstance(out, torch.Tensor | torch.distributions.Distribution):
        if latent not in (None, "mean"):
            raise LatentOutputError(
                f"latent={latent!r} but the encoder returned {got}; leave latent=None"
            )
        z = _mean_of(out)
    elif isinstance(out, Mapping):
        key = latent
        if latent == "mean":
            key = next((k for k in _MEAN_KEYS if k in out), None)
        if not isinstance(key, str) or key not in out:
            raise LatentOutputError(
                f"the encoder returned {got}; pass latent='<key>' naming the code (for a VAE "
                f"its mean; latent='mean' finds one of {list(_MEAN_KEYS)}) or a callable "
                f"latent=lambda out: ... ; got latent={latent!r}"
            )
        z = _mean_of(out[key])
    elif isinstance(out, (tuple, list)):
        index = 0 if latent == "mean" else latent
        if not isinstance(index, int) or not -len(out) <= index < len(out):
            raise LatentOutputError(
                f"the encoder returned {got}; pass latent=<index> naming the code, e.g. "
                f"latent=0 (or latent='mean') for a VAE's (mu, logvar), or a callable "
                f"latent=lambda out: ... ; got latent={latent!r}"
            )
        z = _mean_of(out[index])
    else:
        raise LatentOutputError(
            f"the encoder returned {got}, not a tensor; pass latent=lambda out: <the code "
            "tensor> (for a VAE, its mean)"
        )
    if not isinstance(z, torch.Tensor) or z.ndim < 2 or not z.is_floating_point():
        raise LatentOutputError(
            f"the code selected from the encoder's output {got} is {describe_output(z)}; it "
            "must be a floating-point tensor with a batch axis first (N, ...)"
        )
    return z


def select_reconstruction(out: Any) -> torch.Tensor:
    """The decoder's reconstruction: a tensor, or a distribution's mean.

    Raises
    ------
    LatentOutputError
        Any other output; the message says to wrap the decoder.
    """
    x_hat = _mean_of(out)
    if not isinstance(x_hat, torch.Tensor):
        raise LatentOutputError(
            f"the decoder returned {describe_output(out)}; it must return the reconstruction "
            "as one tensor shaped like the input (wrap it: a module whose forward returns "
            "e.g. out.logits or out[0])"
        )
    return x_hat


class BoundMethod(nn.Module):
    """Exposes ``model.<method>`` as a module's ``forward`` (for models with encode/decode)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self.model, self.method)(x)


def _as_given(wrapper: nn.Module, model: nn.Module) -> nn.Module:
    """A wrapper we made carries the model's own mode (set on it alone: ``.eval()`` would
    switch the caller's model too), so the training-mode warning names only the user's
    modules."""
    wrapper.training = model.training
    return wrapper


def _split_sequential(model: nn.Module, split: str) -> tuple[nn.Module, nn.Module]:
    names = [n for n, _ in model.named_children()]
    if not isinstance(model, nn.Sequential):
        raise ModelSplitError(
            f"split={split!r} needs an nn.Sequential model; {type(model).__name__} is not one. "
            "Pass encoder= and decoder= modules instead"
        )
    if split not in names or split == names[-1]:
        raise ModelSplitError(
            f"split={split!r} must name a layer of the model other than the last (the encoder "
            f"ends with it); the model's layers are {names}"
        )
    cut = names.index(split) + 1
    children = list(model.children())
    return nn.Sequential(*children[:cut]), nn.Sequential(*children[cut:])


def resolve_modules(
    *, model: nn.Module | None, encoder: nn.Module | None, decoder: nn.Module | None,
    split: str | None = None,
) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """``(encoder, decoder, preprocess)`` as the caller gave them (not copied).

    ``model=`` is read, in this order, as: an ``nn.Sequential`` split after the layer named
    ``split``; a model with ``encode``/``decode`` methods; a model with ``encoder``/``decoder``
    submodules (and an optional ``preprocess`` submodule, as :class:`EncoderDecoder` has).
    """
    if model is None:
        if split is not None:
            raise ValueError("split= needs model= (an nn.Sequential)")
        if encoder is None or decoder is None:
            raise ValueError("pass both encoder= and decoder= (or model= with encode/decode "
                             "methods or encoder/decoder submodules)")
        return encoder, decoder, None
    if encoder is not None or decoder is not None:
        raise ValueError("pass either model= or encoder= and decoder=, not both")
    if split is not None:
        enc, dec = _split_sequential(model, split)
        return _as_given(enc, model), _as_given(dec, model), None
    if callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None)):
        return (_as_given(BoundMethod(model, "encode"), model),
                _as_given(BoundMethod(model, "decode"), model), None)
    enc_m, dec_m = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if isinstance(enc_m, nn.Module) and isinstance(dec_m, nn.Module):
        pre = getattr(model, "preprocess", None)
        return enc_m, dec_m, pre if isinstance(pre, nn.Module) else None
    raise ModelSplitError(
        f"model {type(model).__name__} has no encode/decode methods and no encoder/decoder "
        "submodules; pass encoder= and decoder= modules, split='<layer name>' for an "
        "nn.Sequential, or an adapter from oodguard.export.adapters (transformers ViT-MAE, "
        "PyOD AutoEncoder)"
    )


def source_dtype(*modules: nn.Module) -> torch.dtype:
    """The floating dtype of the modules' parameters (float32 when they have none).

    Raises
    ------
    UnsupportedDtypeError
        Integer, complex or quantized parameters, or floating parameters of several dtypes.
    """
    seen: dict[torch.dtype, str] = {}
    for m in modules:
        for name, p in m.named_parameters():
            seen.setdefault(p.dtype, name)
    bad = {d: n for d, n in seen.items() if d not in _FLOATS}
    if bad:
        raise UnsupportedDtypeError(
            f"parameters of dtype {sorted(map(str, bad))} (e.g. {next(iter(bad.values()))!r}); "
            "the exporter runs float32, float64, float16 or bfloat16 models. Dequantize the "
            "model (or convert it with .float()) before exporting"
        )
    if len(seen) > 1:
        raise UnsupportedDtypeError(
            f"parameters of several dtypes {sorted(map(str, seen))}; convert the model to one "
            "dtype (model.float(), .double(), .half()) before exporting"
        )
    return next(iter(seen), torch.float32)


def frozen_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy on the CPU, in ``dtype``, eval mode, without gradients."""
    out = copy.deepcopy(module).to(device="cpu", dtype=dtype).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
                   nn.modules.instancenorm._InstanceNorm)


def warn_training_mode(*modules: nn.Module) -> list[str]:
    """Layers in training mode whose output depends on the mode (BatchNorm, Dropout,
    InstanceNorm), as ``"name (Type)"``; a warning names them. The copies are exported in eval
    mode either way (a model in training mode without such layers is only logged at INFO)."""
    found: list[str] = []
    any_training = False
    seen: set[int] = set()
    for k, root in enumerate(modules):
        for name, m in root.named_modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            if m.training and not isinstance(m, BoundMethod):
                any_training = True
                if isinstance(m, _MODE_DEPENDENT):
                    found.append(f"{('encoder', 'decoder')[k % 2]}.{name} ({type(m).__name__})")
    if found:
        log.warning(
            "the model is in training mode: %s behave differently in eval mode, and the bundle "
            "is exported from an eval-mode copy (BatchNorm running statistics, no dropout), so "
            "it will not match the model as you hold it; call model.eval() before exporting to "
            "silence this", ", ".join(found[:8]) + (" …" if len(found) > 8 else ""))
    elif any_training:
        log.info("the model is in training mode; it has no mode-dependent layers and is "
                 "exported from an eval-mode copy")
    return found


@dataclass(frozen=True, eq=False)
class Autoencoder:
    """The flat encoder/decoder pair the exporter works with.

    Attributes
    ----------
    encoder : nn.Module
        ``x [N, *input_shape] (model space, after preprocess) -> z [N, d]`` float32.
    decoder : nn.Module
        ``z [N, d] -> x̂ [N, *input_shape]`` float32.
    preprocess : nn.Module or None
        ``raw x -> model-space x``, applied first inside the graph.
    latent_shape : tuple of int
        The code's shape without the batch axis, as the encoder returns it (``(d,)`` when flat).
    source_dtype : torch.dtype
        The dtype of the model as given; ``source`` holds an eval copy in it when it is not
        float32 (the exporter measures the float32 graph against it).
    """

    encoder: nn.Module
    decoder: nn.Module
    preprocess: nn.Module | None
    latent_shape: tuple[int, ...]
    source_dtype: torch.dtype
    source: tuple[nn.Module, nn.Module] | None = None
    latent: str = "tensor"
    training_modules: Sequence[str] = field(default_factory=tuple)

    def record(self) -> dict[str, Any]:
        """What the manifest records (``dynamics["model"]``)."""
        return {
            "latent_shape": list(self.latent_shape),
            "latent": self.latent,
            "source_dtype": str(self.source_dtype).removeprefix("torch."),
            "preprocess": getattr(self.preprocess, "record", lambda: None)()
            if self.preprocess is not None else None,
            "exported_from_training_mode": list(self.training_modules),
        }


def as_encoder_decoder(
    *,
    model: nn.Module | None = None,
    encoder: nn.Module | None = None,
    decoder: nn.Module | None = None,
) -> tuple[nn.Module, nn.Module]:
    """Frozen, float32, CPU, eval-mode copies of the encoder and decoder, as given.

    Pass either ``encoder`` and ``decoder``, or one ``model`` with ``encode``/``decode`` methods
    or ``encoder``/``decoder`` submodules. The caller's modules are not modified (they are
    deep-copied). :func:`oodguard.export.probe.prepare_autoencoder` also flattens latents and
    reads multi-output encoders.
    """
    enc, dec, _ = resolve_modules(model=model, encoder=encoder, decoder=decoder)
    if isinstance(enc, BoundMethod) and isinstance(dec, BoundMethod):
        shared = frozen_copy(enc.model, torch.float32)
        return BoundMethod(shared, "encode"), BoundMethod(shared, "decode")
    return frozen_copy(enc, torch.float32), frozen_copy(dec, torch.float32)

