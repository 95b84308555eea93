"""Export: attractor discovery, the trajectory graph, parity with torch, refusals."""

from __future__ import annotations

import ast
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from oodguard.bundle import MODEL_FILE, read_bundle
from oodguard.errors import ExportError
from oodguard.export import TrajectoryFeatures, check_parity, discover_attractors, export_bundle
from oodguard.export.attractors import merge_points
from oodguard.export.autoencoder import as_encoder_decoder
from oodguard.export.baselines import fit_latent_baselines
from oodguard.export.exporter import export_onnx
from oodguard.features import FEATURE_NAMES


class Scale(nn.Module):
    def __init__(self, factor: float, offset: float = 0.0) -> None:
        super().__init__()
        self.factor, self.offset = factor, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor + self.offset


def test_parity_torch_vs_onnxruntime_on_fresh_inputs(raw_bundle, autoencoder, data) -> None:  # type: ignore[no-untyped-def]
    """Re-check the written bundle against the torch reference on inputs export never saw:
    in-distribution, uniform noise and far out-of-range values."""
    b = read_bundle(raw_bundle)
    enc, dec = as_encoder_decoder(model=autoencoder)
    # Rebuild the reference from the same attractors: discovery is deterministic.
    report = discover_attractors(enc, dec, data["train"])
    assert len(report.attractors) == b.manifest.attractor_count
    baselines = fit_latent_baselines(enc, dec, data["train"], steps=b.manifest.steps,
                                     resolution=report.tol)
    module = TrajectoryFeatures(enc, dec, torch.from_numpy(report.attractors),
                                steps=b.manifest.steps, tol=b.manifest.convergence_tol,
                                baselines=baselines)
    x = np.concatenate([data["test"][:200], data["noise"][:100], 5 * data["noise"][:20]])
    sess = ort.InferenceSession(b.files[MODEL_FILE], providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    parity = check_parity(module, got, x)
    assert parity.ok, parity.max_abs_diff
    assert set(parity.max_abs_diff) == set(FEATURE_NAMES)
    assert b.manifest.parity["rtol"] == 1e-3  # the stated tolerance is recorded in the bundle


def test_attractor_distance_is_exact_near_an_attractor() -> None:
    """The expanded form ‖z‖² − 2z·a + ‖a‖² loses precision near an attractor; the graph picks
    the nearest with a matrix product and then measures the exact distance."""
    a = torch.tensor([[1000.0, -2000.0, 500.0], [0.0, 0.0, 0.0]])
    module = TrajectoryFeatures(nn.Identity(), nn.Identity(), a, steps=2, tol=1e-3).eval()
    offset = torch.tensor([3e-3, -4e-3, 0.0])  # |offset| = 5e-3
    x = (a[0] + offset)[None]
    data = export_onnx(module, x)
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    f = dict(zip(FEATURE_NAMES, got[0][0], strict=True))
    z = np.float64(x.numpy()[0])
    exact = np.linalg.norm(z - a[0].numpy().astype(np.float64))
    assert f["attractor_distance"] == pytest.approx(exact, rel=1e-2)
    # For contrast: the expanded form in float32 is off by orders of magnitude here.
    z32, a32 = x.numpy()[0], a[0].numpy()
    expanded = np.sqrt(max(float(z32 @ z32 - 2 * z32 @ a32 + a32 @ a32), 0.0))
    assert abs(expanded - exact) > 100 * abs(f["attractor_distance"] - exact)


def test_features_of_a_known_contraction() -> None:
    """f(z) = 0.5·z (encoder = identity, decoder = ×0.5): every formula can be checked by hand."""
    steps, tol = 6, 0.1
    a = torch.zeros(1, 2)
    module = TrajectoryFeatures(nn.Identity(), Scale(0.5), a, steps=steps, tol=tol).eval()
    x = torch.tensor([[3.0, 4.0]])  # |z0| = 5
    with torch.inference_mode():
        f = dict(zip(FEATURE_NAMES, module(x)[0].tolist(), strict=True))
    norms = 5 * 0.5 ** np.arange(steps + 1)  # |z_t|
    step = norms[:-1] - norms[1:]  # collinear: |z_{t+1} - z_t| = |z_t| / 2
    assert f["recon_error"] == pytest.approx(((3 - 1.5) ** 2 + (4 - 2) ** 2) / 2)
    assert f["first_step"] == pytest.approx(step[0])
    assert f["last_step"] == pytest.approx(step[-1])
    t = np.arange(steps)
    assert f["convergence_rate"] == pytest.approx(np.polyfit(t, np.log(step + tol), 1)[0], rel=1e-5)
    assert f["steps_to_converge"] == int(np.argmax(step <= tol))
    assert f["path_length"] == pytest.approx(step.sum())
    assert f["displacement"] == pytest.approx(norms[0] - norms[-1])
    assert f["attractor_distance"] == pytest.approx(norms[-1])
    assert f["mean_attractor_distance"] == pytest.approx(norms.mean())


def test_discovery_finds_the_fixed_points() -> None:
    """Encoder identity, decoder pulls each code halfway to the nearest of two points."""

    class TwoWells(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            c = torch.where(z[:, :1] > 0, torch.tensor([[2.0, 0.0]]), torch.tensor([[-2.0, 0.0]]))
            return z + 0.5 * (c - z)

    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32) * 2
    r = discover_attractors(nn.Identity(), TwoWells(), x, n_noise=50)
    assert len(r.attractors) == 2
    np.testing.assert_allclose(np.sort(r.attractors[:, 0]), [-2, 2], atol=0.05)
    assert r.n_data_converged == 200 and r.n_noise_converged == 50
    assert r.members.sum() == 250


def test_merge_points() -> None:
    pts = np.array([[0, 0], [0.05, 0], [1, 1], [1.02, 1], [5, 5]], dtype=np.float32)
    centers, members = merge_points(pts, 0.1)
    assert len(centers) == 3 and members.tolist() == [2, 2, 1]


def test_exporter_refuses_a_bundle_that_disagrees(monkeypatch, autoencoder, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Features 1% off on the same trajectory: refused, and every input counted once however
    many features and branches fail."""
    import oodguard.export.exporter as exporter

    real = exporter.check_outputs

    def wrong(model, x):  # type: ignore[no-untyped-def]
        f, traj, x_hat = real(model, x)
        return f * 1.01, traj, x_hat

    monkeypatch.setattr(exporter, "check_outputs", wrong)
    n = 256 + 64  # the default check set: up to 256 training rows and 64 noise inputs
    with pytest.raises(ExportError, match=rf"same trajectory .*: {n} of {n} inputs out of "
                                          r"tolerance .* not written") as err:
        export_bundle(tmp_path / "b", model=autoencoder, x_train=data["train"][:300], steps=4)
    msg = str(err.value)
    per_feature = ast.literal_eval(re.search(r"failures per feature (\{.*?\})", msg)[1])
    assert max(per_feature.values()) == n  # inputs per feature, not summed over both branches
    assert "'recon_error': 0.00" in msg  # max differences are reported, not 0.0
    assert not (tmp_path / "b").exists()


def test_exporter_refuses_a_wrong_one_step_map(monkeypatch, autoencoder, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A one-step map that differs (z_{t+1} shifted for 5 inputs): refused, 5 inputs named."""
    import oodguard.export.exporter as exporter

    real = exporter.check_outputs

    def wrong(model, x):  # type: ignore[no-untyped-def]
        f, traj, x_hat = real(model, x)
        traj = traj.copy()
        traj[2:, :5] += 0.1
        return f, traj, x_hat

    monkeypatch.setattr(exporter, "check_outputs", wrong)
    with pytest.raises(ExportError, match=r"one-step map failures 5; .* one-step map 0.1"):
        export_bundle(tmp_path / "b", model=autoencoder, x_train=data["train"][:300], steps=4)


def test_parity_counts_nan_mismatch_as_infinite_difference() -> None:
    from oodguard.export.parity import compare_values

    diff, bad = compare_values(np.array([1.0, np.nan, np.nan, np.inf]),
                               np.array([1.0, np.nan, 2.0, np.inf]), 1e-3, 1e-4)
    assert bad.tolist() == [False, False, True, False]
    assert diff.tolist() == [0.0, 0.0, np.inf, 0.0]


def test_export_with_encoder_decoder_pair(autoencoder, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = export_bundle(tmp_path / "b", encoder=autoencoder.encoder, decoder=autoencoder.decoder,
                      x_train=data["train"][:300], steps=3)
    assert r.parity.ok and read_bundle(r.path).manifest.steps == 3
    assert autoencoder.training is False  # the caller's module is not changed


def test_export_refusals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(0).uniform(size=(20, 4)).astype(np.float32)
    # A latent shaped (N, 2, 2) is no longer refused: it is flattened (tests/test_export_models.py)
    with pytest.raises(ExportError, match="reconstruct the input's shape"):
        export_bundle(tmp_path / "b", encoder=nn.Identity(), decoder=nn.Linear(4, 3), x_train=x)
    with pytest.raises(ExportError, match="NaN"):
        export_bundle(tmp_path / "c", encoder=nn.Identity(), decoder=nn.Identity(),
                      x_train=np.full((3, 4), np.nan, np.float32))
    with pytest.raises(ExportError, match="no encode/decode"):
        export_bundle(tmp_path / "d", model=nn.Linear(4, 4), x_train=x)
    with pytest.raises(ValueError,
                       match="The 'steps' parameter of TrajectoryFeatures must be an "
                             "int >= 2"):
        export_bundle(tmp_path / "e", encoder=nn.Identity(), decoder=Scale(0.5), x_train=x + 1,
                      steps=1)
