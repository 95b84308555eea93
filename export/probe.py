"""Probing a user's autoencoder before export: every mistake named, every latent made flat.

:func:`prepare_autoencoder` resolves the modules (:mod:`oodguard.export.autoencoder`), runs them
on a few training inputs and raises a named :class:`ExportError` (see
:mod:`oodguard.export.model_errors`) for what would otherwise surface as a raw torch error deep
inside tracing: encoder and decoder swapped or not composable, a reconstruction shaped unlike the
input, an encoder output without a stated code, and a model that is not deterministic (run twice
on the same input). It returns the flat pair the exporter works with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from oodguard.export.autoencoder import (
    Autoencoder,
    BoundMethod,
    Latent,
    describe_output,
    frozen_copy,
    resolve_modules,
    select_latent,
    select_reconstruction,
    source_dtype,
    warn_training_mode,
)
from oodguard.export.model_errors import (
    NotComposableError,
    NotDeterministicError,
    ReconstructionShapeError,
    UnsupportedDtypeError,
)
from oodguard.export.preprocess import as_preprocess

__all__ = ["prepare_autoencoder", "to_model_space"]

PROBE_ROWS = 4


class _FlatEncoder(nn.Module):
    """``x -> z [N, d]``: the selected code, flattened, in float32."""

    def __init__(self, module: nn.Module, latent: Latent, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.latent = latent
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        z = select_latent(self.module(x), self.latent)
        return z.reshape(z.shape[0], -1).float()


class _ShapedDecoder(nn.Module):
    """``z [N, d] -> x̂``: the code reshaped to the encoder's latent shape, decoded, float32."""

    def __init__(self, module: nn.Module, latent_shape: tuple[int, ...],
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.latent_shape = latent_shape
        self.dtype = dtype

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.reshape(z.shape[0], *self.latent_shape)
        if self.dtype != torch.float32:
            z = z.to(self.dtype)
        return select_reconstruction(self.module(z)).float()


def _copies(enc: nn.Module, dec: nn.Module, dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    """Frozen copies; a model's ``encode``/``decode`` keep sharing one copy of the model."""
    if isinstance(enc, BoundMethod) and isinstance(dec, BoundMethod) and enc.model is dec.model:
        shared = frozen_copy(enc.model, dtype)
        return BoundMethod(shared, enc.method), BoundMethod(shared, dec.method)
    both = frozen_copy(nn.ModuleList([enc, dec]), dtype)  # one copy keeps shared weights shared
    return both[0], both[1]


def to_model_space(pre: nn.Module | None, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    """``pre(x)`` as float32 numpy (``x`` itself without preprocessing)."""
    if pre is None:
        return x
    with torch.inference_mode():
        parts = [pre(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _call(module: nn.Module, x: torch.Tensor) -> tuple[Any, Exception | None]:
    try:
        with torch.inference_mode():
            return module(x), None
    except Exception as err:  # the user's module: any error is reported, named, below
        return None, err


def _probe(enc: nn.Module, dec: nn.Module, x: torch.Tensor,
           latent: Latent) -> tuple[torch.Tensor, Any, Any, torch.Tensor]:
    """``(z, encoder output, decoder output, x̂)`` on ``x``, or a named error."""
    shape = tuple(x.shape)
    out, err = _call(enc, x)
    if err is not None:
        swapped = _call(dec, x)[1] is None
        hint = ("the decoder accepts x: encoder= and decoder= look swapped" if swapped else
                "the encoder must accept x shaped like x_train (after preprocess)")
        raise NotComposableError(
            f"encoder(x) failed on x of shape {shape} ({type(err).__name__}: {err}); {hint}"
        ) from err
    z = select_latent(out, latent)
    if z.shape[0] != shape[0]:
        raise NotComposableError(
            f"the encoder's code {describe_output(z)} does not keep the batch axis of x "
            f"{shape}; the code must be (N, ...)"
        )
    dec_out, err = _call(dec, z)
    if err is not None:
        hint = ""
        if tuple(z.shape) == shape:
            hint = " The encoder returns x's own shape: encoder= and decoder= may be swapped."
        raise NotComposableError(
            f"decoder(encoder(x)) failed: the encoder returned {describe_output(out)} and the "
            f"decoder does not accept its code {describe_output(z)} ({type(err).__name__}: "
            f"{err}).{hint} Pass latent= if the code is another part of the encoder's output"
        ) from err
    x_hat = select_reconstruction(dec_out)
    if tuple(x_hat.shape) != shape:
        hint = ""
        if z[0].numel() > x[0].numel():
            hint = (" The code is larger than the input: encoder= and decoder= may be "
                    "swapped.")
        raise ReconstructionShapeError(
            f"decoder(encoder(x)) has shape {tuple(x_hat.shape)} but x has {shape}; the "
            f"decoder must reconstruct the input's shape.{hint}"
        )
    return z, out, dec_out, x_hat


def _check_deterministic(enc: nn.Module, dec: nn.Module, x: torch.Tensor, z: torch.Tensor,
                         x_hat: torch.Tensor, latent: Latent) -> None:
    """Run both modules a second time on the same inputs; any difference is refused."""
    z2 = select_latent(_call(enc, x)[0], latent)
    x_hat2 = select_reconstruction(_call(dec, z)[0])
    for name, a, b in (("encoder", z, z2), ("decoder", x_hat, x_hat2)):
        diff = float((a.double() - b.double()).abs().max())
        scale = float(a.double().abs().max()) + 1e-30
        if not diff <= 1e-6 * scale:
            raise NotDeterministicError(
                f"the {name} is not deterministic: two calls on the same input differ by up "
                f"to {diff:.3g} (|values| up to {scale:.3g}) in eval mode. A sampling VAE "
                "(z = mu + sigma * eps), functional dropout (F.dropout(..., training=True)) "
                "or random masking makes scores random; return the mean (latent='mean') and "
                "disable sampling/dropout in eval mode"
            )


def prepare_autoencoder(
    *,
    x_train: np.ndarray,
    model: nn.Module | None = None,
    encoder: nn.Module | None = None,
    decoder: nn.Module | None = None,
    latent: Latent = None,
    split: str | None = None,
    preprocess: Any = None,
) -> tuple[Autoencoder, np.ndarray]:
    """The flat, checked encoder/decoder pair and ``x_train`` in model space (preprocessed).

    Parameters
    ----------
    x_train : ndarray of float32, shape (N, *input_shape)
        Raw training inputs (preprocessing, when given, is applied here and in the graph).
    model, encoder, decoder, split : see :func:`oodguard.export.autoencoder.resolve_modules`
    latent : see :data:`oodguard.export.autoencoder.Latent`
    preprocess : None, nn.Module, (mean, std) or a fitted StandardScaler
        See :func:`oodguard.export.preprocess.as_preprocess`; a ``preprocess`` submodule of
        ``model`` (the adapters set one) is used when this is None.

    Raises
    ------
    ExportError
        A named subclass (:mod:`oodguard.export.model_errors`) for each mistake.
    """
    enc0, dec0, pre0 = resolve_modules(model=model, encoder=encoder, decoder=decoder,
                                       split=split)
    if preprocess is not None and pre0 is not None:
        raise ValueError("the model carries its own preprocess module; do not pass preprocess=")
    if not np.issubdtype(x_train.dtype, np.floating) and not np.issubdtype(x_train.dtype,
                                                                           np.integer):
        raise UnsupportedDtypeError(f"x_train has dtype {x_train.dtype}; pass real numbers")
    dtype = source_dtype(enc0, dec0)
    training = warn_training_mode(enc0, dec0)
    enc32, dec32 = _copies(enc0, dec0, torch.float32)
    pre = as_preprocess(preprocess if preprocess is not None else pre0)
    x = np.ascontiguousarray(x_train, dtype=np.float32)
    x_model = to_model_space(pre, x)
    probe = torch.from_numpy(x_model[:PROBE_ROWS])
    z, out, dec_out, x_hat = _probe(enc32, dec32, probe, latent)
    _check_deterministic(enc32, dec32, probe, z, x_hat, latent)
    latent_shape = tuple(int(s) for s in z.shape[1:])
    plain = isinstance(out, torch.Tensor) and latent is None and z.ndim == 2
    enc: nn.Module = enc32 if plain else _FlatEncoder(enc32, latent, torch.float32)
    dec: nn.Module = (dec32 if plain and isinstance(dec_out, torch.Tensor)
                      else _ShapedDecoder(dec32, latent_shape, torch.float32))
    source = None
    if dtype != torch.float32:
        enc_s, dec_s = _copies(enc0, dec0, dtype)
        source = (_FlatEncoder(enc_s, latent, dtype), _ShapedDecoder(dec_s, latent_shape, dtype))
    if callable(latent) and not isinstance(latent, str):
        kind = "callable"
    elif latent is not None:
        kind = repr(latent)
    elif isinstance(out, torch.distributions.Distribution):
        kind = "distribution mean"
    else:
        kind = "tensor"
    ae = Autoencoder(encoder=enc, decoder=dec, preprocess=pre, latent_shape=latent_shape,
                     source_dtype=dtype, source=source, latent=kind,
                     training_modules=tuple(training))
    return ae, x_model
