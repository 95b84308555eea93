"""reference.npz: the export's reference inputs and their features, for the runtime's parity
check at load (oodguard.export.reference)."""

from __future__ import annotations

import hashlib
import io
import shutil

import numpy as np
import pytest

from oodguard.bundle import MODEL_FILE, REFERENCE_FILE, read_bundle, read_extras, write_bundle

pytest.importorskip("torch")


def _load(bundle_path):  # type: ignore[no-untyped-def]
    b = read_bundle(bundle_path)
    data = b.files[REFERENCE_FILE]
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return b, data, {k: z[k] for k in z.files}


def test_export_writes_the_reference_inputs_and_features(raw_bundle, data) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    b, raw, ref = _load(raw_bundle)
    assert b.manifest.files[REFERENCE_FILE] == hashlib.sha256(raw).hexdigest()
    assert REFERENCE_FILE not in read_extras(b)  # read at load, for the parity check
    assert set(ref) == {"format_version", "inputs", "features", "stable", "rtol", "atol",
                        "feature_names"}
    names = b.manifest.feature_names
    assert ref["inputs"].dtype == np.float32 and ref["inputs"].shape == (32, 16)
    assert ref["features"].dtype == np.float32 and ref["features"].shape == (32, len(names))
    assert ref["stable"].dtype == bool and ref["stable"].shape == (len(names),)
    assert ref["rtol"].dtype == np.float64 and ref["rtol"].shape == ()
    assert float(ref["rtol"]) == b.manifest.parity["rtol"]
    assert float(ref["atol"]) == b.manifest.parity["atol"]
    assert list(ref["feature_names"]) == list(names)
    stability = b.manifest.dynamics["stability"]
    assert ref["stable"].tolist() == [stability[n]["stable"] for n in names]
    # training inputs first (the first 28 rows of x_train), then uniform-noise inputs
    np.testing.assert_array_equal(ref["inputs"][:28], data["train"][:28])
    assert not np.isin(ref["inputs"][28:], data["train"]).all()
    assert np.isfinite(ref["features"]).all()
    # ONNX Runtime on the CPU reproduces them from the bundle's model.onnx
    sess = ort.InferenceSession(b.files[MODEL_FILE], providers=["CPUExecutionProvider"])
    got = sess.run(None, {b.manifest.input.name: ref["inputs"]})[0]
    np.testing.assert_allclose(got[:, ref["stable"]], ref["features"][:, ref["stable"]],
                               rtol=float(ref["rtol"]), atol=float(ref["atol"]))


def test_calibration_keeps_the_reference_file(raw_bundle, bundle) -> None:  # type: ignore[no-untyped-def]
    assert _load(bundle)[1] == _load(raw_bundle)[1]


def test_a_bundle_without_the_reference_file_still_loads(raw_bundle, bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from oodguard import Guard

    b = read_bundle(bundle)
    extras = read_extras(b)
    old = tmp_path / "old"
    write_bundle(old, b.manifest, {**{k: v for k, v in b.files.items() if k != REFERENCE_FILE},
                                   **extras})
    assert REFERENCE_FILE not in read_bundle(old).manifest.files
    g = Guard.load(old)
    assert g.parity is None
    g.check(np.full((2, 16), 0.5, np.float32))
    assert Guard.load(bundle).parity.ok  # the exported bundle's own reference: parity on CPU


def test_a_changed_reference_file_is_refused(raw_bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from oodguard.errors import BundleError

    copy = tmp_path / "b"
    shutil.copytree(raw_bundle, copy)
    (copy / REFERENCE_FILE).write_bytes(b"changed")
    with pytest.raises(BundleError, match="reference.npz has sha256"):
        read_bundle(copy)


def test_reference_rows_keep_only_rows_that_agree_on_stable_features() -> None:
    from oodguard.export.reference import reference_rows

    rng = np.random.default_rng(0)
    torch_f = rng.uniform(1, 2, size=(40, 3))
    onnx_f = torch_f.copy()
    onnx_f[3, 0] += 0.5  # disagrees on a stable feature: left out
    onnx_f[4, 2] += 0.5  # disagrees on an unstable one only: kept
    onnx_f[5, 1] = np.nan  # not finite: left out
    train = np.arange(40) < 30
    rows = reference_rows(torch_f, onnx_f, train, np.array([True, True, False]), rtol=1e-3,
                          atol=1e-4, n=16)
    assert len(rows) == 16 and 3 not in rows and 5 not in rows and 4 in rows
    assert train[rows[:14]].all() and not train[rows[14:]].any()  # 16 // 8 noise rows


def test_n_reference_must_be_positive(tmp_path, data) -> None:  # type: ignore[no-untyped-def]
    from oodguard.export import export_bundle

    with pytest.raises(ValueError,
                       match=r"The 'n_reference' parameter of export_bundle must be "
                             r"an int >= 1. Got 0"):
        export_bundle(tmp_path / "b", x_train=data["train"], model=None, n_reference=0)
