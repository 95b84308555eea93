"""Parity where the bundle is served: reference inputs, the features the exporter computed for
them, and the check that the serving engine reproduces them.

Scores that drift between the model a team validated and the one it serves are a known failure
of exported detectors (anomalib #2483, #2747; OpenVINO CPU vs GPU #1859). The exporter stores
``reference.npz`` in the bundle — a few dozen inputs, their features from ONNX Runtime on CPU
at export time, the mask of features that are numerically stable (chaotic features are left
out: their float32 round-off grows along the trajectory, see the manifest's ``dynamics``) and
the export's parity tolerance. :class:`oodguard.Guard` runs the inputs through its own engine
at load, on the execution provider it actually uses, and compares with :func:`compare`, by the
export's own rule (:func:`compare_values`, which the exporter's parity check calls too) on every
stable feature.

The file is ``numpy.savez`` without pickles, hash-checked like every bundle file; a malformed
one is a :class:`~oodguard.errors.BundleError`. Bundles without it (exported before) load as
before, with nothing to check.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from oodguard.bundle.manifest import REFERENCE_FILE, InputSpec
from oodguard.errors import BundleError

__all__ = ["ParityReport", "Reference", "compare", "compare_values", "parse_reference"]

_MAX_ROWS = 4096
_FIX = "re-export the bundle with oodguard.export"


@dataclass(frozen=True, eq=False)
class Reference:
    """``inputs [R, *input_shape]`` float32, ``features [R, F]`` float32, ``stable [F]`` bool,
    and the tolerance ``rtol``, ``atol``."""

    inputs: np.ndarray
    features: np.ndarray
    stable: np.ndarray
    rtol: float
    atol: float


@dataclass(frozen=True)
class ParityReport:
    """The outcome of :func:`compare`: ``ok``; the largest absolute difference over the
    stable features (inf where finiteness differs), which feature and row it is at, and the
    largest ratio of a difference to its allowed bound (≤ 1 when ``ok``)."""

    ok: bool
    max_abs_diff: float
    worst_feature: str
    worst_row: int
    max_ratio: float
    rows: int
    features_checked: int

    def describe(self) -> str:
        return (f"largest difference {self.max_abs_diff:.3g} on feature "
                f"{self.worst_feature!r} (reference row {self.worst_row}), "
                f"{self.max_ratio:.3g}x the export's tolerance, over {self.rows} reference "
                f"inputs and {self.features_checked} stable features")


def parse_reference(data: bytes, spec: InputSpec, n_features: int) -> Reference:
    """Read ``reference.npz`` and check it against the bundle's input and feature count.

    Raises
    ------
    BundleError
        Not an ``.npz`` without pickles, a missing array, or an array of the wrong dtype or
        shape (the message names it).
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:  # noqa: BLE001 - numpy's zip and format errors are many
        raise BundleError(f"{REFERENCE_FILE} is not a readable .npz ({type(err).__name__}: "
                          f"{err}); {_FIX}") from err
    missing = sorted({"inputs", "features", "stable", "rtol", "atol"} - arrays.keys())
    if missing:
        raise BundleError(f"{REFERENCE_FILE} lacks {missing}; {_FIX}")
    inputs, features, stable = arrays["inputs"], arrays["features"], arrays["stable"]
    rows = len(inputs) if inputs.ndim else -1
    problems = []
    if inputs.dtype != np.float32 or inputs.shape[1:] != spec.shape or not 1 <= rows <= _MAX_ROWS:
        problems.append(f"inputs must be float32 [1..{_MAX_ROWS}, {spec.shape}], got "
                        f"{inputs.dtype} {inputs.shape}")
    if features.dtype != np.float32 or features.shape != (rows, n_features):
        problems.append(f"features must be float32 [{rows}, {n_features}], got "
                        f"{features.dtype} {features.shape}")
    if stable.dtype != np.bool_ or stable.shape != (n_features,):
        problems.append(f"stable must be bool [{n_features}], got {stable.dtype} {stable.shape}")
    tol = {}
    for key in ("rtol", "atol"):
        v = arrays[key]
        if v.shape != () or v.dtype.kind != "f" or not np.isfinite(v) or v < 0:
            problems.append(f"{key} must be a finite float >= 0, got {v!r:.40}")
        else:
            tol[key] = float(v)
    if problems:
        raise BundleError(f"{REFERENCE_FILE} is malformed: {'; '.join(problems)}; {_FIX}")
    if not np.isfinite(inputs).all():
        raise BundleError(f"{REFERENCE_FILE} holds non-finite inputs; {_FIX}")
    return Reference(inputs, features, stable, tol["rtol"], tol["atol"])


def _diff_and_bound(ref: np.ndarray, got: np.ndarray, rtol: float, atol: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(|got − ref|, allowed bound, out-of-tolerance mask)`` of :func:`compare_values`."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    same = (np.isnan(ref) & np.isnan(got)) | (np.isinf(ref) & (ref == got))
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - ref)
    diff[same] = 0.0
    diff[~same & ~np.isfinite(diff)] = np.inf
    finite = np.abs(ref[np.isfinite(ref)])
    scale = float(np.median(finite)) if len(finite) else 0.0
    bound = atol * (1.0 + scale) + rtol * np.where(np.isfinite(ref), np.abs(ref), 0.0)
    return diff, bound, ~same & ~(diff <= bound)


def compare_values(ref: np.ndarray, got: np.ndarray, rtol: float,
                   atol: float) -> tuple[np.ndarray, np.ndarray]:
    """``(|got − ref|, out-of-tolerance mask)`` elementwise for one column of values: the
    parity rule of the export and of the load-time check.

    The bound is ``atol·(1 + median|ref|) + rtol·|ref|``. NaN on both sides (or the same
    infinity) counts as equal with difference 0; NaN or infinity on one side only is a failure
    with difference ``inf``, so the reported maximum cannot read 0 for a failing column.
    """
    diff, _, bad = _diff_and_bound(ref, got, rtol, atol)
    return diff, bad


def compare(got: np.ndarray, ref: Reference, feature_names: tuple[str, ...]) -> ParityReport:
    """Compare the serving engine's features ``got [R, F]`` with the reference's, column by
    column by the rule of :func:`compare_values`; the report's ratio is a difference over its
    allowed bound."""
    cols = np.flatnonzero(ref.stable)
    if not cols.size:
        return ParityReport(True, 0.0, "", -1, 0.0, len(ref.features), 0)
    worst = (-1.0, 0.0, 0, int(cols[0]))  # (ratio, diff, row, column)
    ok = True
    for j in cols.tolist():
        diff, bound, bad = _diff_and_bound(ref.features[:, j], got[:, j], ref.rtol, ref.atol)
        ok = ok and not bad.any()
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(diff == 0.0, 0.0, diff / bound)  # diff > 0 = bound: inf
        r = int(np.argmax(ratio))
        if float(ratio[r]) > worst[0]:
            worst = (float(ratio[r]), float(diff[r]), r, j)
    return ParityReport(
        ok=bool(ok),
        max_abs_diff=worst[1],
        worst_feature=feature_names[worst[3]],
        worst_row=worst[2],
        max_ratio=worst[0],
        rows=len(ref.features),
        features_checked=int(cols.size),
    )
