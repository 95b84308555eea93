"""oodguard.fit / oodguard fit: train an autoencoder, export, calibrate, load — end to end on
small data; the recipe's reproducibility and early stopping; the shapes each architecture
takes; refusals; ``import oodguard`` stays free of torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import oodguard  # noqa: E402
from oodguard.calibration import auroc  # noqa: E402
from oodguard.cli import main  # noqa: E402
from oodguard.errors import BundleExistsError, InvalidInputError, InvalidParameterError  # noqa: E402
from oodguard.training import (  # noqa: E402
    Recipe,
    build_autoencoder,
    choose_arch,
    latent_size,
    train,
)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    xi = x[d.target <= 4]
    return xi[rng.permutation(len(xi))], x[d.target >= 5]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):  # type: ignore[no-untyped-def]
    xi, xo = _digits()
    out = tmp_path_factory.mktemp("fit") / "bundle"
    guard = oodguard.fit(xi[:500], xi[500:800], out=out, recipe=Recipe(max_epochs=60,
                         batch_size=32), registry=None, threads=1)
    return guard, out, xi[800:], xo


def test_fit_end_to_end_returns_a_calibrated_guard(fitted) -> None:  # type: ignore[no-untyped-def]
    guard, out, x_test, x_ood = fitted
    assert guard.bundle.path.resolve() == out.resolve() and guard.bundle.calibrated
    rng = np.random.default_rng(1)
    noise = rng.uniform(0, 1, (300, 64)).astype(np.float32)
    s_in = guard.check(x_test).score
    # far OOD is caught, near OOD (digits 5-9) separated well above chance (0.97 measured)
    assert auroc(scores_in=s_in, scores_out=guard.check(noise).score) > 0.99
    assert auroc(scores_in=s_in, scores_out=guard.check(x_ood).score) > 0.85
    # held-out FPR at alpha=0.05 on 101 rows: the binomial 99% range of a 5% rate is < 0.14
    assert guard.check(x_test).is_ood.mean() < 0.14


def test_the_manifest_records_how_the_model_was_trained(fitted) -> None:  # type: ignore[no-untyped-def]
    guard, out, _, _ = fitted
    doc = json.loads((out / "manifest.json").read_text())
    rec = doc["dynamics"]["training"]
    assert rec["arch"] == "mlp" and rec["latent"] == 8 and rec["output"] == "sigmoid"
    assert rec["preprocess"] == "none" and rec["seed"] == 0 and rec["threads"] == 1
    assert rec["recipe"]["max_epochs"] == 60 and rec["recipe"]["weight_decay"] == 1e-4
    r = rec["result"]
    assert 1 <= r["best_epoch"] <= r["epochs"] <= 60
    assert len(r["holdout_loss"]) == r["epochs"] and r["n_train"] + r["n_holdout"] == 500
    assert r["holdout_loss"][r["best_epoch"] - 1] == pytest.approx(r["best_holdout_loss"],
                                                                    rel=1e-5)
    # an improvement counts from 0.1% on; smaller ones do not move the best epoch
    assert min(r["holdout_loss"]) >= r["best_holdout_loss"] * (1 - 1e-3) - 1e-7


def test_training_is_seeded_and_stops_early() -> None:
    x = np.random.default_rng(0).normal(size=(400, 12)).astype(np.float32)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        m = build_autoencoder((12,), arch="mlp", latent=3, output="linear")
        m, rec = train(m, x, Recipe(max_epochs=300, patience=3, batch_size=64), seed=5)
        weights.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(weights[0], weights[1])
    # noise data has nothing to learn past a few epochs: early stopping ends it long before 300
    assert rec.stopped_early and rec.epochs < 300
    assert rec.epochs - rec.best_epoch == 3


def test_unscaled_vectors_are_standardised_inside_the_graph(tmp_path) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(700, 3)) @ rng.normal(size=(3, 10))
    x = (base * 100 + 5000).astype(np.float32)  # far outside [0, 1]
    guard = oodguard.fit(x[:400], x[400:], out=tmp_path / "b", recipe=Recipe(max_epochs=40),
                         registry=None)
    assert guard.bundle.manifest.dynamics["training"]["preprocess"] == "standardize"
    assert guard.bundle.manifest.dynamics["model"]["preprocess"]["kind"] == "standardize"
    far = x[400:] + rng.normal(0, 300, size=x[400:].shape).astype(np.float32)
    s_in, s_out = guard.check(x[400:]).score, guard.check(far).score
    assert np.median(s_out) > np.median(s_in)


@pytest.mark.parametrize(("shape", "arch"), [((64,), "mlp"), ((4, 32), "conv1d"),
                                             ((1, 28, 28), "conv2d"), ((3, 8, 8), "conv2d"),
                                             ((3, 6), "mlp"), ((1, 10, 10), "mlp")])
def test_each_shape_gets_its_architecture_and_reconstructs_its_shape(shape, arch) -> None:  # type: ignore[no-untyped-def]
    assert choose_arch(shape) == arch
    m = build_autoencoder(shape, arch=arch, latent=latent_size(int(np.prod(shape))),
                          output="sigmoid")
    x = torch.rand(5, *shape)
    z = m.encode(x)
    assert z.shape == (5, latent_size(int(np.prod(shape))))
    assert m.decode(z).shape == x.shape


def test_latent_size_rule() -> None:
    assert [latent_size(d) for d in (1, 13, 30, 64, 256, 784, 100_000)] == [2, 4, 5, 8, 16, 28,
                                                                           64]


def test_fit_on_sequences_uses_the_1d_conv_net(tmp_path) -> None:
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 16, dtype=np.float32)
    phase = rng.uniform(0, 6.28, size=(500, 2, 1)).astype(np.float32)
    x = 0.5 + 0.4 * np.sin(6.28 * 2 * t + phase)
    guard = oodguard.fit(x[:350], x[350:], out=tmp_path / "b", recipe=Recipe(max_epochs=20),
                         registry=None)
    assert guard.bundle.manifest.dynamics["training"]["model"] == "Conv1dAE"
    assert guard.bundle.manifest.input.shape == (2, 16)


def test_fit_refuses_bad_inputs_before_training(tmp_path) -> None:
    x = np.random.default_rng(0).uniform(size=(50, 8)).astype(np.float32)
    with pytest.raises(InvalidInputError, match="x_val holds samples of shape \\(9,\\)"):
        oodguard.fit(x, np.zeros((10, 9), np.float32), out=tmp_path / "a")
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(InvalidInputError, match="x_train holds NaN"):
        oodguard.fit(bad, x, out=tmp_path / "a")
    with pytest.raises(InvalidInputError, match="non-empty batch"):
        oodguard.fit(x[0], x, out=tmp_path / "a")
    with pytest.raises(InvalidParameterError, match="'layer' parameter"):
        oodguard.fit(x, x, out=tmp_path / "a", layer="body")
    with pytest.raises(InvalidParameterError, match="'arch' parameter"):
        oodguard.fit(x, x, out=tmp_path / "a", arch="transformer")
    with pytest.raises(InvalidParameterError, match="'holdout' parameter of Recipe"):
        Recipe(holdout=0.7)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(BundleExistsError):
        oodguard.fit(x, x, out=tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"


def test_cli_fit_writes_a_bundle_and_refuses_an_existing_out(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    xi, _ = _digits()
    np.save(tmp_path / "train.npy", xi[:300])
    np.save(tmp_path / "val.npy", xi[300:600])
    out = tmp_path / "bundle"
    args = ["-q", "fit", str(tmp_path / "train.npy"), "--val", str(tmp_path / "val.npy"),
            "--out", str(out), "--max-epochs", "5", "--threads", "1"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["arch"] == "mlp" and doc["epochs"] <= 5 and doc["features"]
    from oodguard.bundle import CALIBRATION_FILE, read_bundle

    cal = json.loads(read_bundle(out).files[CALIBRATION_FILE])
    assert 0.0 in cal["direction"]  # a two-sided test: its tails are weighted 0.3 / 0.7
    assert set(cal["lower_weight"]) == {0.3, 0.5}
    before = (out / "manifest.json").read_bytes()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "holds a bundle; pass overwrite=True (CLI: --overwrite)" in err
    assert (out / "manifest.json").read_bytes() == before
    assert main([*args, "--overwrite", "--minor-tail", "0.5"]) == 0
    cal = json.loads(read_bundle(out).files[CALIBRATION_FILE])
    assert "lower_weight" not in cal  # equal tails: schema 1


def test_import_oodguard_loads_neither_torch_nor_sklearn_and_fit_names_its_extra() -> None:
    code = (
        "import sys\n"
        "import oodguard\n"
        "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules\n"
        "sys.modules['torch'] = None  # as on a runtime-only install\n"
        "try:\n"
        "    oodguard.fit\n"
        "except oodguard.MissingDependencyError as e:\n"
        "    print(e)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "oodguard.fit needs the fit extra: pip install 'oodguard[fit,cpu]'" in p.stdout
