"""The dynamics record (contraction, per-feature stability), diverging maps and denormals."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from oodguard.bundle import read_bundle
from oodguard.errors import ExportError
from oodguard.export import discover_attractors, export_bundle
from oodguard.export.exporter import check_outputs, export_graphs
from oodguard.export.stability import (
    flush_denormal,
    flush_denormal_enabled,
    measure_contraction,
    measure_stability,
)
from oodguard.export.trajectory import TrajectoryFeatures
from oodguard.features import FEATURE_NAMES

D = 8
Q = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0)))[0]
TRAJECTORY = ("last_step", "convergence_rate", "path_length", "displacement",
              "attractor_distance", "mean_attractor_distance", "terminal_knn")


class Rotate(nn.Module):
    """``x ▶ x Qᵀ`` as a Linear layer (a Gemm in ONNX, so the two runtimes round differently)."""

    def __init__(self, transpose: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(D, D, bias=False)
        self.lin.weight.data = (Q.T if transpose else Q).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)  # type: ignore[no-any-return]


class Logistic(nn.Module):
    """Encoder ``c = clamp(Qᵀx, 0, 1) ▶ r·c·(1 − c)``: with the decoder ``z ▶ Qz`` the latent
    map is the logistic map in every coordinate, chaotic for r = 3.9 and bounded in [0, 1]."""

    def __init__(self, r: float) -> None:
        super().__init__()
        self.rot, self.r = Rotate(True), r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.rot(x).clamp(0, 1)
        return self.r * c * (1 - c)


class Contract(nn.Module):
    """Encoder ``0.9·Qᵀx + 0.05``: the latent map contracts by exactly 0.9 per step towards one
    fixed point, slowly enough that the terminal points of 16 steps still spread (0.9¹⁶ ≈ 0.19
    of the initial spread). Where they collapse to round-off (e.g. ``tanh`` with slope 0.38 at
    its fixed point), ``terminal_mahalanobis`` holds only round-off and is rightly unstable."""

    def __init__(self) -> None:
        super().__init__()
        self.rot = Rotate(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.9 * self.rot(x) + 0.05


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    u = np.random.default_rng(seed).uniform(0.05, 0.95, size=(n, D))
    return (u @ Q.numpy().T).astype(np.float32)


@pytest.fixture(scope="module")
def chaotic_bundle(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The chaotic logistic map, exported with default parity settings."""
    path = tmp_path_factory.mktemp("dyn") / "chaotic"
    report = export_bundle(path, encoder=Logistic(3.9).eval(), decoder=Rotate(False).eval(),
                           x_train=_inputs(150), steps=16, n_noise=16, max_attractors=64)
    return report


@pytest.fixture(scope="module")
def contractive_bundle(tmp_path_factory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("dyn") / "contractive"
    return export_bundle(path, encoder=Contract().eval(), decoder=Rotate(False).eval(),
                         x_train=_inputs(150), steps=16, n_noise=16)


def test_a_chaotic_but_finite_map_exports_with_default_settings(chaotic_bundle) -> None:  # type: ignore[no-untyped-def]
    """Whole trajectories disagree (round-off amplified by the chaos), the deterministic
    parity (one-step map, features of the same trajectory) holds at the default tolerance."""
    r = chaotic_bundle
    assert r.parity.ok and r.parity.rtol == 1e-3 and r.parity.atol == 1e-4
    assert r.parity.one_step_max_abs_diff < 1e-5
    m = read_bundle(r.path).manifest
    assert set(m.dynamics["stability"]) == set(FEATURE_NAMES)
    c = m.dynamics["contraction"]
    assert c["converged_fraction"] == 0.0 and c["finite_fraction"] == 1.0
    assert c["expanding_fraction"] > 0.3 and c["step_ratio_quantiles"]["0.5"] > 0.9


def test_stability_flags_the_chaotic_map_and_passes_the_contractive_one(  # type: ignore[no-untyped-def]
        chaotic_bundle, contractive_bundle) -> None:
    chaotic = chaotic_bundle.dynamics["stability"]
    calm = contractive_bundle.dynamics["stability"]
    for name in TRAJECTORY:  # features of the whole trajectory: moved by chaos
        assert not chaotic[name]["stable"] and chaotic[name]["deviation"] > 0.1, name
    # features of z0 and x̂ only take one step: stable even for the chaotic map
    for name in ("recon_error", "first_step", "latent_knn", "latent_mahalanobis"):
        assert chaotic[name]["stable"], name
    for name in FEATURE_NAMES:
        assert calm[name]["stable"] and calm[name]["deviation"] < 5e-3, (name, calm[name])
    c = contractive_bundle.dynamics["contraction"]
    assert c["finite_fraction"] == 1.0 and c["expanding_fraction"] == 0.0
    q = c["step_ratio_quantiles"]
    assert q["0.05"] == pytest.approx(0.9, abs=1e-3) and q["1"] == pytest.approx(0.9, abs=1e-3)


def test_measure_stability_rule() -> None:
    """deviation = 99th percentile of |onnx − torch| / IQR(train); stable at ≤ 1%."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1000, 2))  # IQR ≈ 1.349
    got = ref.copy()
    got[:, 0] += 0.005  # 0.4% of the IQR everywhere
    got[:5, 1] += 10.0  # 0.5% of the inputs move a lot: below the 99th percentile
    got[:20, 0] += 1.0  # 2%: above it
    rows = np.ones(1000, dtype=bool)
    out = measure_stability(["a", "b"], ref, got, rows, atol=1e-4)
    iqr = np.subtract(*np.quantile(ref[:, 0], [0.75, 0.25]))
    assert out["a"]["deviation"] == pytest.approx(1.005 / iqr, rel=1e-6)
    assert not out["a"]["stable"]
    assert out["b"]["deviation"] == 0.0 and out["b"]["stable"]
    out = measure_stability(["a"], ref[:, :1], ref[:, :1] + 0.005, rows, atol=1e-4)
    assert out["a"]["stable"] and out["a"]["deviation"] == pytest.approx(0.005 / iqr)
    nan = ref[:, :1].copy()
    nan[:50] = np.nan  # NaN on one side only: infinitely far
    assert measure_stability(["a"], ref[:, :1], nan, rows, atol=1e-4)["a"]["deviation"] == np.inf


def test_contraction_of_a_linear_map() -> None:
    codes = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    c = measure_contraction(nn.Identity(), _Scale(0.5), codes, steps=6, tol=1e-9)
    assert c["converged_fraction"] == 0.0 and c["n_ratios"] == 50 * 5
    assert all(v == pytest.approx(0.5, rel=1e-5) for v in c["step_ratio_quantiles"].values())


class _Scale(nn.Module):
    def __init__(self, f: float) -> None:
        super().__init__()
        self.f = f

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.f


class _Cube(nn.Module):
    """``z ▶ 2z³``: codes inside |z| < 0.7 converge to 0, codes outside overflow."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 2 * z**3


def test_diverging_codes_are_dropped_with_a_warning(caplog) -> None:  # type: ignore[no-untyped-def]
    x = np.concatenate([np.full((30, 2), 0.3), np.full((10, 2), 2.0)]).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="oodguard.export.attractors"):
        r = discover_attractors(nn.Identity(), _Cube(), x, n_noise=0)
    assert r.n_nonfinite == 10 and r.n_data_converged == 30
    assert np.isfinite(r.attractors).all() and len(r.attractors) == 1
    assert "10 of 40 codes diverged to NaN/infinity" in caplog.text
    assert "10 diverged to NaN/inf and dropped" in r.summary()


def test_a_map_that_diverges_everywhere_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(0).uniform(1, 2, size=(20, 3)).astype(np.float32)
    with pytest.raises(ExportError, match=r"diverges: all 36 codes .* NaN or infinity within 500 "
                                          r"steps.* weight decay"):
        export_bundle(tmp_path / "b", encoder=nn.Identity(), decoder=_Scale(3.0), x_train=x,
                      n_noise=16)
    assert not (tmp_path / "b").exists()


def test_flush_denormal_restores_the_previous_mode() -> None:
    before = flush_denormal_enabled()
    tiny = torch.tensor([1e-39])
    with flush_denormal() as supported:
        if supported:
            assert (tiny * 1.0).item() == 0.0
    assert flush_denormal_enabled() == before


def test_parity_sessions_treat_denormals_as_zero() -> None:
    """f(z) = z/2 for 40 steps from |z| ~ 1e-30 reaches the subnormal range (< 1.2e-38) after
    ~27 steps; inside flush_denormal() (as the exporter runs its checks) ONNX Runtime flushes
    it to zero on the calling thread too, so converged trajectories cost no subnormal
    arithmetic. (ONNX Runtime's session option alone covers its pool threads, and the calling
    thread only for the first session of the process.)"""
    module = TrajectoryFeatures(nn.Identity(), _Scale(0.5), torch.zeros(1, 2), steps=40,
                                tol=1e-3).eval()
    x = np.array([[1e-30, 0.75e-30]], np.float32)
    check = export_graphs(module, torch.from_numpy(x), rewrite_elu=False).check
    with flush_denormal() as supported:
        _, traj, _ = check_outputs(check, x)
    if not supported:
        pytest.skip("this CPU has no flush-to-zero mode (torch.set_flush_denormal)")
    assert 1.2e-38 < traj[20, 0, 0] < 1e-36  # still normal
    assert (traj[30:] == 0).all()  # 1e-30·2^-30 ≈ 9e-40 would be subnormal: flushed


def test_export_warns_when_most_codes_do_not_converge_within_t(contractive_bundle) -> None:  # type: ignore[no-untyped-def]
    """The map contracts by 0.9 a step: discovery's 500-step search converges, but within
    T = 16 no training code does, so the trajectory features measure transients."""
    r = contractive_bundle
    assert r.attractors.n_data_converged == r.attractors.n_data  # the old warning's silence
    assert r.dynamics["contraction"]["converged_fraction"] == 0.0
    (warning,) = [w for w in r.warnings if "converge within" in w]
    assert warning.startswith("only 0% of 150 training codes converge within T=16 steps")
    assert "transients, not the distance to attractors" in warning
    assert "steps_to_converge" in warning and "attractor_distance" in warning
    assert f"warning: {warning}" in str(r)


def test_no_convergence_warning_when_t_is_long_enough(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level(logging.WARNING):
        r = export_bundle(tmp_path / "b", encoder=Contract().eval(),
                          decoder=Rotate(False).eval(), x_train=_inputs(150), steps=64,
                          n_noise=16)
    assert r.dynamics["contraction"]["converged_fraction"] == 1.0
    assert not [w for w in r.warnings if "converge within" in w]
    assert "converge within" not in caplog.text


def test_export_report_prints_a_short_summary(contractive_bundle) -> None:  # type: ignore[no-untyped-def]
    text = str(contractive_bundle)
    lines = text.splitlines()
    assert 8 <= len(lines) <= 14, text
    assert lines[0].startswith(f"bundle {contractive_bundle.path} (model.onnx ")
    assert "T = 16 steps, latent size 8, 13 features" in text
    assert "attractors: " in text and "from 150 training codes" in text
    assert "parity vs torch: ok on " in text
    assert lines[-1] == "details: .attractors, .parity, .baselines, .dynamics, .warnings"
    assert "\n" not in repr(contractive_bundle) and len(repr(contractive_bundle)) < 200
