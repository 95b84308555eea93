"""``oodguard inspect`` on the exported test bundle, and the bundle's optional inspection files
(hash-checked, carried through calibration, missing in older bundles)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from oodguard.bundle import (
    EXTRA_FILES,
    INSPECTION_DATA_FILE,
    INSPECTION_MODEL_FILE,
    MODEL_FILE,
    read_bundle,
    read_extras,
    write_bundle,
)
from oodguard.cli import main
from oodguard.errors import BundleError

pytest.importorskip("torch")


def test_export_writes_hashed_inspection_files_the_runtime_does_not_read(raw_bundle) -> None:
    b = read_bundle(raw_bundle)
    assert EXTRA_FILES <= set(b.manifest.files)
    assert not EXTRA_FILES & set(b.files)  # read_bundle leaves them on disk
    extras = read_extras(b)
    assert set(extras) == EXTRA_FILES


def test_calibration_keeps_the_inspection_files(bundle) -> None:
    assert set(read_extras(read_bundle(bundle))) == EXTRA_FILES


def test_a_changed_inspection_file_is_refused(raw_bundle, tmp_path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(raw_bundle, copy)
    (copy / INSPECTION_DATA_FILE).write_bytes(b"changed")
    b = read_bundle(copy)  # the runtime's read is unaffected
    with pytest.raises(BundleError, match="sha256"):
        read_extras(b)
    (copy / INSPECTION_DATA_FILE).unlink()
    with pytest.raises(BundleError, match="lists inspection.npz, but"):
        read_extras(b)


def test_inspect_prints_the_summary_and_writes_report_and_pictures(raw_bundle, tmp_path,
                                                                   capsys) -> None:
    out = tmp_path / "ins"
    assert main(["inspect", str(raw_bundle), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "attractors" in text and "memorization coefficient:" in text
    assert "export-time report" in text
    doc = json.loads((out / "inspection.json").read_text())
    assert doc["oodguard_inspection"] == 1
    assert doc["attractor_count"] == len(doc["basins"]) >= 1
    assert 0.0 < doc["memorization"]["mean"] <= 1.0
    assert doc["horizon"] == read_bundle(raw_bundle).manifest.steps
    for name in ("attractors.png", "trajectories.png", "contraction.png"):
        assert (out / name).stat().st_size > 1000

    # an existing, non-empty folder is never written into without --overwrite
    before = (out / "inspection.json").read_bytes()
    assert main(["inspect", str(raw_bundle), "--out", str(out), "--no-plots"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "inspection.json").read_bytes() == before
    assert main(["inspect", str(raw_bundle), "--out", str(out), "--no-plots",
                 "--overwrite"]) == 0


def test_inspect_with_data_measures_on_it(raw_bundle, data, tmp_path, capsys) -> None:
    np.save(tmp_path / "train.npy", data["train"])
    out = tmp_path / "ins"
    assert main(["inspect", str(raw_bundle), "--data", str(tmp_path / "train.npy"), "--out",
                 str(out), "--no-plots"]) == 0
    doc = json.loads((out / "inspection.json").read_text())
    assert doc["source"].startswith("measured now on")
    assert doc["memorization_source"] == "training samples"
    # the ONNX map measures what the exporter measured with torch on the same training data
    assert main(["inspect", str(raw_bundle), "--out", str(tmp_path / "stored"),
                 "--no-plots"]) == 0
    stored = json.loads((tmp_path / "stored" / "inspection.json").read_text())
    assert doc["n_train"] == min(len(data["train"]), 1024)
    assert doc["attractor_count"] == pytest.approx(stored["attractor_count"], abs=1)
    assert doc["memorization"]["mean"] == pytest.approx(stored["memorization"]["mean"],
                                                        abs=0.02)
    assert main(["inspect", str(raw_bundle), "--data", str(tmp_path / "none.npy"), "--out",
                 str(tmp_path / "x")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_inspect_on_an_older_bundle_says_what_is_missing(raw_bundle, tmp_path,
                                                          capsys) -> None:
    b = read_bundle(raw_bundle)
    old = tmp_path / "old"
    write_bundle(old, b.manifest, {MODEL_FILE: b.files[MODEL_FILE]})
    assert read_extras(read_bundle(old)) == {}
    assert main(["inspect", str(old), "--out", str(tmp_path / "ins")]) == 1
    err = capsys.readouterr().err
    assert INSPECTION_MODEL_FILE in err and INSPECTION_DATA_FILE in err
    assert "re-export the bundle" in err
    assert not (tmp_path / "ins").exists()


def test_out_that_is_a_file_is_refused(raw_bundle, tmp_path: Path, capsys) -> None:
    f = tmp_path / "file"
    f.write_text("mine")
    assert main(["inspect", str(raw_bundle), "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert f.read_text() == "mine"


def test_inspection_files_that_cannot_be_made_leave_a_complete_bundle(
        autoencoder, data, monkeypatch, caplog, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import oodguard.export.inspection_files as inspection_files
    from oodguard.export import export_bundle

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("no runtime for this graph")

    monkeypatch.setattr(inspection_files, "OnnxMap", broken)
    with caplog.at_level("WARNING"):
        export_bundle(tmp_path / "b", model=autoencoder, x_train=data["train"][:200], steps=4)
    assert "inspection files could not be made" in caplog.text
    assert "no runtime for this graph" in caplog.text
    b = read_bundle(tmp_path / "b")
    assert read_extras(b).keys().isdisjoint({INSPECTION_MODEL_FILE, INSPECTION_DATA_FILE})


def test_overwriting_a_bundle_with_inspection_files_leaves_nothing_behind(raw_bundle,
                                                                          tmp_path) -> None:
    b = read_bundle(raw_bundle)
    files = {MODEL_FILE: b.files[MODEL_FILE], **read_extras(b)}
    target = tmp_path / "b"
    write_bundle(target, b.manifest, files)
    write_bundle(target, b.manifest, files, overwrite=True)  # the old one is swapped out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # and removed, extras included
    assert set(read_extras(read_bundle(target))) == EXTRA_FILES


def test_inspect_from_a_bundle_needs_neither_torch_nor_scikit_learn() -> None:
    import subprocess
    import sys

    code = ("import sys, oodguard.inspect, oodguard.cli; "
            "print(sorted(m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_inspection_file_holds_the_manifests_attractors(raw_bundle, monkeypatch, tmp_path,
                                                        autoencoder, data) -> None:  # type: ignore[no-untyped-def]
    from oodguard.inspect import load_inspection

    b, _, report = load_inspection(raw_bundle)
    assert report.attractor_count == b.manifest.attractor_count
    assert report.scalars["n_train"] == b.manifest.dynamics["discovery"]["n_data"]
    # discovery runs once per export: the report is made from the exporter's own run
    import oodguard.export.attractors as attractors
    import oodguard.inspect.report as report_module

    calls = []
    real = attractors.discover

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attractors, "discover", counted)
    monkeypatch.setattr(report_module, "discover", counted)
    from oodguard.export import export_bundle

    export_bundle(tmp_path / "b", model=autoencoder, x_train=data["train"][:300], steps=4)
    assert len(calls) == 1
    b2, _, r2 = load_inspection(tmp_path / "b")
    assert r2.attractor_count == b2.manifest.attractor_count


def test_inspect_runs_on_a_vae_bundle_exported_with_the_latent_mean(tmp_path, capsys) -> None:
    import torch
    from _export_models import VAE, tabular

    from oodguard.export import export_bundle
    from oodguard.inspect import load_inspection

    torch.manual_seed(0)
    export_bundle(tmp_path / "vae", model=VAE().eval(), x_train=tabular(120), steps=4,
                  latent="mean", n_noise=16)
    _, latent, _ = load_inspection(tmp_path / "vae")
    for n in (1, 3, 8):  # the graph kept no batch size from its tracing
        assert latent.encode(tabular(n, seed=2)).shape == (n, 3)
        assert latent.step(np.zeros((n, 3), np.float32)).shape == (n, 3)
    out = tmp_path / "ins"
    assert main(["inspect", str(tmp_path / "vae"), "--out", str(out)]) == 0
    assert (out / "inspection.json").exists() and (out / "trajectories.png").exists()


def test_a_failing_inspect_leaves_no_partial_files(raw_bundle, tmp_path, monkeypatch) -> None:
    import oodguard.inspect.plots as plots

    def broken(report, paths, out):  # type: ignore[no-untyped-def]
        (Path(out) / "attractors.png").write_bytes(b"half")
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(plots, "plot_inspection", broken)
    out = tmp_path / "sub" / "ins"
    with pytest.raises(RuntimeError, match="the plot failed"):
        main(["inspect", str(raw_bundle), "--out", str(out)])
    assert not out.exists()
    assert list((tmp_path / "sub").iterdir()) == []  # no staging folder left either
