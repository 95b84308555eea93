"""Input validation at the boundary: dtype, rank, shape and finiteness against the bundle.

Outcomes (each documented in the README and tested):

================= ====================================================================
input             outcome
================= ====================================================================
float32           used as is (no copy when C-contiguous)
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

from typing import Any

import numpy as np

from oodguard.bundle import InputSpec
from oodguard.errors import InvalidInputError, NonFiniteInputError

__all__ = ["NONFINITE_POLICIES", "validate_batch"]

NONFINITE_POLICIES = ("flag", "raise")


def validate_batch(
    x: Any, spec: InputSpec, *, nonfinite: str = "flag"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Check a batch against the bundle's input spec.

    Returns
    -------
    x32 : ndarray of float32, shape (N, *spec.shape), C-contiguous
    finite : ndarray of bool, shape (N,), or None when every row is finite
    """
    want = f"float32 array of shape (N, {', '.join(map(str, spec.shape))})"
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise InvalidInputError(
                f"expected a {want}; got {type(x).__name__} that numpy cannot convert ({err})",
                reason="type",
            ) from err
    if x.dtype.kind != "f":
        raise InvalidInputError(
            f"expected a {want}; got dtype {x.dtype}. Scale the input as in training and "
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
            f"expected a {want} (rank {rank}); got rank {x.ndim} with shape {x.shape}{hint}",
            reason="rank",
        )
    if x.shape[1:] != spec.shape:
        raise InvalidInputError(
            f"expected a {want}; got shape {x.shape}. The bundle was exported for samples of "
            f"shape {spec.shape}",
            reason="shape",
        )
    if x.dtype == np.float32:
        x32 = np.ascontiguousarray(x)
    else:
        with np.errstate(over="ignore"):  # out-of-range float64 becomes inf, flagged below
            x32 = np.ascontiguousarray(x, dtype=np.float32)
    if len(x32) == 0 or np.isfinite(x32).all():  # the common case in one pass
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
