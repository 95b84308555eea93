"""The bundle format: round trip, hashes, schema versions, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import oodguard.bundle as bundle_mod
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
from oodguard.errors import BundleError, BundleExistsError


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


def test_bundles_get_the_umasks_permissions_not_0700(tmp_path: Path) -> None:
    """A bundle is written by one user and served by another (the images run as uid 10001):
    its directory and files get what a plain mkdir/open gives under the umask, in place
    rewrites too (mkdtemp's 0700 made bind-mounted bundles unreadable)."""
    old = os.umask(0o022)
    try:
        path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"one"})
        assert path.stat().st_mode & 0o777 == 0o755
        assert all(f.stat().st_mode & 0o777 == 0o644 for f in path.iterdir())
        write_bundle(path, _manifest(), {MODEL_FILE: b"two"}, overwrite=True)
        assert path.stat().st_mode & 0o777 == 0o755
        os.umask(0o077)
        private = write_bundle(tmp_path / "p", _manifest(), {MODEL_FILE: b"one"})
        assert private.stat().st_mode & 0o777 == 0o700
    finally:
        os.umask(old)


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


# -- hostile bundles: every one is a BundleError that says what is wrong --------------------


def _forge(path: Path, files: dict[str, bytes], doc: dict | None = None,  # type: ignore[type-arg]
           text: str | None = None) -> Path:
    """A bundle written by hand, its hashes recomputed so they pass: only the edit is wrong."""
    path.mkdir()
    for name, data in files.items():
        (path / name).write_bytes(data)
    doc = _manifest().to_dict() if doc is None else doc
    doc["files"] = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    (path / MANIFEST_FILE).write_text(json.dumps(doc) if text is None else text)
    return path


def _doc_text(edit: str, value: str) -> str:
    """The manifest's JSON text with one field's value replaced by raw text (files hashed for
    a one-file bundle holding b"m")."""
    doc = _manifest().to_dict()
    doc["files"] = {MODEL_FILE: hashlib.sha256(b"m").hexdigest()}
    doc[edit] = "@@"
    return json.dumps(doc).replace('"@@"', value)


@pytest.mark.parametrize(
    ("field", "raw", "message"),
    [
        ("steps", "Infinity", r"Infinity; numbers in a bundle must be finite"),
        ("steps", "1e999", "overflows a float64 to infinity"),
        ("steps", "9" * 5000, "an integer of 5000 characters"),
        ("steps", "NaN", "NaN; numbers in a bundle must be finite"),
        ("steps", "1.5", "field 'steps' must be int, got float"),
        ("steps", "true", "field 'steps' must be int, got bool"),
        ("steps", "1000000000", r"field 'steps' must lie in \[1, 10000\]"),
        ("versions", "[1, 2]", "field 'versions' must be object, got list"),
        ("versions", '{"torch": 2}', "field 'versions' must map names to strings"),
        ("parity", '"x"', "field 'parity' must be object, got str"),
        ("dynamics", "[]", "field 'dynamics' must be object, got list"),
        ("feature_names", '["a", 3]', "'feature_names' parameter of Manifest must be unique"),
        ("feature_names", "[]", "'feature_names' parameter of Manifest must be unique"),
        ("input", '{"name": "x", "shape": [0], "dtype": "float32"}', "positive ints"),
        ("input", '{"name": "x", "shape": [65536, 65536], "dtype": "float32"}', "over the"),
        ("input", '{"name": "x", "shape": [1.5], "dtype": "float32"}', "positive ints"),
        ("convergence_tol", "-1", "'convergence_tol' parameter of Manifest must be finite"),
        ("latent_dim", '"3"', "field 'latent_dim' must be int, got str"),
        ("extra", "1", r"unknown fields \['extra'\]"),
        ("nested", "[" * 5000 + "]" * 5000, "nested too deeply|nested deeper"),
        ("nested", "[" * 40 + "]" * 40, "nested deeper than 32 levels"),
    ],
)
def test_hostile_manifest_values(tmp_path: Path, field: str, raw: str, message: str) -> None:
    path = _forge(tmp_path / "b", {MODEL_FILE: b"m"}, text=_doc_text(field, raw))
    with pytest.raises(BundleError, match=message) as info:
        read_bundle(path)
    assert "re-export the bundle" in str(info.value) or "upgrade" in str(info.value)


def test_files_not_an_object_and_duplicate_keys(tmp_path: Path) -> None:
    path = _forge(tmp_path / "a", {MODEL_FILE: b"m"})
    doc = _manifest().to_dict()
    doc["files"] = "model.onnx"
    (path / MANIFEST_FILE).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="field 'files' must be object, got str"):
        read_bundle(path)
    text = _doc_text("steps", '8, "steps": 9')
    (path / MANIFEST_FILE).write_text(text)
    with pytest.raises(BundleError, match="the key 'steps' twice in one object"):
        read_bundle(path)
    (path / MANIFEST_FILE).write_bytes(b"\xff\xfe{}")
    with pytest.raises(BundleError, match="not UTF-8"):
        read_bundle(path)
    (path / MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(BundleError, match="must hold a JSON object, not list"):
        read_bundle(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"m"})
    (path / MODEL_FILE).unlink()
    (path / MODEL_FILE).mkdir()
    with pytest.raises(BundleError, match="model.onnx is a directory, not a regular file"):
        read_bundle(path)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes; the loader must not wait."""
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"m"})
    (path / MODEL_FILE).unlink()
    os.mkfifo(path / MODEL_FILE)
    result: list[BaseException] = []
    t = threading.Thread(target=lambda: result.append(_raises(read_bundle, path)), daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "read_bundle blocked on a FIFO"
    assert isinstance(result[0], BundleError)
    assert "FIFO (named pipe), not a regular file" in str(result[0])


def _raises(fn, *args) -> BaseException:  # type: ignore[no-untyped-def]
    try:
        fn(*args)
    except BaseException as err:  # noqa: BLE001 - the test inspects it
        return err
    raise AssertionError("no exception")


@pytest.mark.parametrize("target", ["/dev/zero", "outside"])
def test_symlinks_are_never_followed(tmp_path: Path, target: str) -> None:
    """A link to /dev/zero would read without bound; a link out of the bundle reads a file the
    bundle's author chose. Both are refused whatever the target holds."""
    outside = tmp_path / "secret.onnx"
    outside.write_bytes(b"m")  # with the right hash: only the link itself is wrong
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"m"})
    (path / MODEL_FILE).unlink()
    os.symlink(target if target.startswith("/") else outside, path / MODEL_FILE)
    with pytest.raises(BundleError, match="model.onnx is a symbolic link; .* not followed"):
        read_bundle(path)


def test_manifest_symlink_is_refused(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"m"})
    (tmp_path / "m.json").write_bytes((path / MANIFEST_FILE).read_bytes())
    (path / MANIFEST_FILE).unlink()
    os.symlink(tmp_path / "m.json", path / MANIFEST_FILE)
    with pytest.raises(BundleError, match="manifest.json is a symbolic link"):
        read_bundle(path)


def test_the_bundle_path_itself_may_be_a_link(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"m"})
    os.symlink(path, tmp_path / "current")
    assert read_bundle(tmp_path / "current").files[MODEL_FILE] == b"m"


def test_oversized_file_is_refused_before_reading(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(bundle_mod.manifest.MAX_BYTES, MODEL_FILE, 10)
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"x" * 11})
    with pytest.raises(BundleError, match="11 bytes, over the 10-byte limit for model.onnx"):
        read_bundle(path)


def test_hostile_calibration_json_fails_at_read(tmp_path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    path = _forge(tmp_path / "b", {MODEL_FILE: b"m", CALIBRATION_FILE: deep})
    with pytest.raises(BundleError, match="calibration.json is nested too deeply"):
        read_bundle(path)


def test_manifest_dynamics_round_trips() -> None:
    m = Manifest.from_dict({**_manifest().to_dict(), "dynamics": {"lipschitz": 0.5}})
    assert m.dynamics == {"lipschitz": 0.5}
    assert Manifest.from_dict(m.to_dict()) == m
    assert "dynamics" not in _manifest().to_dict()  # empty: schema-1 files stay unchanged


# -- writes: never delete what they did not create, replace atomically ----------------------


def test_write_refuses_what_is_not_a_bundle(tmp_path: Path) -> None:
    """A file, a link, or a directory holding a user's files is refused even with
    overwrite=True; every byte stays where it was."""
    notes = tmp_path / "out" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    with pytest.raises(BundleExistsError, match=r"not a bundle: it holds \['notes.txt'\]"):
        write_bundle(notes.parent, _manifest(), {MODEL_FILE: b"m"}, overwrite=True)
    assert notes.read_text() == "mine" and os.listdir(notes.parent) == ["notes.txt"]
    (tmp_path / "x.npy").write_bytes(b"data")
    with pytest.raises(BundleExistsError, match="x.npy is a file, not a bundle directory"):
        write_bundle(tmp_path / "x.npy", _manifest(), {MODEL_FILE: b"m"}, overwrite=True)
    assert (tmp_path / "x.npy").read_bytes() == b"data"
    os.symlink(notes.parent, tmp_path / "link")
    with pytest.raises(BundleExistsError, match="is a symbolic link; oodguard does not replace"):
        write_bundle(tmp_path / "link", _manifest(), {MODEL_FILE: b"m"}, overwrite=True)
    # A bundle-named entry that is not a regular file is not a bundle either.
    (tmp_path / "odd" / MODEL_FILE).mkdir(parents=True)
    with pytest.raises(BundleExistsError, match=r"holds \['model.onnx'\]"):
        write_bundle(tmp_path / "odd", _manifest(), {MODEL_FILE: b"m"}, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["link", "odd", "out", "x.npy"]  # no temp dirs


def test_write_into_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"m"})
    assert read_bundle(tmp_path / "b").files[MODEL_FILE] == b"m"
    assert os.listdir(tmp_path) == ["b"]


def test_replaced_directory_with_unlisted_files_is_kept(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """If a file appears in the old bundle after the pre-check (here: the manifest lists no
    calibration.json but one is there), the old directory is kept aside, and said so."""
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"one"})
    (path / CALIBRATION_FILE).write_text("{}")  # a bundle name, so the pre-check lets it pass
    write_bundle(path, _manifest(), {MODEL_FILE: b"two"}, overwrite=True)
    assert read_bundle(path).files[MODEL_FILE] == b"two"
    kept = [p for p in tmp_path.iterdir() if p.name != "b"]
    assert len(kept) == 1 and (kept[0] / CALIBRATION_FILE).read_text() == "{}"
    assert f"was kept at {kept[0]}" in caplog.text


@pytest.mark.parametrize("where", ["fsync", "exchange", "rename_noreplace"])
def test_failure_mid_write_keeps_the_previous_bundle(tmp_path: Path, monkeypatch, where) -> None:  # type: ignore[no-untyped-def]
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"one"})
    target = path if where != "rename_noreplace" else tmp_path / "new"

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(5, f"injected failure in {where}")

    if where == "fsync":
        monkeypatch.setattr(os, "fsync", boom)
    else:
        monkeypatch.setattr(bundle_mod.fsio, where, boom)
    with pytest.raises(OSError, match="injected failure"):
        write_bundle(target, _manifest(), {MODEL_FILE: b"two"}, overwrite=True)
    monkeypatch.undo()
    assert read_bundle(path).files[MODEL_FILE] == b"one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # the temp dir is gone too


def test_fallback_without_exchange_replaces_and_cleans_up(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Where renameat2 is missing the swap is two renames; a failure of the second restores
    the old bundle."""
    monkeypatch.setattr(bundle_mod.fsio, "_RENAMEAT2", None)
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"one"})
    write_bundle(path, _manifest(), {MODEL_FILE: b"two"}, overwrite=True)
    assert read_bundle(path).files[MODEL_FILE] == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    real_rename = os.rename

    def second_fails(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst) == path and ".tmp-" in str(src):
            raise OSError(5, "injected failure")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", second_fails)
    with pytest.raises(OSError, match="injected"):
        write_bundle(path, _manifest(), {MODEL_FILE: b"three"}, overwrite=True)
    assert read_bundle(path).files[MODEL_FILE] == b"two"


def test_reader_retries_when_its_directory_is_removed(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A reader that opened the old directory, whose files the writer then removes, reads the
    new bundle instead of failing."""
    path = write_bundle(tmp_path / "b", _manifest(), {MODEL_FILE: b"one"})
    real_read = bundle_mod.fsio.read_regular
    calls: list[str] = []
    rewritten = []

    def read_then_rewrite(dir_fd, root, name, cap):  # type: ignore[no-untyped-def]
        if root == path:  # the reader's calls (the writer reads the old manifest too)
            calls.append(name)
        data = real_read(dir_fd, root, name, cap)
        if not rewritten:  # after the first manifest read: swap and remove the old bundle
            rewritten.append(True)
            write_bundle(path, _manifest(), {MODEL_FILE: b"two"}, overwrite=True)
        return data

    monkeypatch.setattr(bundle_mod.fsio, "read_regular", read_then_rewrite)
    assert read_bundle(path).files[MODEL_FILE] == b"two"
    # manifest (old dir), model.onnx (gone: retry), then both from the new directory
    assert calls == [MANIFEST_FILE, MODEL_FILE, MANIFEST_FILE, MODEL_FILE]
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


_WRITER = """
import os, sys
from oodguard.bundle import CALIBRATION_FILE, MODEL_FILE, InputSpec, Manifest, write_bundle
m = Manifest(input=InputSpec(name="x", shape=(4,)), output_name="f", feature_names=("a",),
             steps=1, attractor_count=1, latent_dim=1, convergence_tol=0.0)
path, n = sys.argv[1], int(sys.argv[2])
stop = sys.argv[3] if len(sys.argv) > 3 else ""
for i in range(n):
    if stop and os.path.exists(stop):
        break
    pad = b"." * (i % 7 * 5000)  # files of changing sizes
    write_bundle(path, m, {MODEL_FILE: b"v%d" % i + pad, CALIBRATION_FILE: b'{"v": %d}' % i},
                 overwrite=True)
    print(i, flush=True)
"""


def _tagged(b) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    return int(b.files[MODEL_FILE][1:].split(b".")[0]), json.loads(b.files[CALIBRATION_FILE])["v"]


def test_concurrent_readers_never_see_a_missing_or_mixed_bundle(tmp_path: Path) -> None:
    """Another process rewrites the bundle in place while this one reads it in a loop, until
    2 000 reads have overlapped at least 50 rewrites: every read must give a complete bundle
    whose files come from one version."""
    path, stop = tmp_path / "b", tmp_path / "stop"
    subprocess.run([sys.executable, "-c", _WRITER, str(path), "1"], check=True, timeout=120)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "100000", str(stop)],
                              stdout=subprocess.PIPE, text=True)
    reads, failures, versions = 0, [], set()
    deadline = time.monotonic() + 120
    try:
        while (reads < 2000 or len(versions) < 50) and time.monotonic() < deadline:
            assert writer.poll() is None, "the writer died"
            try:
                model_v, cal_v = _tagged(read_bundle(path))
            except BundleError as err:
                failures.append(str(err))
                continue
            finally:
                reads += 1
            if model_v != cal_v:
                failures.append(f"mixed: model v{model_v}, calibration v{cal_v}")
            versions.add(model_v)
    finally:
        stop.touch()
        writer.communicate(timeout=60)
    assert writer.returncode == 0
    assert failures == [], f"{len(failures)} of {reads} reads failed: {failures[:3]}"
    assert reads >= 2000 and len(versions) >= 50  # the reads really overlapped the rewrites
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "stop"]


def test_killed_writer_leaves_the_previous_bundle(tmp_path: Path) -> None:
    """SIGKILL at an arbitrary point of repeated rewrites: the path still holds a complete,
    verified bundle (at worst a .b.tmp-* directory is left beside it)."""
    path = tmp_path / "b"
    subprocess.run([sys.executable, "-c", _WRITER, str(path), "1"], check=True, timeout=120)
    for delay in (0.3, 0.5, 0.7):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "100000"],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline()  # it is writing
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        model_v, cal_v = _tagged(read_bundle(path))
        assert model_v == cal_v
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "b"]
    assert all(n.startswith(".b.tmp-") for n in leftovers), leftovers
