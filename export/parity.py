"""The parity check: ONNX Runtime's features against the torch reference, per feature."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from oodguard.export.trajectory import TrajectoryFeatures

__all__ = [
    "DEFAULT_ATOL", "DEFAULT_RTOL", "FP16_ATOL", "FP16_RTOL", "ParityReport", "check_parity"
]

# Stated tolerance: |onnx − torch| ≤ atol·(1 + median|torch feature|) + rtol·|torch| per value.
# float32 kernels reorder sums differently, and T contractive steps do not amplify that.
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4
# float16 exports (encoder and decoder in half precision, see export_bundle(precision=)) are
# checked against the same half-precision module in torch: the two round fp16 products
# differently and fp16's relative step is 1e-3, so the stated tolerance is 20× the float32 one.
# Near an attractor the fp16 map can settle on a slightly different fixed point, so
# steps_to_converge and the attractor distances may still differ beyond it (measured on the
# demo autoencoder, T=32: up to 3 steps and 0.05); the export then refuses, and a user who
# accepts that passes a looser parity_atol deliberately and calibrates the fp16 bundle itself.
FP16_RTOL = 2e-2
FP16_ATOL = 2e-3


@dataclass(frozen=True)
class ParityReport:
    """Per-feature worst absolute difference and whether each stayed within tolerance."""

    n: int
    rtol: float
    atol: float
    max_abs_diff: dict[str, float]
    failures: dict[str, int]
    excused_steps: int

    def combine(self, other: ParityReport) -> ParityReport:
        """One report for two checks of the same inputs (e.g. two branches of one graph):
        the worst difference and all failures of either."""
        return ParityReport(
            self.n, self.rtol, self.atol,
            {k: max(v, other.max_abs_diff[k]) for k, v in self.max_abs_diff.items()},
            {k: v + other.failures[k] for k, v in self.failures.items()},
            self.excused_steps + other.excused_steps,
        )

    @property
    def ok(self) -> bool:
        return not any(self.failures.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "n": self.n,
            "rtol": self.rtol,
            "atol": self.atol,
            "max_abs_diff": self.max_abs_diff,
            "excused_steps_to_converge": self.excused_steps,
        }


@torch.inference_mode()
def check_parity(
    module: TrajectoryFeatures,
    onnx_features: np.ndarray,
    x: np.ndarray,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    reference: np.ndarray | None = None,
) -> ParityReport:
    """Compare ONNX features for ``x`` with the torch module's (``reference``, when the caller
    has already computed ``module(x)``).

    ``steps_to_converge`` is an integer: a difference is excused only where some step norm of
    that sample lies within ``rtol·tol`` of the tolerance, so that either side of the
    comparison is a legitimate rounding.
    """
    xt = torch.as_tensor(x, dtype=torch.float32)
    ref = np.asarray(module(xt).numpy() if reference is None else reference, dtype=np.float64)
    got = np.asarray(onnx_features, dtype=np.float64)
    names = module.feature_names
    diffs: dict[str, float] = {}
    failures: dict[str, int] = {}
    excused = 0
    for j, name in enumerate(names):
        r, g = ref[:, j], got[:, j]
        diff = np.abs(g - r)
        diff[np.isnan(diff) & (np.isnan(g) == np.isnan(r))] = 0.0
        bound = atol * (1.0 + np.median(np.abs(r))) + rtol * np.abs(r)
        bad = ~(diff <= bound)
        if name == "steps_to_converge" and bad.any():
            traj, _ = module.trajectory(xt[bad])
            step = torch.linalg.vector_norm(traj[:, 1:] - traj[:, :-1], dim=-1).numpy()
            near = (np.abs(step - module.tol) <= rtol * module.tol).any(axis=1)
            excused += int(near.sum())
            idx = np.flatnonzero(bad)
            bad[idx[near]] = False
        diffs[name] = float(diff.max()) if len(diff) else 0.0
        failures[name] = int(bad.sum())
    return ParityReport(len(x), rtol, atol, diffs, failures, excused)
