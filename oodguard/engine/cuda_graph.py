"""The CUDA-graph path of the engine: one batch size captured and replayed."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from oodguard.errors import BundleError

__all__ = ["CudaGraph"]


class CudaGraph:
    """A second session captured as a CUDA graph for one batch size, with fixed device
    buffers: each call copies the input in, replays the graph and copies the features out."""

    def __init__(self, ort: Any, engine: Any, model: bytes, providers: list[str],
                 batch: int) -> None:
        m = engine.manifest
        provs: list[Any] = [
            ("CUDAExecutionProvider", {"enable_cuda_graph": "1"}) if p == "CUDAExecutionProvider"
            else p
            for p in providers
        ]
        self.batch = batch
        self._lock = threading.Lock()
        self._session = engine._make_session(ort, model, provs)
        self._x = ort.OrtValue.ortvalue_from_shape_and_type(
            (batch, *m.input.shape), np.float32, "cuda", 0)
        self._y = ort.OrtValue.ortvalue_from_shape_and_type(
            (batch, len(m.feature_names)), np.float32, "cuda", 0)
        self._binding = self._session.io_binding()
        self._binding.bind_ortvalue_input(m.input.name, self._x)
        self._binding.bind_ortvalue_output(m.output_name, self._y)
        try:
            self._session.run_with_iobinding(self._binding)  # the first run captures
        except Exception as err:  # onnxruntime raises its own exception types
            raise BundleError(
                f"CUDA graph capture failed for batch {batch} ({type(err).__name__}: {err}); "
                "every node must run on the GPU and the graph must hold no If/Loop (bundles of "
                "older oodguard versions hold one: re-export), or create the engine without "
                "cuda_graph_batch"
            ) from err

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            self._x.update_inplace(x)
            self._session.run_with_iobinding(self._binding)
            return self._y.numpy()
