"""The bundle format: round trip, hashes, schema versions, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oodguard.bundle import (
    CALIBRATION_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    SCHEMA_VERSION,
    InputSpec,
    Manifest,
    read_bundle,
    write_bundle,
)
from oodguard.errors import BundleError


def _manifest() -> Manifest:
    return Manifest(
        input=InputSpec(name="x", shape=(4, 4)),
        output_name="features",
        feature_names=("a", "b"),
        steps=8,
        attractor_count=3,
        latent_dim=2,
        convergence_tol=1e-3,
    )


def test_round_trip(tmp_path: Path) -> None:
    files = {MODEL_FILE: b"model-bytes", CALIBRATION_FILE: b"{}"}
    path = write_bundle(tmp_path / "b", _manifest(), files)
    b = read_bundle(path)
    assert b.files == files
    assert b.manifest.input == InputSpec(name="x", shape=(4, 4))
    assert b.manifest.feature_names == ("a", "b")
    assert b.manifest.schema_version == SCHEMA_VERSION
    assert set(b.manifest.files) == {MODEL_FILE, CALIBRATION_FILE}
    assert b.manifest.created  # stamped at write time
    assert b.calibrated


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"model-bytes"})
    (path / MODEL_FILE).write_bytes(b"model-bytez")
    with pytest.raises(BundleError, match="sha256 .* changed or corrupted"):
        read_bundle(path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"m"})
    doc = json.loads((path / MANIFEST_FILE).read_text())
    doc["schema_version"] = SCHEMA_VERSION + 1
    (path / MANIFEST_FILE).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"schema version 2, newer .* upgrade oodguard"):
        read_bundle(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("input"), "manifest.json is malformed"),
        (lambda d: d.pop("schema_version"), "no integer schema_version"),
        (lambda d: d["files"].update({"evil.py": "00"}), "unexpected file 'evil.py'"),
        (lambda d: d["files"].pop(MODEL_FILE), "lists no model.onnx"),
        (lambda d: d.update(steps=0), "malformed"),
    ],
)
def test_malformed_manifest(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"m"})
    doc = json.loads((path / MANIFEST_FILE).read_text())
    edit(doc)
    (path / MANIFEST_FILE).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=message):
        read_bundle(path)


def test_not_json_and_missing(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        read_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="holds no manifest.json"):
        read_bundle(tmp_path / "empty")
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"m"})
    (path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_bundle(path)


def test_missing_listed_file(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"m", CALIBRATION_FILE: b"{}"})
    (path / CALIBRATION_FILE).unlink()
    with pytest.raises(BundleError, match="holds no calibration.json"):
        read_bundle(path)


def test_write_is_atomic_and_guarded(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"one"})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_bundle(path, _manifest(), {MODEL_FILE: b"two"})
    write_bundle(path, _manifest(), {MODEL_FILE: b"two"}, overwrite=True)
    assert read_bundle(path).files[MODEL_FILE] == b"two"
    # No temporary or backup directories are left beside the bundle.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_write_refuses_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="needs model.onnx"):
        write_bundle(tmp_path / "b", _manifest(), {CALIBRATION_FILE: b"{}"})
    with pytest.raises(BundleError, match="unexpected bundle files"):
        write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"m", "x.pkl": b""})


def test_input_spec_validation() -> None:
    with pytest.raises(ValueError, match="positive ints"):
        InputSpec(name="x", shape=(0, 3))
    with pytest.raises(ValueError, match="dtype"):
        InputSpec(name="x", shape=(3,), dtype="int8")


GOLDEN = Path(__file__).parent / "golden" / "manifest_v1.json"


def test_golden_manifest_v1_still_reads_and_round_trips() -> None:
    """The schema-1 manifest format is a contract: a file written by this version must keep
    loading, and re-serialising it must give the same document."""
    doc = json.loads(GOLDEN.read_text())
    m = Manifest.from_dict(doc)
    assert m.input.shape == (8, 8) and m.steps == 32 and m.attractor_count == 15
    assert m.to_dict() == doc
