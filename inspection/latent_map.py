"""The latent map ``f(z) = E(D(z))`` behind one interface, from torch modules or from a bundle.

Inspection works on numpy arrays through :class:`LatentMap`: ``encode(x)``, ``decode(z)`` and
``step(z) = encode(decode(z))``. :class:`TorchMap` wraps a trained encoder/decoder (training
loops, :class:`~oodguard.inspect.AttractorMonitor`); :class:`OnnxMap` runs the bundle's optional
``inspection.onnx`` graph with ONNX Runtime (``oodguard inspect BUNDLE``, no torch model needed).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

__all__ = ["LatentMap", "OnnxMap", "TorchMap", "INSPECTION_INPUTS", "INSPECTION_OUTPUTS"]

# The inspection graph: (x [N, ...], z [M, d]) ▶ (E(x) [N, d], D(z) [M, ...], E(D(z)) [M, d]).
INSPECTION_INPUTS = ("x", "z")
INSPECTION_OUTPUTS = ("codes", "decoded", "stepped")

_BATCH = 4096


class LatentMap(Protocol):
    """Encoder, decoder and one latent step on float32 numpy batches."""

    latent_dim: int
    input_shape: tuple[int, ...]

    def encode(self, x: np.ndarray) -> np.ndarray:
        """``E(x)``: ``(N, *input_shape)`` ▶ ``(N, d)``."""
        ...

    def decode(self, z: np.ndarray) -> np.ndarray:
        """``D(z)``: ``(M, d)`` ▶ ``(M, *input_shape)``."""
        ...

    def step(self, z: np.ndarray) -> np.ndarray:
        """``f(z) = E(D(z))``: ``(M, d)`` ▶ ``(M, d)``."""
        ...


def _batched(fn: Any, a: np.ndarray, size: int | None = _BATCH) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if size is None or len(a) <= size:
        return np.asarray(fn(a), dtype=np.float32)
    return np.concatenate([np.asarray(fn(a[i:i + size]), dtype=np.float32)
                           for i in range(0, len(a), size)])


class TorchMap:
    """A :class:`LatentMap` over torch modules (evaluated under ``torch.no_grad``, in the mode
    the modules are in: callers such as the monitor switch to ``eval()`` themselves).

    Parameters
    ----------
    encoder, decoder : torch.nn.Module
        ``encoder(x)`` gives codes ``(N, d)``; ``decoder(z)`` gives inputs' shape.
    input_shape : tuple of int
        One sample's shape (no batch axis).
    latent_dim : int
    max_batch : int or None
        Rows per call of the modules (default 4096); ``None``: every call takes the whole
        array, so a step's numbers are those of one batch (the exporter's discovery).
    """

    def __init__(self, encoder: Any, decoder: Any, *, input_shape: tuple[int, ...],
                 latent_dim: int, max_batch: int | None = _BATCH) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.input_shape = tuple(input_shape)
        self.latent_dim = int(latent_dim)
        self.max_batch = max_batch

    @classmethod
    def from_model(cls, model: Any, x_example: np.ndarray) -> TorchMap:
        """From a model with ``encode``/``decode`` methods (or ``(encoder, decoder)``), reading
        the latent size from the codes of ``x_example`` (a batch of at least one input)."""
        import torch

        if isinstance(model, tuple):
            enc, dec = model
        else:
            enc, dec = getattr(model, "encode", None), getattr(model, "decode", None)
            if not callable(enc) or not callable(dec):
                raise TypeError(
                    f"model {type(model).__name__} has no encode/decode methods; pass "
                    "(encoder, decoder) instead"
                )
        x = np.ascontiguousarray(x_example[:1], dtype=np.float32)
        with torch.no_grad():
            z = enc(torch.from_numpy(x))
        if z.ndim != 2:
            raise ValueError(f"the encoder must give codes of shape (N, d); got {tuple(z.shape)}")
        return cls(enc, dec, input_shape=tuple(x.shape[1:]), latent_dim=int(z.shape[1]))

    def _run(self, fn: Any, a: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return _batched(lambda b: fn(torch.from_numpy(b)).numpy(), a, self.max_batch)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self._run(self.encoder, x)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self._run(self.decoder, z)

    def step(self, z: np.ndarray) -> np.ndarray:
        return self._run(lambda t: self.encoder(self.decoder(t)), z)


class OnnxMap:
    """A :class:`LatentMap` over the bundle's ``inspection.onnx`` (ONNX Runtime, CPU).

    The graph has two inputs; the one not needed gets a single zero row (its outputs are
    dropped), so every call is one ``session.run``.
    """

    def __init__(self, model: bytes, *, input_shape: tuple[int, ...], latent_dim: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # same numbers whatever the host's core count
        self._sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.input_shape = tuple(input_shape)
        self.latent_dim = int(latent_dim)
        names = tuple(i.name for i in self._sess.get_inputs())
        if sorted(names) != sorted(INSPECTION_INPUTS):
            raise ValueError(f"inspection graph has inputs {names}, expected {INSPECTION_INPUTS}")

    def _run(self, output: str, x: np.ndarray | None, z: np.ndarray | None) -> np.ndarray:
        feeds = {
            "x": x if x is not None else np.zeros((1, *self.input_shape), np.float32),
            "z": z if z is not None else np.zeros((1, self.latent_dim), np.float32),
        }
        return np.asarray(self._sess.run([output], feeds)[0], dtype=np.float32)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return _batched(lambda b: self._run("codes", b, None), x)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return _batched(lambda b: self._run("decoded", None, b), z)

    def step(self, z: np.ndarray) -> np.ndarray:
        return _batched(lambda b: self._run("stepped", None, b), z)
