"""The engine: one ONNX Runtime session over the fused trajectory graph.

This is the only runtime module that imports onnxruntime. The graph maps a batch
``x [N, *input_shape]`` (float32) to ``features [N, F]`` in a single ``session.run``: the ``T``
latent steps, the attractor bank and every feature live inside it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from oodguard.bundle import Manifest
from oodguard.errors import BundleError, MissingDependencyError

__all__ = ["Engine", "available_providers", "resolve_providers"]

log = logging.getLogger(__name__)

_INSTALL_HINT = (
    "oodguard needs ONNX Runtime to run a bundle: install exactly one of "
    "pip install 'oodguard[cpu]'  (onnxruntime) or  pip install 'oodguard[gpu]'  (onnxruntime-gpu)"
)
# Working memory the attractor-distance block may take per engine call; batches that would
# exceed it are cut into chunks so that memory stays bounded whatever the caller sends.
_CHUNK_BUDGET_BYTES = 256 << 20


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise MissingDependencyError(_INSTALL_HINT) from err
    return onnxruntime


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    return list(_ort().get_available_providers())


def resolve_providers(providers: str | Sequence[str]) -> list[str]:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or an explicit list into a provider list.

    ``"auto"`` takes CUDA when onnxruntime-gpu sees a GPU, else the CPU.
    """
    avail = available_providers()
    if isinstance(providers, str):
        key = providers.lower()
        if key == "auto":
            wanted = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in avail else []
        elif key == "cpu":
            wanted = []
        elif key == "cuda":
            if "CUDAExecutionProvider" not in avail:
                raise MissingDependencyError(
                    f"providers='cuda' but this onnxruntime offers only {avail}; install "
                    "pip install 'oodguard[gpu]' (and not onnxruntime) on a machine with CUDA"
                )
            wanted = ["CUDAExecutionProvider"]
        else:
            raise ValueError(
                f"providers must be 'auto', 'cpu', 'cuda' or a list of provider names. "
                f"Got {providers!r}"
            )
        return [*wanted, "CPUExecutionProvider"]
    chosen = list(providers)
    missing = [p for p in chosen if p not in avail]
    if missing or not chosen:
        raise ValueError(f"providers {missing or chosen} are not available; this build has {avail}")
    return chosen


class Engine:
    """Runs the fused trajectory graph of a bundle.

    Parameters
    ----------
    model : bytes
        The serialized ONNX model.
    manifest : Manifest
        The bundle's manifest; the session's signature is checked against it.
    providers : "auto", "cpu", "cuda" or list of str
        Execution providers (see :func:`resolve_providers`).
    intra_op_threads, inter_op_threads : int, optional
        ONNX Runtime thread pool sizes; ``None`` leaves ONNX Runtime's default (all cores).
    max_batch : int, optional
        Largest batch sent to one ``session.run``; larger batches are chunked. ``None`` derives
        it from the graph size so that the attractor-distance block stays under 256 MiB.

    Thread safety: :meth:`run` may be called from many threads at once (ONNX Runtime sessions
    are thread-safe for ``run``).
    """

    def __init__(
        self,
        model: bytes,
        manifest: Manifest,
        *,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        max_batch: int | None = None,
    ) -> None:
        ort = _ort()
        self.manifest = manifest
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            opts.intra_op_num_threads = int(intra_op_threads)
        if inter_op_threads is not None:
            opts.inter_op_num_threads = int(inter_op_threads)
        opts.log_severity_level = 3
        chosen = resolve_providers(providers)
        try:
            self._session = ort.InferenceSession(model, sess_options=opts, providers=chosen)
        except Exception as err:  # onnxruntime raises its own exception types
            raise BundleError(
                f"ONNX Runtime could not load model.onnx ({type(err).__name__}: {err}); "
                "the file is not a valid model for this onnxruntime — re-export the bundle"
            ) from err
        self._check_signature()
        self.providers: list[str] = list(self._session.get_providers())
        per_sample = (manifest.steps + 1) * max(manifest.attractor_count, 1) * 4 * 2
        self.max_batch = int(max_batch) if max_batch else max(1, _CHUNK_BUDGET_BYTES // per_sample)
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1. Got {max_batch}")
        log.debug("engine ready: providers=%s max_batch=%d", self.providers, self.max_batch)

    def _check_signature(self) -> None:
        m = self.manifest
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        expect_in = f"one input {m.input.name!r} float32 [N, {', '.join(map(str, m.input.shape))}]"
        if len(inputs) != 1 or inputs[0].name != m.input.name or inputs[0].type != "tensor(float)":
            got = [(i.name, i.type, i.shape) for i in inputs]
            raise BundleError(f"model.onnx signature mismatch: expected {expect_in}, got {got}")
        if [d if isinstance(d, int) else None for d in inputs[0].shape[1:]] != list(m.input.shape):
            raise BundleError(
                f"model.onnx input shape {inputs[0].shape} does not match the manifest's "
                f"{list(m.input.shape)}; the manifest belongs to another model — re-export"
            )
        f = len(m.feature_names)
        width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
        if len(outputs) != 1 or outputs[0].name != m.output_name or (
            isinstance(width, int) and width != f
        ):
            got = [(o.name, o.shape) for o in outputs]
            raise BundleError(
                f"model.onnx outputs {got} do not match the manifest's {m.output_name!r} "
                f"with {f} features; re-export the bundle"
            )

    def run(self, x: np.ndarray) -> np.ndarray:
        """Features for a validated batch.

        Parameters
        ----------
        x : ndarray of float32, shape (N, *input_shape), C-contiguous, N >= 1

        Returns
        -------
        ndarray of float32, shape (N, F)
        """
        name = self.manifest.input.name
        if len(x) <= self.max_batch:
            return self._session.run(None, {name: x})[0]  # type: ignore[no-any-return]
        parts = [
            self._session.run(None, {name: x[i : i + self.max_batch]})[0]
            for i in range(0, len(x), self.max_batch)
        ]
        return np.concatenate(parts, axis=0)
