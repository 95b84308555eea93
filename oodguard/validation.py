"""Input validation at the boundary: dtype, rank, shape and finiteness against the bundle.

Outcomes (each documented in the README and tested):

================= ====================================================================
input             outcome
================= ====================================================================
float32           used as is (no copy when C-contiguous)
tensor-like       an object with ``detach()``, ``cpu()`` and ``numpy()`` (a torch tensor,
                  also one that requires grad or lives on a GPU) is converted with
                  ``x.detach().cpu().numpy()`` and then checked like an array; torch is
                  never imported. A conversion that fails (e.g. bfloat16):
                  :class:`InvalidInputError` ``reason="type"``
other objects     converted with ``numpy.asarray``; any failure to convert:
                  :class:`InvalidInputError` ``reason="type"``
float16 / float64 cast to float32; values beyond float32 range become inf (see below)
other dtypes      :class:`InvalidInputError` ``reason="dtype"`` (ints, bools, objects…)
wrong rank        :class:`InvalidInputError` ``reason="rank"`` (a single sample: add x[None])
wrong shape       :class:`InvalidInputError` ``reason="shape"``
empty batch       an empty result; the engine is not called
NaN / ±inf rows   ``nonfinite="flag"``: the row is OOD with score +inf, p-value 0 and NaN
                  features, the other rows are scored normally; ``"raise"``:
                  :class:`NonFiniteInputError`
================= ====================================================================
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from oodguard.bundle import InputSpec
from oodguard.errors import InvalidInputError, NonFiniteInputError, parameter_error

__all__ = [
    "NONFINITE_POLICIES", "as_array", "check_fdr", "check_timeout", "is_tensor_like",
    "validate_batch",
]

NONFINITE_POLICIES = ("flag", "raise")
_F32 = np.dtype(np.float32)
# Batches of at most this many values are checked for NaN and infinity with a Python sum:
# at batch 1, numpy's isfinite (cold caches right after the previous engine run) cost more.
_SUM_CHECK_VALUES = 128


def validate_batch(
    x: Any, spec: InputSpec, *, nonfinite: str = "flag"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Check a batch against the bundle's input spec.

    Returns
    -------
    x32 : ndarray of float32, shape (N, *spec.shape), C-contiguous
    finite : ndarray of bool, shape (N,), or None when every row is finite
    """
    if (type(x) is np.ndarray and x.dtype is _F32 and x.ndim == len(spec.shape) + 1
            and x.shape[1:] == spec.shape and x.flags.c_contiguous):
        x32 = x  # the usual case, which every check below would pass unchanged
    else:
        x32 = _as_float32(x, spec)
    if len(x32) == 0 or _all_finite(x32):
        return x32, None
    finite_rows = np.isfinite(x32.reshape(len(x32), -1)).all(axis=1)
    bad = np.flatnonzero(~finite_rows)
    if nonfinite == "raise":
        shown = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
        raise NonFiniteInputError(
            f"{len(bad)} of {len(x32)} rows hold NaN or infinity (rows {shown}); the guard was "
            "created with nonfinite='raise'. Clean the input, or use nonfinite='flag' to mark "
            "such rows OOD"
        )
    return x32, np.asarray(finite_rows, dtype=bool)


def _all_finite(x32: np.ndarray) -> bool:
    """Whether a float32 array holds no NaN and no infinity."""
    if x32.size <= _SUM_CHECK_VALUES:
        # NaN or ±inf anywhere makes the sum NaN or ±inf, and a float64 sum of this few
        # float32 values cannot overflow: the sum is finite exactly when every value is.
        return math.isfinite(sum(x32.ravel().tolist()))
    return bool(np.isfinite(x32).all())


def _as_float32(x: Any, spec: InputSpec) -> np.ndarray:
    """``x`` checked for type, dtype, rank and shape, as a C-contiguous float32 array."""
    if not isinstance(x, np.ndarray):
        x = as_array(x, _want(spec))
    if x.dtype.kind != "f":
        raise InvalidInputError(
            f"expected a {_want(spec)}; got dtype {x.dtype}. Scale the input as in training and "
            "cast it, e.g. x.astype(np.float32)",
            reason="dtype",
        )
    rank = len(spec.shape) + 1
    if x.ndim != rank:
        hint = (
            " — this looks like one sample; add a batch axis with x[None]"
            if x.shape == spec.shape
            else ""
        )
        raise InvalidInputError(
            f"expected a {_want(spec)} (rank {rank}); got rank {x.ndim} with shape "
            f"{x.shape}{hint}",
            reason="rank",
        )
    if x.shape[1:] != spec.shape:
        raise InvalidInputError(
            f"expected a {_want(spec)}; got shape {x.shape}. The bundle was exported for "
            f"samples of shape {spec.shape}",
            reason="shape",
        )
    if x.dtype == np.float32:
        return np.ascontiguousarray(x)
    with np.errstate(over="ignore"):  # out-of-range float64 becomes inf, flagged by the caller
        return np.ascontiguousarray(x, dtype=np.float32)


def _want(spec: InputSpec) -> str:
    """What a batch must be, for error messages (built only when one is raised)."""
    return f"float32 array of shape (N, {', '.join(map(str, spec.shape))})"


def is_tensor_like(x: Any) -> bool:
    """Whether ``x`` converts like a torch tensor: ``x.detach().cpu().numpy()``."""
    return all(callable(getattr(x, name, None)) for name in ("detach", "cpu", "numpy"))


def as_array(x: Any, want: str = "float32 array") -> np.ndarray:
    """``x`` as a numpy array (tensor-likes detached and copied to host memory first).

    Raises
    ------
    InvalidInputError
        ``reason="type"`` for anything that does not convert, whatever the converter raised
        (bad input is never a guard failure).
    """
    try:
        if is_tensor_like(x):
            return np.asarray(x.detach().cpu().numpy())
        return np.asarray(x)
    except Exception as err:  # a foreign __array__ / numpy() may raise anything
        hint = (" (for a torch tensor of a dtype numpy lacks, such as bfloat16, pass "
                "x.float())" if is_tensor_like(x) else "")
        raise InvalidInputError(
            f"expected a {want}; got {type(x).__name__} that cannot be converted to a numpy "
            f"array ({type(err).__name__}: {err}){hint}",
            reason="type",
        ) from err


def check_timeout(timeout_s: float | None) -> float | None:
    """``timeout_s`` as a float, or None; refuses anything but a positive finite number."""
    if timeout_s is None:
        return None
    if (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float, np.floating))
            or not math.isfinite(timeout_s) or timeout_s <= 0):
        raise parameter_error("timeout_s", "a positive number of seconds or None", timeout_s)
    return float(timeout_s)


def check_fdr(fdr: float | None) -> float | None:
    """``fdr`` as a float in (0, 1), or None."""
    if fdr is None:
        return None
    if (isinstance(fdr, bool) or not isinstance(fdr, (int, float, np.floating))
            or not 0.0 < fdr < 1.0):
        raise parameter_error("fdr", "a float in (0, 1) or None", fdr)
    return float(fdr)
