"""Parity where the bundle is served: Guard.load runs the bundle's reference inputs on its own
execution provider and compares with the exporter's features (oodguard.bundle.reference)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from oodguard import BundleError, Guard
from oodguard.bundle import REFERENCE_FILE, read_bundle, write_bundle
from oodguard.engine import Engine


def _with_reference(src: Path, dst: Path, **arrays: np.ndarray) -> Path:
    """A copy of the bundle ``src`` with ``reference.npz`` holding ``arrays``."""
    b = read_bundle(src)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    files = {k: v for k, v in b.files.items()}
    files[REFERENCE_FILE] = buf.getvalue()
    return write_bundle(dst, b.manifest, files)


@pytest.fixture(scope="module")
def reference(bundle, data):  # type: ignore[no-untyped-def]
    b = read_bundle(bundle)
    x = np.concatenate([data["train"][:24], data["noise"][:8]])
    feats = Engine(b.files["model.onnx"], b.manifest, providers="cpu").run(x)
    return {"inputs": x, "features": feats,
            "stable": np.ones(feats.shape[1], dtype=bool),
            "rtol": np.float64(1e-4), "atol": np.float64(1e-5)}


def test_the_exported_bundle_passes_its_own_check(bundle) -> None:  # type: ignore[no-untyped-def]
    """The exporter's reference.npz (ONNX Runtime on CPU at export) is reproduced here."""
    g = Guard.load(bundle, registry=None)
    assert g.parity is not None and g.parity.ok and g.parity.rows == 32


def test_a_bundle_whose_features_this_engine_reproduces_loads(bundle, reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    reg = CollectorRegistry()
    g = Guard.load(_with_reference(bundle, tmp_path / "b", **reference), registry=reg, name="p")
    assert g.parity is not None and g.parity.ok and g.parity.max_ratio <= 1.0
    assert g.parity.rows == 32 and g.parity.features_checked == reference["features"].shape[1]
    assert reg.get_sample_value("oodguard_parity_ok",
                                {"guard": "p", "provider": "CPUExecutionProvider"}) == 1.0
    assert reg.get_sample_value("oodguard_parity_error_ratio", {"guard": "p"}) <= 1.0


def test_older_bundles_without_reference_load_with_nothing_to_check(bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    b = read_bundle(bundle)
    old = write_bundle(tmp_path / "old", b.manifest,
                       {k: v for k, v in b.files.items() if k != REFERENCE_FILE})
    reg = CollectorRegistry()
    g = Guard.load(old, registry=reg, name="old")
    assert g.parity is None
    assert reg.get_sample_value("oodguard_parity_error_ratio", {"guard": "old"}) is None


def test_a_disagreement_is_a_bundle_error_naming_provider_and_difference(
        bundle, reference, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    bad = dict(reference)
    f = reference["features"].copy()
    f[5, 2] += 0.5  # one feature of one row off by far more than the tolerance
    bad["features"] = f
    path = _with_reference(bundle, tmp_path / "b", **bad)
    with pytest.raises(BundleError, match=r"on CPUExecutionProvider the guard's features differ "
                                          r"from those the exporter computed: largest difference "
                                          r"0\.5 on feature .* \(reference row 5\)"):
        Guard.load(path, registry=None)
    reg = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger="oodguard.guard"):
        g = Guard.load(path, registry=reg, name="lax", strict=False)
    assert "serving anyway (strict=False)" in caplog.text
    assert g.parity is not None and not g.parity.ok
    assert reg.get_sample_value("oodguard_parity_ok",
                                {"guard": "lax", "provider": "CPUExecutionProvider"}) == 0.0
    # an unstable feature is not compared: the same difference there passes
    lax = dict(bad)
    lax["stable"] = np.ones(f.shape[1], dtype=bool)
    lax["stable"][2] = False
    assert Guard.load(_with_reference(bundle, tmp_path / "c", **lax), registry=None).parity.ok


@pytest.mark.parametrize("change, message", [
    ({"features": None}, r"lacks \['features'\]"),
    ({"stable": np.ones(3, dtype=bool)}, r"stable must be bool \[\d+\]"),
    ({"inputs": np.zeros((2, 5), np.float32)}, "inputs must be float32"),
    ({"rtol": np.float64(-1.0)}, "rtol must be a finite float >= 0"),
    ({"features": np.zeros((32, 3), np.float64)}, "features must be float32"),
])
def test_a_malformed_reference_is_a_bundle_error(bundle, reference, tmp_path, change,
                                                 message) -> None:  # type: ignore[no-untyped-def]
    arrays = {**reference, **change}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    with pytest.raises(BundleError, match=message):
        Guard.load(_with_reference(bundle, tmp_path / "b", **arrays), registry=None)


def test_a_reference_that_is_not_an_npz_is_a_bundle_error(bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    b = read_bundle(bundle)
    files = {**b.files, REFERENCE_FILE: b"not a zip"}
    path = write_bundle(tmp_path / "b", b.manifest, files)
    with pytest.raises(BundleError, match="reference.npz is not a readable .npz"):
        Guard.load(path, registry=None)


def test_the_strict_flag_is_checked(bundle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="The 'strict' parameter of Guard must be True or False"):
        Guard.load(bundle, registry=None, strict="yes")
