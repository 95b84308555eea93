"""``reference.npz``: the features of a few dozen reference inputs, so that the runtime can check
at load, on the execution provider it actually runs, that it reproduces them.

Written by the exporter into the bundle (listed and hashed in the manifest like the inspection
files; numpy ``savez``, no pickle). Arrays:

- ``inputs``: float32 ``[R, *input_shape]``, raw inputs as the bundle takes them: training
  inputs of the export's parity check and a few of its uniform-noise inputs (R = 32 by default);
- ``features``: float32 ``[R, F]``, ONNX Runtime's (CPU) features of ``inputs`` from the
  bundle's final ``model.onnx``;
- ``stable``: bool ``[F]``, the features the check may compare (numerically stable under
  float32 round-off: ``manifest.dynamics["stability"]``);
- ``rtol``, ``atol``: float64 scalars, the export's parity tolerance. A value passes when
  ``|got − ref| ≤ atol·(1 + median_r |ref[:, j]|) + rtol·|ref|`` (the median over the R rows
  of that feature: :func:`oodguard.export.parity.compare_values`);
- ``feature_names``: unicode ``[F]``, ``format_version``: int64 scalar (1).

Only rows whose stable features agree between torch and ONNX Runtime along their own whole
trajectories (within that tolerance, all finite) are kept: a row near a chaotic stretch or a
convergence threshold could legitimately differ on another provider and would make the check
cry wolf.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from oodguard.export.parity import compare_values

__all__ = ["DEFAULT_REFERENCE_ROWS", "FORMAT_VERSION", "reference_file", "reference_rows"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_REFERENCE_ROWS = 32
NOISE_SHARE = 8  # one row in eight from the noise inputs, where there are any


def reference_rows(torch_features: np.ndarray, onnx_features: np.ndarray, train_rows: np.ndarray,
                   stable: np.ndarray, *, rtol: float, atol: float,
                   n: int = DEFAULT_REFERENCE_ROWS) -> np.ndarray:
    """Indices (into the check inputs) of at most ``n`` reference rows: training rows first,
    ``n // 8`` noise rows, each agreeing between torch and ONNX Runtime on every stable
    feature (whole trajectories) and finite."""
    ref = np.asarray(torch_features, dtype=np.float64)
    got = np.asarray(onnx_features, dtype=np.float64)
    ok = np.isfinite(ref).all(axis=1) & np.isfinite(got).all(axis=1)
    for j in np.flatnonzero(stable):
        _, bad = compare_values(ref[:, j], got[:, j], rtol, atol)
        ok &= ~bad
    train = np.flatnonzero(ok & train_rows)
    noise = np.flatnonzero(ok & ~train_rows)
    n_noise = min(len(noise), n // NOISE_SHARE) if len(noise) else 0
    n_train = min(len(train), n - n_noise)
    n_noise = min(len(noise), n - n_train)  # fill from the noise when training rows run short
    return np.concatenate([train[:n_train], noise[:n_noise]]).astype(np.int64)


def reference_file(inputs: np.ndarray, run: Callable[[np.ndarray], np.ndarray],
                   feature_names: Sequence[str], stability: Mapping[str, Mapping[str, Any]], *,
                   rtol: float, atol: float) -> bytes:
    """The ``reference.npz`` bytes for ``inputs`` (raw, float32); ``run`` is ONNX Runtime on the
    bundle's ``model.onnx`` (CPU)."""
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    features = np.asarray(run(x), dtype=np.float32) if len(x) else np.empty(
        (0, len(feature_names)), np.float32)
    stable = np.array([bool(stability.get(n, {}).get("stable", True)) for n in feature_names])
    buf = io.BytesIO()
    np.savez(buf, format_version=np.int64(FORMAT_VERSION), inputs=x, features=features,
             stable=stable, rtol=np.float64(rtol), atol=np.float64(atol),
             feature_names=np.array(list(feature_names), dtype=str))
    return buf.getvalue()
