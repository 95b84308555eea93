"""The parity check: ONNX Runtime against the torch reference.

What the exporter requires is :func:`check_same_trajectory`: the one-step map and the features
of one and the same trajectory, which are deterministic up to float32 round-off whatever the
map's dynamics. Whole trajectories (:func:`check_parity`) are compared too, but only recorded
(:mod:`oodguard.export.stability`): a map that is not contractive everywhere amplifies round-off
along the trajectory, and refusing such a model only forced users to loosen the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from oodguard.bundle.reference import compare_values
from oodguard.export.trajectory import TrajectoryFeatures

__all__ = [
    "DEFAULT_ATOL", "DEFAULT_RTOL", "FP16_ATOL", "FP16_RTOL", "ParityReport", "check_parity",
    "check_same_trajectory", "compare_values",
]
# compare_values is the runtime's (oodguard.bundle.reference): the export's parity check and the
# guard's load-time check use one rule.

# Stated tolerance: |onnx − torch| ≤ atol·(1 + median|torch feature|) + rtol·|torch| per value.
# float32 kernels reorder sums differently; one step of the map and the feature formulas on a
# given trajectory do not amplify that (T steps of a chaotic map do: not checked against it).
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


@dataclass(frozen=True, eq=False)
class ParityReport:
    """Per-feature worst absolute difference and which inputs failed.

    ``feature_failed [n, F]`` marks the out-of-tolerance (input, feature) pairs and
    ``step_failed [n]`` the inputs whose one-step map (or ``E(x)``, ``D(z0)``) differed;
    ``failures[name]`` and ``failed_inputs`` count inputs, so neither can exceed ``n`` however
    many features failed. ``one_step_max_abs_diff`` is ``nan`` when not checked.
    """

    n: int
    rtol: float
    atol: float
    max_abs_diff: dict[str, float]
    excused_steps: int
    feature_failed: np.ndarray
    step_failed: np.ndarray
    one_step_max_abs_diff: float = float("nan")

    @property
    def failures(self) -> dict[str, int]:
        """Inputs out of tolerance, per feature."""
        counts = self.feature_failed.sum(axis=0)
        return {k: int(c) for k, c in zip(self.max_abs_diff, counts, strict=True)}

    @property
    def one_step_failures(self) -> int:
        return int(self.step_failed.sum())

    @property
    def failed_inputs(self) -> int:
        return int((self.feature_failed.any(axis=1) | self.step_failed).sum())

    @property
    def ok(self) -> bool:
        return self.failed_inputs == 0

    def describe(self) -> str:
        """What failed, for an error message: per input, then per feature."""
        worst = {k: v for k, v in self.failures.items() if v}
        diffs = {k: float(f"{v:.3g}") for k, v in self.max_abs_diff.items()}
        return (
            f"{self.failed_inputs} of {self.n} inputs out of tolerance (rtol={self.rtol:g}, "
            f"atol={self.atol:g}); failures per feature {worst}, one-step map failures "
            f"{self.one_step_failures}; max |diff| per feature {diffs}, one-step map "
            f"{self.one_step_max_abs_diff:.3g}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "n": self.n,
            "rtol": self.rtol,
            "atol": self.atol,
            "max_abs_diff": self.max_abs_diff,
            "excused_steps_to_converge": self.excused_steps,
            "one_step_max_abs_diff": self.one_step_max_abs_diff,
        }


def _excuse_steps(module: TrajectoryFeatures, traj: torch.Tensor, bad: np.ndarray,
                  rtol: float) -> np.ndarray:
    """Inputs among ``bad`` whose integer ``steps_to_converge`` may legitimately differ: some
    step norm lies within ``rtol·tol`` of the tolerance. ``traj`` is time-major."""
    step = torch.linalg.vector_norm(traj[1:] - traj[:-1], dim=-1).T.numpy()  # [N, T]
    near = (np.abs(step - module.tol) <= rtol * module.tol).any(axis=1)
    return bad & near


def _compare_features(module: TrajectoryFeatures, ref: np.ndarray, got: np.ndarray,
                      traj: torch.Tensor | None, rtol: float,
                      atol: float) -> tuple[dict[str, float], int, np.ndarray]:
    diffs: dict[str, float] = {}
    excused = 0
    failed = np.zeros(ref.shape, dtype=bool)
    for j, name in enumerate(module.feature_names):
        diff, bad = compare_values(ref[:, j], got[:, j], rtol, atol)
        if name == "steps_to_converge" and bad.any() and traj is not None:
            ok = _excuse_steps(module, traj, bad, rtol)
            excused += int(ok.sum())
            bad &= ~ok
        diffs[name] = float(diff.max()) if len(diff) else 0.0
        failed[:, j] = bad
    return diffs, excused, failed


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
    has already computed ``module(x)``): whole trajectories on each side.

    Only meaningful for a contractive map: where the map is chaotic, float32 round-off grows
    along the trajectory and the two legitimately disagree (:func:`check_same_trajectory`
    is what the exporter requires).

    ``steps_to_converge`` is an integer: a difference is excused only where some step norm of
    that sample lies within ``rtol·tol`` of the tolerance, so that either side of the
    comparison is a legitimate rounding.
    """
    xt = torch.as_tensor(x, dtype=torch.float32)
    traj, x_hat = module.time_major(xt)  # once: forward() is features(x, *time_major(x))
    if reference is None:
        reference = module.features(xt, x_hat, traj).numpy()
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(onnx_features, dtype=np.float64)
    diffs, excused, failed = _compare_features(module, ref, got, traj, rtol, atol)
    return ParityReport(len(x), rtol, atol, diffs, excused, failed, np.zeros(len(x), bool))


@torch.inference_mode()
def check_same_trajectory(
    module: TrajectoryFeatures,
    x: np.ndarray,
    onnx_features: np.ndarray,
    onnx_trajectory: np.ndarray,
    onnx_x_hat: np.ndarray,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
) -> ParityReport:
    """The deterministic parity check: what does not depend on the map's dynamics.

    (a) The one-step map: torch's ``E(x)``, ``D(z0)`` and ``f(z_t) = E(D(z_t))`` evaluated at
    ONNX Runtime's own ``z0``, ``z_t`` must equal ONNX Runtime's ``z0``, ``x̂`` and ``z_{t+1}``
    (per value, scale = median |z| over the trajectory). (b) The features: torch's
    ``features(x, x̂, traj)`` on ONNX Runtime's trajectory must equal ONNX Runtime's features.
    Neither compounds round-off over ``T`` steps, so a chaotic but finite map passes both while
    a wrong kernel or a mis-exported formula does not.

    Parameters
    ----------
    onnx_trajectory : ndarray, shape (T+1, N, d)
        Time-major, as the graph holds it.
    onnx_x_hat : ndarray, shape (N, *input_shape)
    """
    xt = torch.as_tensor(x, dtype=torch.float32)
    traj = torch.as_tensor(np.asarray(onnx_trajectory), dtype=torch.float32)
    x_hat = torch.as_tensor(np.asarray(onnx_x_hat), dtype=torch.float32)
    n = len(x)
    pairs = [(module.encoder(xt), traj[0]), (module.decoder(traj[0]), x_hat),
             (module.encoder(x_hat), traj[1])]
    for t in range(1, module.steps):
        pairs.append((module.encoder(module.decoder(traj[t])), traj[t + 1]))
    step_failed = np.zeros(n, dtype=bool)
    step_max = 0.0
    for ref_t, got_t in pairs:
        r = ref_t.reshape(n, -1).numpy()
        g = got_t.reshape(n, -1).numpy()
        diff, bad = compare_values(r.ravel(), g.ravel(), rtol, atol)
        step_failed |= bad.reshape(n, -1).any(axis=1)
        step_max = max(step_max, float(diff.max()) if diff.size else 0.0)
    ref = module.features(xt, x_hat, traj).numpy().astype(np.float64)
    got = np.asarray(onnx_features, dtype=np.float64)
    diffs, excused, failed = _compare_features(module, ref, got, traj, rtol, atol)
    return ParityReport(n, rtol, atol, diffs, excused, failed, step_failed, step_max)
