"""The engine: the bundle's ONNX graph run by ONNX Runtime — the only runtime package that
imports onnxruntime.

- :mod:`~oodguard.engine.session` — :class:`Engine`: sessions, chunking, threads, validation
  of what the graph returns;
- :mod:`~oodguard.engine.providers` — execution providers (CPU, CUDA) and the install hint;
- :mod:`~oodguard.engine.cuda_graph` — CUDA graph capture of fixed-size batches;
- :mod:`~oodguard.engine.timed` — the bounded wait on a run (the guard's ``timeout_s``).
"""

from oodguard.engine.providers import available_providers, ort_module, resolve_providers
from oodguard.engine.session import DENORMAL_AS_ZERO_KEY, Engine, check_features

__all__ = [
    "DENORMAL_AS_ZERO_KEY",
    "Engine",
    "available_providers",
    "check_features",
    "ort_module",
    "resolve_providers",
]
