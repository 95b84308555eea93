"""Input tensors from table columns: what Ray Data batches and parquet files hold, for the guard.

Shared by :mod:`oodguard.integrations.ray` and ``oodguard score`` (which must not need Ray for
local files); numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from oodguard.bundle import InputSpec
from oodguard.errors import InvalidInputError

__all__ = ["tensor_column"]


def _stack(value: Any) -> np.ndarray:
    """A column of per-row arrays (object dtype: parquet list columns, variable-shaped tensor
    columns), nested to any depth, as one rectangular array."""
    arr = np.asarray(value)
    if arr.dtype != object:
        return arr
    return np.stack([_stack(v) for v in arr]) if len(arr) else arr


def tensor_column(col: Any, spec: InputSpec, *, column: str, scale: float | None = None,
                  reshape: bool = False) -> np.ndarray:
    """One batch's input column as Ray Data gives it (numpy batch format), for the guard.

    Parameters
    ----------
    col : ndarray of shape (N, *sample_shape) (tensor columns: ``from_numpy``,
        ``read_numpy``, ``read_images``), or an object array of per-row arrays or nested lists
        (parquet list columns)
    spec : the bundle's input
    column : the column's name, for messages
    scale : divide the values by this (e.g. 255 for the uint8 images of ``read_images``), as
        in training; integer data is refused without it, as ``Guard.check`` refuses it
    reshape : reshape each sample row-major to ``spec.shape`` when the sizes agree (e.g.
        8×8 images for a (64,) bundle); without it the sample shape must match

    Returns
    -------
    ndarray, shape (N, *spec.shape); dtype as given (float32 after ``scale``) — the guard's
    validation decides what it accepts

    Raises
    ------
    InvalidInputError
        Rows of different shapes, or another sample shape without ``reshape``.
    """
    try:
        x = _stack(col)
    except ValueError as err:  # np.stack of rows of different shapes
        raise InvalidInputError(f"column {column!r} holds rows of different shapes ({err}); "
                                f"every row must have shape {spec.shape}",
                                reason="shape") from err
    if scale is not None:
        x = np.asarray(x, dtype=np.float32) / np.float32(scale)
    if x.ndim >= 1 and x.shape[1:] != spec.shape:
        same_size = int(np.prod(x.shape[1:])) == int(np.prod(spec.shape))
        if reshape and same_size:
            return x.reshape(len(x), *spec.shape)
        hint = (f"; pass reshape=True to reshape each row-major to {spec.shape}" if same_size
                else "")
        raise InvalidInputError(f"column {column!r} holds samples of shape {x.shape[1:]}; the "
                                f"bundle takes {spec.shape}{hint}", reason="shape")
    return x
