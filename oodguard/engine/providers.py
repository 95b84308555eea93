"""ONNX Runtime and its execution providers: the only runtime module that imports onnxruntime.

``resolve_providers`` turns the user's ``"auto"``/``"cpu"``/``"cuda"`` or an explicit list into
the list a session is created with; a missing onnxruntime is a :class:`MissingDependencyError`
that names the extra to install.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from oodguard.errors import MissingDependencyError, check_parameter, parameter_error

__all__ = ["available_providers", "ort_module", "resolve_providers"]

_INSTALL_HINT = (
    "oodguard needs ONNX Runtime to run a bundle: install exactly one of "
    "pip install 'oodguard[cpu]'  (onnxruntime) or  pip install 'oodguard[gpu]'  (onnxruntime-gpu)"
)

def ort_module() -> Any:
    """The ``onnxruntime`` module, or a :class:`MissingDependencyError` naming the extra."""
    try:
        import onnxruntime
    except ImportError as err:
        raise MissingDependencyError(_INSTALL_HINT) from err
    return onnxruntime


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    return list(ort_module().get_available_providers())


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
            raise parameter_error("providers",
                                  "'auto', 'cpu', 'cuda' or a list of provider names",
                                  providers)
        return [*wanted, "CPUExecutionProvider"]
    chosen = list(providers)
    missing = [p for p in chosen if p not in avail]
    check_parameter(bool(chosen) and not missing, "providers",
                    f"a non-empty list of the providers this build has, {avail}", providers)
    return chosen
