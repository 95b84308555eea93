"""The named mistakes a user's autoencoder can make, each an :class:`ExportError`.

They are raised before anything is traced or exported (see :mod:`oodguard.export.autoencoder`
and :mod:`oodguard.export.probe`), and every message says what was found and how to fix it, so
no raw torch error escapes :func:`oodguard.export.export_bundle`.
"""

from __future__ import annotations

from oodguard.errors import ExportError

__all__ = [
    "LatentOutputError",
    "ModelSplitError",
    "NotComposableError",
    "NotDeterministicError",
    "ReconstructionShapeError",
    "UnsupportedDtypeError",
]


class LatentOutputError(ExportError):
    """The encoder's output is not a code the exporter can read (a tuple, a dict or another
    object without ``latent=`` saying which part is the code)."""


class ModelSplitError(ExportError):
    """``model=`` has neither ``encode``/``decode`` nor ``encoder``/``decoder``, or ``split=``
    names no layer of it."""


class NotComposableError(ExportError):
    """``encoder(x)`` or ``decoder(encoder(x))`` fails: the modules are swapped, or the decoder
    does not accept the encoder's code."""


class ReconstructionShapeError(ExportError):
    """``decoder(encoder(x))`` runs but its shape is not the input's."""


class NotDeterministicError(ExportError):
    """The encoder or decoder returns different values for the same input in eval mode
    (sampling, functional dropout)."""


class UnsupportedDtypeError(ExportError):
    """Parameters or inputs of a dtype the exporter cannot run (integer, complex, quantized)."""
