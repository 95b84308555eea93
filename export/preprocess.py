"""Input preprocessing that travels inside the bundle's graph.

A model trained on standardised inputs (PyOD's AutoEncoder, any ``StandardScaler`` pipeline)
scores raw inputs wrongly unless the same scaling is applied first; exporting it without the
scaler succeeded silently with wrong scores. ``export_bundle(preprocess=...)`` puts the scaling
into the graph as its first nodes, so the bundle takes raw inputs and the scaler never travels
separately.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from oodguard.errors import ExportError

__all__ = ["Standardize", "as_preprocess"]


class Standardize(nn.Module):
    """``(x − mean) / std`` per input feature (``mean``, ``std`` shaped like one input, or
    broadcastable to it)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Any, std: Any) -> None:
        super().__init__()
        m = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        s = torch.as_tensor(np.asarray(std, dtype=np.float32))
        if not (torch.isfinite(m).all() and torch.isfinite(s).all() and (s > 0).all()):
            raise ExportError("preprocess: mean and std must be finite and std > 0 everywhere "
                              "(add a small epsilon to constant features' std)")
        self.register_buffer("mean", m)
        self.register_buffer("std", s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def record(self) -> dict[str, Any]:
        return {"kind": "standardize", "shape": list(self.mean.shape)}


class _Module(nn.Module):
    """A user's preprocessing module, recorded by its type name."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        if not isinstance(out, torch.Tensor):
            raise ExportError(f"preprocess returned {type(out).__name__}, not a tensor")
        return out

    def record(self) -> dict[str, Any]:
        return {"kind": "module", "type": type(self.module).__name__}


def as_preprocess(obj: Any) -> nn.Module | None:
    """A float32, eval-mode preprocessing module from what the caller passed.

    Parameters
    ----------
    obj : None, nn.Module, (mean, std), or a fitted scaler with ``mean_`` and ``scale_``
        (scikit-learn's ``StandardScaler``).

    Raises
    ------
    ExportError
        Anything else, with what is accepted.
    """
    if obj is None:
        return None
    if isinstance(obj, Standardize):
        return copy.deepcopy(obj).float().eval()
    if isinstance(obj, nn.Module):
        return _Module(copy.deepcopy(obj).float().cpu().eval())
    if hasattr(obj, "mean_") and hasattr(obj, "scale_"):
        mean = obj.mean_ if obj.mean_ is not None else 0.0
        scale = obj.scale_ if obj.scale_ is not None else 1.0
        return Standardize(mean, scale)
    if isinstance(obj, tuple) and len(obj) == 2:
        return Standardize(*obj)
    raise ExportError(
        f"preprocess={type(obj).__name__} is not understood; pass an nn.Module, a (mean, std) "
        "pair or a fitted StandardScaler"
    )
