"""The command line: info, check, demo (small), and error exits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oodguard.bundle import read_bundle
from oodguard.cli import main


def test_info(bundle, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["info", str(bundle)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["calibrated"] is True and doc["input"]["shape"] == [16]


def test_check_prints_one_line_per_input(bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    np.save(tmp_path / "x.npy", np.concatenate([data["test"][:3], data["noise"][:2]]))
    assert main(["check", str(bundle), str(tmp_path / "x.npy")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[3]["is_ood"] and rows[4]["is_ood"]


def test_tampered_bundle_exits_1_with_message(bundle, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    with open(copy / "calibration.json", "a") as fh:
        fh.write(" ")
    assert main(["info", str(copy)]) == 1
    assert "changed or corrupted" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_small(tmp_path: Path) -> None:
    """The README's demo path end to end, shortened (fewer epochs, T = 8, 2 resamples)."""
    out = tmp_path / "demo"
    p = subprocess.run(
        [sys.executable, "-m", "oodguard.cli", "demo", "--out", str(out), "--epochs", "80",
         "--steps", "8", "--resample", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "combined − best single" in p.stdout and "[5/5] evaluation" in p.stderr
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["in_distribution"]["fpr_at_threshold"] <= 0.2
    for name, entry in report["ood_sets"].items():
        assert entry["kind"] in ("near", "far")
        for score in ["combined", "recon_error", "mean_attractor_distance"]:
            assert 0.0 <= entry[score]["auroc"] <= 1.0 and 0.0 <= entry[score]["fpr95"] <= 1.0
        if entry["kind"] == "far":
            assert entry["combined"]["auroc"] > 0.9, name
    assert {"roc.png", "histograms.png", "attractors.png", "feature_auroc.png"} <= {
        f.name for f in out.iterdir()}
    from oodguard import Guard

    guard = Guard.load(out / "bundle", registry=None)
    assert guard.manifest.steps == 8 and guard.input_spec.shape == (64,)


def test_calibrate_from_files(raw_bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    np.save(tmp_path / "val.npy", data["val"])
    np.savez(tmp_path / "ood.npz", x=data["noise"][:100])
    out = tmp_path / "cal"
    assert main(["calibrate", str(raw_bundle), str(tmp_path / "val.npy"), "--alpha", "0.1",
                 "--ood", str(tmp_path / "ood.npz"), "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_cal"] == 360 and doc["alpha"] == 0.1 and doc["features"]
    assert main(["check", str(out), str(tmp_path / "val.npy")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(data["val"])


def test_integer_inputs_need_scale(bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    ints = np.round(data["test"][:4] * 255).astype(np.uint8).reshape(4, 4, 4)  # flat rows reshaped
    np.save(tmp_path / "u8.npy", ints)
    assert main(["check", str(bundle), str(tmp_path / "u8.npy")]) == 1
    assert "got dtype uint8" in capsys.readouterr().err
    assert main(["check", str(bundle), str(tmp_path / "u8.npy"), "--scale", "255"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_unreadable_input_file_exits_1(bundle, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "x.idx").write_bytes(b"junk")
    assert main(["check", str(bundle), str(tmp_path / "x.idx")]) == 1
    assert "not an IDX file" in capsys.readouterr().err


def test_calibrate_out_never_replaces_user_files(raw_bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--out that is a directory of the user's files, or a file, is refused before any work,
    whatever --overwrite says; nothing of theirs is touched."""
    np.save(tmp_path / "val.npy", data["val"])
    notes = tmp_path / "out" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    for extra in ([], ["--overwrite"]):
        assert main(["calibrate", str(raw_bundle), str(tmp_path / "val.npy"),
                     "--out", str(notes.parent), *extra]) == 1
        assert "is a directory that is not a bundle: it holds ['notes.txt']" in (
            capsys.readouterr().err)
        assert main(["calibrate", str(raw_bundle), str(tmp_path / "val.npy"),
                     "--out", str(tmp_path / "val.npy"), *extra]) == 1
        assert "val.npy is a file, not a bundle directory" in capsys.readouterr().err
    assert notes.read_text() == "mine" and os.listdir(notes.parent) == ["notes.txt"]
    np.testing.assert_array_equal(np.load(tmp_path / "val.npy"), data["val"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "val.npy"]


def test_calibrate_over_a_bundle_needs_overwrite(raw_bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    np.save(tmp_path / "val.npy", data["val"])
    out = tmp_path / "cal"
    shutil.copytree(raw_bundle, out)
    args = ["calibrate", str(raw_bundle), str(tmp_path / "val.npy"), "--out", str(out)]
    assert main(args) == 1
    assert "holds a bundle; pass overwrite=True (CLI: --overwrite)" in capsys.readouterr().err
    assert not read_bundle(out).calibrated
    assert main([*args, "--overwrite"]) == 0
    assert read_bundle(out).calibrated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal", "val.npy"]


def test_calibrate_in_place_is_allowed_and_atomic(raw_bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Calibrating BUNDLE itself is the user's explicit request: no flag needed; the bundle
    path keeps naming a complete bundle and nothing is left beside it."""
    np.save(tmp_path / "val.npy", data["val"])
    b = tmp_path / "b"
    shutil.copytree(raw_bundle, b)
    assert main(["calibrate", str(b), str(tmp_path / "val.npy")]) == 0
    assert json.loads(capsys.readouterr().out)["bundle"] == str(b)
    assert read_bundle(b).calibrated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "val.npy"]
