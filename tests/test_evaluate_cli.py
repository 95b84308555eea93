"""``oodguard evaluate``: outputs against the library, refusal to overwrite, every error exit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_data

from oodguard.calibration import evaluate
from oodguard.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory, data) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("evaluate_inputs")
    paths = {"in": d / "test.npy", "noise": d / "noise.npy", "shifted": d / "shifted.npz"}
    np.save(paths["in"], data["test"])
    np.save(paths["noise"], data["noise"])
    np.savez(paths["shifted"], x=make_data(200, seed=11, shift=1.5))
    return paths


def _args(bundle: Path, files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["evaluate", str(bundle), "--in", str(files["in"]), "--ood",
            f"noise={files['noise']}", "--ood", f"shifted={files['shifted']}", "--out", str(out),
            "--providers", "cpu", *extra]


def test_writes_table_json_and_plots(bundle, data, files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "eval"
    assert main(_args(bundle, files, out)) == 0
    stdout = capsys.readouterr().out
    doc = json.loads((out / "evaluation.json").read_text())
    want = evaluate(bundle, data["test"], {"noise": data["noise"],
                                           "shifted": np.load(files["shifted"])["x"]},
                    providers="cpu")
    assert doc["alpha"] == 0.05 and doc["threshold"] == want.threshold
    assert doc["in_distribution"]["n"] == len(data["test"])
    assert doc["in_distribution"]["fpr_at_threshold"] == pytest.approx(want.fpr_at_threshold)
    assert doc["in_distribution"]["p_value_ks_uniform"]["statistic"] == pytest.approx(
        want.ks_statistic)
    assert list(doc["ood_sets"]) == ["noise", "shifted"]
    for name, entry in doc["ood_sets"].items():
        for key in ("auroc", "aupr_in", "aupr_out", "fpr95", "tpr_at_threshold"):
            assert entry[key] == pytest.approx(getattr(want[name], key), abs=1e-12), key
        assert entry["n"] == want[name].n
    assert doc["inputs"]["ood"] == {"noise": str(files["noise"]),
                                    "shifted": str(files["shifted"])}
    for png in ("roc.png", "scores.png", "p_values.png"):
        raw = (out / png).read_bytes()
        assert raw.startswith(PNG_MAGIC) and len(raw) > 10_000, png
    assert "AUROC" in stdout and "noise" in stdout and "shifted" in stdout
    assert f"{want['noise'].auroc:.4f}" in stdout
    # running again into the same folder replaces the previous evaluation
    assert main(_args(bundle, files, out, "--no-plots", "--alpha", "0.2")) == 0
    assert json.loads((out / "evaluation.json").read_text())["alpha"] == 0.2


def test_integer_inputs_with_scale(bundle, data, files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    q = {k: np.round(v * 255).astype(np.uint8) for k, v in
         {"in": data["test"], "noise": data["noise"]}.items()}
    np.save(tmp_path / "in8.npy", q["in"])
    np.save(tmp_path / "noise8.npy", q["noise"])
    args = ["evaluate", str(bundle), "--in", str(tmp_path / "in8.npy"), "--ood",
            f"noise={tmp_path / 'noise8.npy'}", "--out", str(tmp_path / "e"), "--no-plots"]
    assert main(args) == 1
    assert "dtype" in capsys.readouterr().err
    assert main([*args, "--scale", "255"]) == 0
    doc = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert doc["ood_sets"]["noise"]["auroc"] > 0.95 and doc["inputs"]["scale"] == 255


def test_refuses_a_foreign_non_empty_out_folder(bundle, files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "roc.png").write_bytes(b"my own plot")
    assert main(_args(bundle, files, out, "--no-plots")) == 2
    err = capsys.readouterr().err
    assert "non-empty folder that holds no previous evaluation" in err and "--overwrite" in err
    assert (out / "roc.png").read_bytes() == b"my own plot"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "roc.png"]
    assert main(_args(bundle, files, out, "--overwrite")) == 0
    assert (out / "notes.txt").read_text() == "keep me"  # written beside, never deleted
    assert (out / "roc.png").read_bytes().startswith(PNG_MAGIC)
    (tmp_path / "file").write_text("x")
    assert main(_args(bundle, files, tmp_path / "file")) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("noise", "expected NAME=PATH (e.g. --ood noise=noise.npy), got 'noise'"),
        ("=x.npy", "expected NAME=PATH"),
        ("noise=", "expected NAME=PATH"),
    ],
)
def test_malformed_ood_argument_exits_2(bundle, files, tmp_path, capsys, bad, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(bundle), "--in", str(files["in"]), "--ood", bad])
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(("alpha", "message"), [("1.5", "alpha must lie in (0, 1), got 1.5"),
                                                 ("x", "expected a number in (0, 1), got 'x'")])
def test_alpha_outside_0_1_exits_2(bundle, files, tmp_path, capsys, alpha, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(_args(bundle, files, tmp_path / "e", "--alpha", alpha))
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_alpha_below_the_calibration_resolution_exits_1(bundle, files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(_args(bundle, files, tmp_path / "e", "--alpha", "0.0001")) == 1
    assert "alpha must lie in [1/(n+1), 1)" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()  # nothing written on failure


def test_duplicate_names_exit_2(bundle, files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = _args(bundle, files, tmp_path / "e") + ["--ood", f"noise={files['in']}"]
    assert main(args) == 2
    assert "--ood names must be unique; ['noise'] given more than once" in capsys.readouterr().err


def test_missing_files_exit_1(bundle, files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nope.npy"
    assert main(["evaluate", str(bundle), "--in", str(missing), "--ood",
                 f"noise={files['noise']}", "--out", str(tmp_path / "e")]) == 1
    assert f"--in {missing}: no such file or folder" in capsys.readouterr().err
    assert main(["evaluate", str(bundle), "--in", str(files["in"]), "--ood",
                 f"gone={missing}", "--out", str(tmp_path / "e")]) == 1
    assert f"--ood gone={missing}: no such file or folder" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "no-bundle"), "--in", str(files["in"]), "--ood",
                 f"noise={files['noise']}", "--out", str(tmp_path / "e")]) == 1
    assert capsys.readouterr().err.startswith("oodguard evaluate: ")
    assert not (tmp_path / "e").exists()


def test_wrong_shape_and_empty_set_exit_1(bundle, files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    np.save(tmp_path / "wide.npy", np.zeros((5, 17), np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 16), np.float32))
    base = ["evaluate", str(bundle), "--in", str(files["in"]), "--out", str(tmp_path / "e")]
    assert main([*base, "--ood", f"wide={tmp_path / 'wide.npy'}"]) == 1
    err = capsys.readouterr().err
    assert "OOD set 'wide':" in err and "shape" in err
    assert main([*base, "--ood", f"empty={tmp_path / 'empty.npy'}"]) == 1
    assert "OOD set 'empty' is empty (shape (0, 16))" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_uncalibrated_bundle_exits_1_with_a_hint(raw_bundle, files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(_args(raw_bundle, files, tmp_path / "e")) == 1
    err = capsys.readouterr().err
    assert (f"is not calibrated (it has no calibration.json); run oodguard calibrate "
            f"{raw_bundle} VAL.npy") in err


def test_missing_plot_extra_exits_2(bundle, files, tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    assert main(_args(bundle, files, tmp_path / "e")) == 2
    assert "needs the demo extra: pip install 'oodguard[demo]'" in capsys.readouterr().err
    assert main(_args(bundle, files, tmp_path / "e", "--no-plots")) == 0  # plots are optional
