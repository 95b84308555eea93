"""oodguard.inspect on constructed maps whose attractors, contraction and memorization are known,
and the monitor on a tiny training run."""

from __future__ import annotations

import numpy as np
import pytest

from oodguard.inspect import (
    AttractorMonitor,
    InspectionReport,
    compare_dictionaries,
    contraction_ratios,
    find_basins,
    inspect_map,
    iterate,
    memorization_coefficient,
    omp_mse,
    random_orthogonal_basis,
)


class SnapMap:
    """Latent space = input space (identity encoder); the decoder pulls a point halfway to
    its nearest centre: ``f(z) = c(z) + rate · (z − c(z))``. Its attractors are exactly the
    centres, with ``rate`` as the contraction."""

    def __init__(self, centers: np.ndarray, rate: float = 0.5) -> None:
        self.centers = np.asarray(centers, dtype=np.float32)
        self.rate = rate
        self.latent_dim = self.centers.shape[1]
        self.input_shape = (self.centers.shape[1],)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        d = ((z[:, None, :] - self.centers[None]) ** 2).sum(-1)
        c = self.centers[np.argmin(d, axis=1)]
        return (c + self.rate * (z - c)).astype(np.float32)

    def step(self, z: np.ndarray) -> np.ndarray:
        return self.encode(self.decode(z))


def _points_around(centers: np.ndarray, counts: list[int], spread: float,
                   seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + spread * rng.uniform(-1, 1, size=(n, len(c)))
                           for c, n in zip(centers, counts, strict=True)]).astype(np.float32)


def test_attractor_count_and_basins_on_a_map_with_three_known_fixed_points() -> None:
    centers = np.array([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]], dtype=np.float32)
    latent = SnapMap(centers, rate=0.3)
    codes = _points_around(centers, [10, 30, 20], spread=1.0)
    run = iterate(latent.step, codes, tol=1e-4, max_steps=100)
    assert run.converged.all()
    assert (run.steps > 1).all() and (run.steps < 20).all()
    basins = find_basins({"train": run}, radius=0.5)
    assert basins.count == 3
    # largest basin first; each attractor is its centre
    np.testing.assert_array_equal(basins.sizes["train"], [30, 20, 10])
    np.testing.assert_allclose(basins.attractors, centers[[1, 2, 0]], atol=1e-3)


def test_memorizing_map_has_memorization_coefficient_one() -> None:
    """Attractors equal to training samples: every decoded attractor *is* a training sample."""
    rng = np.random.default_rng(1)
    x_train = rng.uniform(0, 1, size=(6, 8)).astype(np.float32) + 4 * np.eye(6, 8,
                                                                                dtype=np.float32)
    latent = SnapMap(x_train)
    report = inspect_map(latent, x_train=x_train, n_noise=16, seed=0)
    assert report.attractor_count == 6  # every training sample is its own attractor
    assert report.memorization_mean == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(report.memorization, 1.0, atol=1e-5)
    # each attractor's nearest training sample is the one it equals
    np.testing.assert_allclose(report.decoded, x_train[report.nearest_train], atol=1e-3)


def test_contractive_map_onto_one_point_gives_the_cosine_to_the_nearest_sample() -> None:
    rng = np.random.default_rng(2)
    x_train = rng.uniform(0, 1, size=(50, 5)).astype(np.float32)
    c = np.array([[1.0, -1.0, 0.5, 2.0, 0.0]], dtype=np.float32)
    report = inspect_map(SnapMap(c, rate=0.5), x_train=x_train, n_noise=32, rel_tol=1e-6)
    assert report.attractor_count == 1
    assert report.basin_train[0] == 50 and report.basin_noise[0] == 32
    cos = (x_train @ c[0]) / (np.linalg.norm(x_train, axis=1) * np.linalg.norm(c[0]))
    assert report.memorization_mean == pytest.approx(float(cos.max()), abs=1e-5)
    assert report.memorization_mean < 0.99  # not a training sample: no memorization
    assert report.nearest_train[0] == int(np.argmax(cos))
    assert report.memorization_std == pytest.approx(0.0)
    # the map contracts by exactly 0.5 everywhere
    np.testing.assert_allclose(report.lipschitz, 0.5, rtol=1e-3)
    np.testing.assert_allclose(report.step_ratio, 0.5, rtol=1e-3)
    assert report.to_dict()["contraction"]["fraction_lipschitz_below_1"] == 1.0


def test_memorization_coefficient_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="same shape"):
        memorization_coefficient(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="empty"):
        memorization_coefficient(np.ones((2, 3)), np.ones((0, 3)))
    # a zero attractor has cosine 0 with everything, not NaN
    assert memorization_coefficient(np.zeros((1, 3)), np.ones((2, 3))).mean == 0.0


def test_contraction_ratio_needs_a_positive_step() -> None:
    with pytest.raises(ValueError, match="The 'eps' parameter must be > 0"):
        contraction_ratios(lambda z: z, np.ones((2, 2), np.float32), eps=0.0)


def test_expanding_map_is_reported_as_not_converged() -> None:
    latent = SnapMap(np.zeros((1, 3), np.float32), rate=1.5)  # moves away from its fixed point
    report = inspect_map(latent, codes=np.ones((8, 3), np.float32), n_noise=4, max_steps=30)
    assert report.scalars["converged_train"] == 0
    assert np.median(report.lipschitz) == pytest.approx(1.5, rel=1e-3)
    assert np.isnan(report.memorization_mean)  # no training samples given
    assert "not measured" in report.summary()


def test_report_round_trips_through_npz_and_refuses_other_files() -> None:
    c = np.array([[1.0, 2.0]], np.float32)
    report = inspect_map(SnapMap(c), x_train=np.ones((4, 2), np.float32), n_noise=4, horizon=8)
    back = InspectionReport.from_npz(report.to_npz())
    assert back.to_dict() == report.to_dict()
    np.testing.assert_array_equal(back.codes, report.codes)
    with pytest.raises(ValueError, match="not an oodguard inspection file"):
        InspectionReport.from_npz(b"not a zip")
    import io

    buf = io.BytesIO()
    np.savez(buf, format_version=np.array(99))
    with pytest.raises(ValueError, match="newer"):
        InspectionReport.from_npz(buf.getvalue())


def test_omp_and_bases() -> None:
    q = random_orthogonal_basis(6, 4, seed=3)
    np.testing.assert_allclose(q @ q.T, np.eye(4), atol=1e-10)
    x = np.random.default_rng(0).normal(size=(10, 6))
    assert omp_mse(random_orthogonal_basis(6, 6), x, 6) == pytest.approx(0.0, abs=1e-20)
    assert omp_mse(q, x, 1) > omp_mse(q, x, 4) > 0
    with pytest.raises(ValueError, match="The 'k' parameter must be an int in"):
        random_orthogonal_basis(3, 4)


def test_dictionary_comparison_on_a_map_whose_attractors_are_the_data() -> None:
    """Atoms = the training samples: one atom codes a training sample exactly."""
    rng = np.random.default_rng(4)
    x_train = (rng.uniform(0, 1, size=(4, 4)) + 3 * np.eye(4)).astype(np.float32)
    # Gaussian codes N(0, I) are near the origin: centre the map there and scale the data in
    latent = SnapMap(x_train / 3.0)
    cmp = compare_dictionaries(latent, x_train, x_train / 3.0, n_atoms=64, sparsities=(1 / 64,))
    assert cmp.distinct_atoms == 4  # every Gaussian code ends on one of the four samples
    assert set(cmp.mse) == {"attractors", "random_orthogonal", "pca"}
    assert cmp.mse["attractors"][0] < 1e-6  # the atoms stop within tol of the samples
    assert cmp.mse["random_orthogonal"][0] > 0.01
    assert cmp.to_dict()["nonzero"] == [1]


def test_monitor_records_a_tiny_training_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    from conftest import make_data

    from oodguard.demo.train import MLPAutoencoder

    torch.manual_seed(0)
    x = make_data(128, seed=5)
    model = MLPAutoencoder(dim=16, hidden=8, latent=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    monitor = AttractorMonitor(model, x[:64], n_noise=16, max_steps=50)
    xt = torch.from_numpy(x)
    for epoch in range(3):
        model.train()
        loss = torch.nn.functional.mse_loss(model(xt), xt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec = monitor.update(epoch)
        assert model.training  # the monitor put the model back in the mode it was in
        assert rec.attractors >= rec.attractors_train >= 1
        assert -1.0 <= rec.memorization <= 1.0
        assert 0.0 <= rec.converged <= 1.0
    cols = monitor.to_dict()
    assert cols["epoch"] == [0, 1, 2]
    assert all(n >= 1 for n in cols["attractors_train"])
    path = monitor.plot(tmp_path / "monitor.png")
    assert (tmp_path / "monitor.png").stat().st_size > 1000 and path.endswith("monitor.png")
    with pytest.raises(ValueError, match="non-empty batch"):
        AttractorMonitor(model, np.zeros((0, 16), np.float32))


def test_sweep_benchmark_quick_mode_writes_its_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("torch")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "sweep.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "inspect_sweep.py"), "--quick",
                    "--no-plots", "--out", str(out)], check=True, capture_output=True,
                   timeout=600)
    doc = json.loads(out.read_text())
    assert [r["latent"] for r in doc["summary"]] == [2, 8]
    run = doc["runs"][0]
    # the monitor ran from the training loop: before training, every 5 epochs, at the end
    assert run["over_training"]["epoch"] == [0, 5, 10]
    assert set(run["dictionary"]["mse"]) == {"attractors", "random_orthogonal", "pca"}
    assert 0.0 < run["memorization_mean"] <= 1.0


def test_inspection_never_imports_the_exporter() -> None:
    """The exporter imports oodguard.inspect (the one iteration, the report); the reverse would
    be an import cycle, and would make ``oodguard inspect BUNDLE`` need torch."""
    import ast
    from pathlib import Path

    import oodguard.inspect

    root = Path(oodguard.inspect.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any(n == "oodguard.export" or n.startswith("oodguard.export.")
                           for n in names), f"{path.name} imports {names}"
