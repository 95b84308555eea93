"""The latent map's dynamics as recorded in ``manifest.dynamics``: contraction and the numerical
stability of each feature, plus the denormal handling both sides of the parity check share.

**Contraction** (``dynamics["contraction"]``): from up to 4096 training codes, ``T`` steps of
``f = E∘D``: the fraction that converged (some step ``≤ tol``), the fraction whose trajectory
stayed finite, and quantiles of the step-norm ratio ``‖z_{t+2} − z_{t+1}‖ / ‖z_{t+1} − z_t‖``
over all steps not yet converged (``< 1``: contracting there; ``> 1``: expanding), with the
fraction of ratios above 1.

**Stability** (``dynamics["stability"][name] = {"deviation", "stable"}``): ONNX Runtime runs the
bundle's graph and torch the reference module on the same inputs, each along its own whole
trajectory, so float32 round-off (different summation orders) is amplified by whatever the
map does. ``deviation`` is the 99th percentile over the check inputs of
``|onnx − torch| / spread`` with ``spread`` the feature's interquartile range over the training
rows of the check set (at least ``atol·(1 + median |feature|)``, parity's absolute scale, so that
a constant feature is not divided by 0). A feature is ``stable`` when ``deviation ≤ 0.01``:
a 1%-of-IQR move changes the feature's rank among in-distribution values near the median by
about half a percentile (the IQR holds 50% of them), below what a conformal p-value from a
calibration set of a few hundred can resolve; above it, the same input can get visibly
different scores from two runtimes (or from a batch split differently), and calibration leaves
the feature out. The 99th percentile (an order statistic) rather than the maximum: one
chaotic noise input must not decide for the whole set, yet 1% of inputs moving a lot does
count.

**Denormals**: converging trajectories produce step differences in the subnormal float32
range (below 1.2e-38), which x86 processes up to ~100× slower. Both sides flush them to zero
during the export's checks: torch through :func:`flush_denormal` around the reference
computation, which restores the previous mode afterwards (torch has no getter for it; the
mode is detected by multiplying a subnormal number), and ONNX Runtime through the session
option ``session.set_denormal_as_zero = "1"``. That option sets flush-to-zero on the session's
intra-op pool threads, but on the *calling* thread only once per process, from whichever
session is created first (a ``std::call_once`` in ``InferenceSession``), so the exporter also
runs its ONNX Runtime calls inside :func:`flush_denormal`, which sets the calling thread's
mode (the same MXCSR flags) — a caller of the runtime engine that runs graphs on its own
thread needs the same care.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from oodguard.export.parity import compare_values
from oodguard.inspect.iteration import iterate
from oodguard.inspect.latent_map import TorchMap

__all__ = [
    "STABILITY_QUANTILE",
    "STABILITY_THRESHOLD",
    "CONVERGED_WITHIN_T_WARNING",
    "SETTLED_FEATURES",
    "convergence_warning",
    "flush_denormal",
    "flush_denormal_enabled",
    "contraction_of",
    "measure_contraction",
    "measure_stability",
]

STABILITY_THRESHOLD = 0.01
STABILITY_QUANTILE = 0.99
_RATIO_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def flush_denormal_enabled() -> bool:
    """Whether torch currently flushes subnormal floats to zero on this CPU."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # subnormal in float32
    return bool((tiny * 1.0).item() == 0.0)


@contextlib.contextmanager
def flush_denormal() -> Iterator[bool]:
    """Flush subnormal floats to zero in torch inside the block; restore the previous mode.

    Yields whether flushing is in effect (``False`` on CPUs without the SSE3 support torch
    needs for it).
    """
    before = flush_denormal_enabled()
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(before)


def measure_contraction(encoder: nn.Module, decoder: nn.Module, codes: np.ndarray, *,
                        steps: int, tol: float) -> dict[str, Any]:
    """Contraction of ``f = E∘D`` at ``codes [M, d]`` over ``steps`` steps (see the module)."""
    z = np.asarray(codes, dtype=np.float32)
    latent = TorchMap(encoder, decoder, input_shape=(), latent_dim=z.shape[1], max_batch=None)
    run = iterate(latent.step, z, max_steps=steps, until_converged=False, record_norms=True)
    return contraction_of(cast(np.ndarray, run.step_norms), steps=steps, tol=tol)


def contraction_of(step: np.ndarray, *, steps: int, tol: float) -> dict[str, Any]:
    """:func:`measure_contraction` from the step norms ``[M, T]`` of an iteration already run
    (the exporter's latent baselines iterate the bank codes anyway)."""
    finite = np.isfinite(step).all(axis=1)
    converged = (step <= tol).any(axis=1)
    prev, nxt_s = step[:, :-1], step[:, 1:]
    active = np.isfinite(prev) & np.isfinite(nxt_s) & (prev > tol)
    ratios = nxt_s[active] / prev[active]
    doc: dict[str, Any] = {
        "n_codes": len(step),
        "steps": steps,
        "tol": tol,
        "converged_fraction": float(converged.mean()) if len(step) else 0.0,
        "finite_fraction": float(finite.mean()) if len(step) else 0.0,
        "n_ratios": int(ratios.size),
        "expanding_fraction": float((ratios > 1).mean()) if ratios.size else 0.0,
        "step_ratio_quantiles": {
            f"{q:g}": float(np.quantile(ratios, q)) if ratios.size else None
            for q in _RATIO_QUANTILES
        },
    }
    return doc


# Below this fraction of training codes converging within T, the export says what the
# trajectory features then measure ("most training codes do not converge").
CONVERGED_WITHIN_T_WARNING = 0.5
# the features whose meaning assumes a trajectory that has settled within T
SETTLED_FEATURES = ("last_step", "convergence_rate", "steps_to_converge", "attractor_distance",
                    "mean_attractor_distance", "terminal_knn", "terminal_mahalanobis")


def convergence_warning(contraction: dict[str, Any]) -> str | None:
    """What to tell the user when most training codes do not converge within the bundle's
    ``T`` (``contraction`` as :func:`contraction_of` gives it), else ``None``."""
    frac = float(contraction["converged_fraction"])
    if frac >= CONVERGED_WITHIN_T_WARNING or not contraction["n_codes"]:
        return None
    return (
        f"only {100 * frac:.0f}% of {contraction['n_codes']} training codes converge within "
        f"T={contraction['steps']} steps (step <= tol {contraction['tol']:.3g}; "
        f"{100 * contraction['expanding_fraction']:.0f}% of steps expand): the features then "
        "measure the first T steps of a map that has not settled, so the convergence and "
        f"attractor features ({', '.join(SETTLED_FEATURES)}) measure transients, not the "
        "distance to attractors. Raise steps= if the map contracts slowly, or train the "
        "autoencoder to contract (weight decay, a small bottleneck, denoising)"
    )


def measure_stability(
    names: Sequence[str],
    reference: np.ndarray,
    onnx: np.ndarray,
    train_rows: np.ndarray,
    *,
    atol: float,
    threshold: float = STABILITY_THRESHOLD,
    quantile: float = STABILITY_QUANTILE,
) -> dict[str, dict[str, Any]]:
    """Per feature ``{"deviation", "stable"}`` from whole-trajectory runs (see the module).

    Parameters
    ----------
    reference : ndarray, shape (N, F)
        Torch's features of the check inputs.
    onnx : ndarray, shape (N, F)
        ONNX Runtime's features of the same inputs.
    train_rows : ndarray of bool, shape (N,)
        Which check inputs are training rows (their spread is the feature's scale).
    """
    ref = np.asarray(reference, dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        col = ref[train_rows, j]
        col = col[np.isfinite(col)]
        iqr = float(np.subtract(*np.quantile(col, [0.75, 0.25]))) if len(col) else 0.0
        floor = atol * (1.0 + (float(np.median(np.abs(col))) if len(col) else 0.0))
        spread = max(iqr, floor)
        diff, _ = compare_values(ref[:, j], np.asarray(onnx)[:, j], 0.0, 0.0)
        # "higher": an order statistic, no interpolation (inf − inf would give NaN)
        dev = (float(np.quantile(diff, quantile, method="higher")) if diff.size else 0.0) / spread
        out[name] = {"deviation": dev, "stable": bool(dev <= threshold)}
    return out
