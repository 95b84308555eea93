"""The latent baselines inside the graph (latent_knn, latent_mahalanobis, terminal_*) against
scikit-learn, through ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.covariance import LedoitWolf
from sklearn.neighbors import NearestNeighbors
from torch import nn

from oodguard.bundle import MODEL_FILE, read_bundle
from oodguard.errors import ExportError
from oodguard.export.autoencoder import as_encoder_decoder
from oodguard.export.baselines import fit_latent_baselines, fit_reference, ledoit_wolf
from oodguard.export.exporter import export_onnx
from oodguard.export.trajectory import TrajectoryFeatures
from oodguard.features import FEATURE_NAMES, NONNEGATIVE_FEATURES

BASELINES = ("latent_knn", "latent_mahalanobis", "terminal_knn", "terminal_mahalanobis")
# Stated tolerance against scikit-learn (float64): the graph runs in float32, and the codes
# themselves differ between ONNX Runtime and torch by ~1e-6 relative.
RTOL, ATOL = 1e-4, 1e-5


def _col(features: np.ndarray, name: str) -> np.ndarray:
    return features[:, FEATURE_NAMES.index(name)].astype(np.float64)


def test_names_are_appended_and_nonnegative() -> None:
    assert FEATURE_NAMES[-4:] == BASELINES
    assert set(BASELINES) <= NONNEGATIVE_FEATURES


def test_bundle_baselines_equal_sklearn(raw_bundle, autoencoder, data) -> None:  # type: ignore[no-untyped-def]
    """The written bundle's latent_* and terminal_* through ONNX Runtime equal
    NearestNeighbors (k = 5) and LedoitWolf.mahalanobis fitted on the training codes (all 800
    are in the bank) and on their terminal points after T steps."""
    b = read_bundle(raw_bundle)
    assert b.manifest.dynamics["baselines"]["k"] == 5
    assert b.manifest.dynamics["baselines"]["initial"]["bank_size"] == len(data["train"])
    enc, dec = as_encoder_decoder(model=autoencoder)
    with torch.inference_mode():
        codes = enc(torch.from_numpy(data["train"]))
        term = codes
        for _ in range(b.manifest.steps):
            term = enc(dec(term))
        x = np.concatenate([data["test"][:200], data["noise"][:100], 3 * data["noise"][:20]])
        z0 = enc(torch.from_numpy(x))
        zt = z0
        for _ in range(b.manifest.steps):
            zt = enc(dec(zt))
    sess = ort.InferenceSession(b.files[MODEL_FILE], providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    for name, bank, z in (("latent", codes, z0), ("terminal", term, zt)):
        bank64, z64 = bank.numpy().astype(np.float64), z.numpy().astype(np.float64)
        knn = NearestNeighbors(n_neighbors=5).fit(bank64).kneighbors(z64)[0][:, -1]
        np.testing.assert_allclose(_col(got, f"{name}_knn"), knn, rtol=RTOL,
                                   atol=ATOL * np.median(knn))
        maha = np.sqrt(LedoitWolf().fit(bank64).mahalanobis(z64))
        np.testing.assert_allclose(_col(got, f"{name}_mahalanobis"), maha, rtol=1e-3,
                                   atol=ATOL * np.median(maha))


def test_subsampled_bank_is_seeded_and_exact() -> None:
    """Beyond max_bank the bank is a seeded subsample of the training codes; kNN over it still
    equals scikit-learn's on that bank, through ONNX Runtime."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 6)).astype(np.float32) * [1, 2, 3, 0.5, 1, 4]
    x = x.astype(np.float32)
    b1 = fit_latent_baselines(nn.Identity(), nn.Identity(), x, steps=2, k=3, max_bank=128)
    b2 = fit_latent_baselines(nn.Identity(), nn.Identity(), x, steps=2, k=3, max_bank=128)
    assert b1.initial.bank.shape == (128, 6) and b1.initial.n_fit == 1000
    np.testing.assert_array_equal(b1.initial.bank, b2.initial.bank)
    rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in rows for r in b1.initial.bank)  # a subset, not centroids
    module = TrajectoryFeatures(nn.Identity(), nn.Identity(), torch.zeros(1, 6), steps=2,
                                tol=1e-3, baselines=b1).eval()
    q = rng.normal(size=(300, 6)).astype(np.float32) * 2
    data = export_onnx(module, torch.from_numpy(q[:4]))
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": q})[0]
    bank = b1.initial.bank.astype(np.float64)
    knn = NearestNeighbors(n_neighbors=3).fit(bank).kneighbors(q.astype(np.float64))[0][:, -1]
    np.testing.assert_allclose(_col(got, "latent_knn"), knn, rtol=RTOL, atol=ATOL)
    # Mahalanobis uses all 1000 codes, not only the bank
    maha = np.sqrt(LedoitWolf().fit(x.astype(np.float64)).mahalanobis(q.astype(np.float64)))
    np.testing.assert_allclose(_col(got, "latent_mahalanobis"), maha, rtol=1e-3, atol=ATOL)


def test_knn_is_exact_at_a_bank_code_far_from_the_origin() -> None:
    """A query equal to a bank code has k=1 distance 0 even where ‖z‖ is large: the k nearest
    are chosen by a matrix product, their distances computed exactly."""
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(200, 4)) + 1000.0).astype(np.float32)
    b = fit_latent_baselines(nn.Identity(), nn.Identity(), x, steps=2, k=1)
    module = TrajectoryFeatures(nn.Identity(), nn.Identity(), torch.zeros(1, 4), steps=2,
                                tol=1e-3, baselines=b).eval()
    data = export_onnx(module, torch.from_numpy(x[:4]))
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x[:50]})[0]
    # the expanded form ‖z‖² − 2z·b + ‖b‖² in float32 has an error of ~‖z‖²·6e-8 ≈ 0.06 here
    assert np.abs(_col(got, "latent_knn")).max() < 1e-6


def test_ledoit_wolf_equals_sklearn() -> None:
    rng = np.random.default_rng(0)
    for n, d in ((50, 3), (40, 20), (500, 8)):
        x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 5.0
        cov, shrink = ledoit_wolf(x)
        ref = LedoitWolf().fit(x)
        np.testing.assert_allclose(cov, ref.covariance_, rtol=1e-10, atol=1e-12)
        assert shrink == pytest.approx(ref.shrinkage_, rel=1e-10, abs=1e-12)


def test_collapsed_terminal_points_give_finite_distances() -> None:
    """All codes on one point (a map with a single attractor): the covariance is zero, the
    whitening falls back to the identity and the distances stay finite."""
    ref = fit_reference(np.ones((10, 3)), k=5)
    assert np.isfinite(ref.whitening).all()
    np.testing.assert_allclose(ref.whitening @ ref.whitening.T, np.eye(3), atol=1e-6)


def test_refusals() -> None:
    with pytest.raises(ExportError, match="at least k=5 training codes .* smaller knn_k"):
        fit_reference(np.zeros((3, 2)), k=5)
    with pytest.raises(ExportError, match="NaN or infinity; .* lower steps"):
        fit_reference(np.full((10, 2), np.inf), k=5)
    with pytest.raises(ValueError,
                       match="The 'knn_k' parameter must be an int >= 1. Got 0 "
                             "instead."):
        fit_latent_baselines(nn.Identity(), nn.Identity(), np.zeros((10, 2), np.float32),
                             steps=2, k=0)
    with pytest.raises(ValueError,
                       match="The 'max_bank' parameter must be an int >= knn_k=5. "
                             "Got 3 instead."):
        fit_latent_baselines(nn.Identity(), nn.Identity(), np.zeros((10, 2), np.float32),
                             steps=2, max_bank=3)
