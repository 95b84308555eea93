"""The command line: help, info, check, calibrate, demo (small), messages, progress, errors."""

from __future__ import annotations

import argparse
import csv
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


def test_calibrate_minor_tail(raw_bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """``--minor-tail`` reaches calibration.json (0.5: equal tails, schema 1; 0.1: schema 2
    with weight 0.1 on every two-sided test); a share outside (0, 0.5] is refused by the
    parser, before any work."""
    from oodguard.bundle import CALIBRATION_FILE, read_bundle

    np.save(tmp_path / "val.npy", data["val"])
    for share, schema in (("0.5", 1), ("0.1", 2)):
        out = tmp_path / f"cal{share}"
        assert main(["calibrate", str(raw_bundle), str(tmp_path / "val.npy"), "--select",
                     "all", "--minor-tail", share, "--out", str(out)]) == 0
        doc = json.loads(read_bundle(out).files[CALIBRATION_FILE])
        assert doc["schema_version"] == schema
        if schema == 2:
            assert set(doc["lower_weight"]) == {0.1}
    capsys.readouterr()
    for bad in ("0", "0.6", "half"):
        with pytest.raises(SystemExit):
            main(["calibrate", str(raw_bundle), str(tmp_path / "val.npy"), "--minor-tail", bad,
                  "--out", str(tmp_path / "bad")])
        assert "--minor-tail" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_integer_inputs_need_scale(bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    ints = np.round(data["test"][:4] * 255).astype(np.uint8).reshape(4, 4, 4)  # 4x4 images
    np.save(tmp_path / "u8.npy", ints)
    assert main(["check", str(bundle), str(tmp_path / "u8.npy"), "--reshape"]) == 1
    assert "got dtype uint8" in capsys.readouterr().err
    assert main(["check", str(bundle), str(tmp_path / "u8.npy"), "--scale", "255",
                 "--reshape"]) == 0
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


# --- help, version ---------------------------------------------------------------------------


def _subparsers() -> dict:  # type: ignore[type-arg]
    from oodguard.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_lists_every_command_without_markup(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "``" not in out
    for name in ("demo", "calibrate", "evaluate", "check", "serve", "info"):
        assert f"\n  {name} " in out, name


def test_every_option_has_help_and_shows_its_default(capsys) -> None:  # type: ignore[no-untyped-def]
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and "``" not in action.help, (name, action.dest)
        text = sub.format_help()
        assert "``" not in text, name
        options = text[text.index("options:"):]
        for action in sub._actions:
            if (action.option_strings and action.default not in (None, False)
                    and action.default != argparse.SUPPRESS):
                entry = options[options.index(f"  {action.option_strings[0]}") + 2:]
                entry = entry[: entry.find("\n  -") % (len(entry) + 1)]
                assert "default" in entry, (name, action.dest, entry)
    assert "(default: 0.05)" in _subparsers()["calibrate"].format_help()
    assert "(default: 8000)" in _subparsers()["serve"].format_help()


def test_version(capsys) -> None:  # type: ignore[no-untyped-def]
    from oodguard import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"oodguard {__version__}"


# --- check: the guard's validation, --alpha, --output, sources --------------------------------


@pytest.mark.parametrize("layout", [(4, 4), (2, 2, 4)])
def test_check_refuses_other_sample_shapes_unless_reshape(bundle, data, tmp_path, capsys,  # type: ignore[no-untyped-def]
                                                           layout) -> None:
    """Like Guard.check: a (16,) bundle does not silently take (N, 4, 4) or (N, 2, 2, 4)."""
    x = data["test"][:3]
    np.save(tmp_path / "x.npy", x.reshape(3, *layout))
    assert main(["check", str(bundle), str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err
    assert f"holds samples of shape {layout}, the bundle takes (16,)" in err
    assert "pass --reshape" in err
    from oodguard import Guard, InvalidInputError

    with pytest.raises(InvalidInputError):  # the library refuses the same array
        Guard.load(bundle, registry=None).check(x.reshape(3, *layout))
    assert main(["check", str(bundle), str(tmp_path / "x.npy"), "--reshape"]) == 0
    got = [json.loads(line)["score"] for line in capsys.readouterr().out.splitlines()]
    want = Guard.load(bundle, registry=None).check(x).score
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_check_alpha_and_output_files_name_their_source(bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    x = np.concatenate([data["test"][:20], data["noise"][:2]])
    np.save(tmp_path / "x.npy", x)
    base = ["check", str(bundle), str(tmp_path / "x.npy")]
    assert main([*base, "--output", str(tmp_path / "r.jsonl")]) == 0
    assert capsys.readouterr().out == ""
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(22))
    assert {r["source"] for r in rows} == {str(tmp_path / "x.npy")}
    assert main([*base, "--output", str(tmp_path / "r.csv"), "--alpha", "0.5"]) == 0
    assert "wrote 22 results" in capsys.readouterr().err
    with open(tmp_path / "r.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["index", "source", "row", "score", "p_value", "is_ood"]
    assert len(table) == 22 and table[21]["row"] == "21"
    flagged_half = sum(r["is_ood"] == "True" for r in table)
    flagged_default = sum(r["is_ood"] for r in rows)
    assert flagged_half > flagged_default  # alpha 0.5 flags more than the calibrated 0.05
    assert main([*base, "--output", str(tmp_path / "r.txt")]) == 1
    assert "name the file .jsonl or .csv" in capsys.readouterr().err


def test_check_image_folder_lists_file_names(bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(["b.png", "a.png", "c.png"]):
        pixels = np.round(data["test"][i].reshape(4, 4) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / name)
    assert main(["check", str(bundle), str(folder), "--reshape"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["source"]).name for r in rows] == ["a.png", "b.png", "c.png"]
    assert all(r["row"] is None for r in rows)


def test_check_writes_non_finite_scores_as_null(bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    x = data["test"][:2].copy()
    x[1, 0] = np.nan
    np.save(tmp_path / "x.npy", x)
    assert main(["check", str(bundle), str(tmp_path / "x.npy")]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(line, parse_constant=pytest.fail) for line in lines]  # strict JSON
    assert rows[1]["score"] is None and rows[1]["is_ood"] is True


# --- messages --------------------------------------------------------------------------------


def test_text_file_named_npy_says_so(bundle, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "x.npy").write_text("0.1,0.2,0.3\n")
    assert main(["check", str(bundle), str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err
    assert "is not a .npy file: it starts with b'0.1,0.'" in err and "numpy.save" in err
    assert "pickle" not in err


def test_missing_calibration_json_does_not_contradict_itself(bundle, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    (copy / "calibration.json").unlink()
    assert main(["info", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "manifest.json lists calibration.json, but" in err and "Copy the whole bundle" in err
    assert "a bundle needs" not in err


def test_uncalibrated_bundle_points_at_oodguard_calibrate(raw_bundle, data, tmp_path,  # type: ignore[no-untyped-def]
                                                          capsys) -> None:
    np.save(tmp_path / "x.npy", data["test"][:2])
    assert main(["check", str(raw_bundle), str(tmp_path / "x.npy")]) == 1
    err = capsys.readouterr().err
    assert f"run oodguard calibrate {raw_bundle} VAL.npy" in err
    assert "oodguard.calibration" not in err


def test_calibrate_warns_about_few_ood_samples(raw_bundle, data, tmp_path, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    np.save(tmp_path / "val.npy", data["val"])
    np.save(tmp_path / "ood.npy", data["noise"][:3])
    assert main(["calibrate", str(raw_bundle), str(tmp_path / "val.npy"), "--ood",
                 str(tmp_path / "ood.npy"), "--out", str(tmp_path / "cal")]) == 0
    assert any("holds only 3 samples" in r.getMessage() and "at least 20" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")


def test_demo_refuses_a_previous_run_before_training(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import oodguard.demo.run as demo_run

    def no_training(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("trained although --out was going to be refused")

    monkeypatch.setattr(demo_run, "load_digits_data", no_training)
    monkeypatch.setattr(demo_run, "train_autoencoder", no_training)
    out = tmp_path / "demo"
    out.mkdir()
    (out / "report.json").write_text("{}")
    assert main(["demo", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "already holds a previous demo run (report.json)" in err
    assert "--overwrite" in err and "--out DIR" in err
    (out / "bundle").mkdir()
    (out / "bundle" / "notes.txt").write_text("mine")  # not a bundle: refused even so
    assert main(["demo", "--out", str(out), "--overwrite"]) == 1
    assert "is a directory that is not a bundle" in capsys.readouterr().err
    assert (out / "bundle" / "notes.txt").read_text() == "mine"


def test_demo_without_pillow_names_the_extra(tmp_path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL → ImportError
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'oodguard[demo,cpu]'" in err and "pip install -e '.[demo,cpu]'" in err
    assert not (tmp_path / "d").exists()


# --- progress --------------------------------------------------------------------------------


def test_progress_only_on_a_terminal_and_not_under_quiet(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import logging

    from oodguard.progress import wants_progress

    log = logging.getLogger("oodguard.test_progress")
    log.setLevel(logging.INFO)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not wants_progress(log)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert wants_progress(log)
    log.setLevel(logging.WARNING)  # what -q sets
    assert not wants_progress(log)
    assert wants_progress(log, True) and not wants_progress(log, False)


def test_calibrate_draws_a_bar_on_a_terminal_unless_quiet(raw_bundle, data, tmp_path, capsys,  # type: ignore[no-untyped-def]
                                                         monkeypatch) -> None:
    import logging

    np.save(tmp_path / "val.npy", data["val"])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    root = logging.getLogger()
    before = root.level
    args = ["calibrate", str(raw_bundle), str(tmp_path / "val.npy")]
    try:
        # main() configures logging only where nothing did before (pytest did): set by hand
        root.setLevel(logging.INFO)
        assert main([*args, "--out", str(tmp_path / "a")]) == 0
        assert "calibration: write" in capsys.readouterr().err
        root.setLevel(logging.WARNING)  # what -q sets
        assert main(["-q", *args, "--out", str(tmp_path / "b")]) == 0
        assert "calibration:" not in capsys.readouterr().err
    finally:
        root.setLevel(before)


def test_training_bar_counts_epochs(data, capsys) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    from oodguard.demo.train import train_autoencoder

    train_autoencoder(data["train"][:64], latent=2, hidden=8, epochs=3, progress=True)
    err = capsys.readouterr().err
    assert "training" in err and "3/3" in err and "loss" in err
    train_autoencoder(data["train"][:64], latent=2, hidden=8, epochs=3, progress=False)
    assert capsys.readouterr().err == ""
