"""``oodguard drift BUNDLE STREAM``: evidence over time, the alarm, the plot, bad arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oodguard.cli import main


def test_drift_replays_a_stream_and_marks_the_alarm(bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    stream = tmp_path / "stream.npy"
    np.save(stream, np.concatenate([data["test"], data["noise"]]))
    out, png = tmp_path / "drift.json", tmp_path / "drift.png"
    assert main(["drift", str(bundle), str(stream), "--output", str(out), "--plot", str(png),
                 "--batch-size", "16", "--providers", "cpu"]) == 0
    doc = json.loads(out.read_text())
    n_in = len(data["test"])
    assert doc["rows"] == n_in + len(data["noise"]) and doc["alarm"]
    assert n_in < doc["alarm_row"] <= doc["rows"]  # after the change, never before
    rows = [r for r, _ in doc["evidence_log10"]]
    assert rows[0] == 16 and rows[-1] == doc["rows"]
    assert max(e for r, e in doc["evidence_log10"] if r <= n_in) < doc["threshold_log10"]
    assert png.stat().st_size > 0
    assert f"alarm: at row {doc['alarm_row']}" in capsys.readouterr().err


def test_drift_on_a_calm_stream_raises_no_alarm(bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    stream = tmp_path / "calm.npy"
    np.save(stream, data["test"])
    assert main(["drift", str(bundle), str(stream), "--providers", "cpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert not doc["alarm"] and doc["alarm_row"] is None


@pytest.mark.parametrize("args, message", [
    (["--false-alarm", "2"], "must be a probability in (0, 1); got '2'"),
    (["--batch-size", "0"], "expected a positive integer, got '0'"),
])
def test_drift_refuses_bad_arguments(bundle, tmp_path, capsys, args, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(["drift", str(bundle), str(tmp_path / "x.npy"), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_drift_needs_arl_for_a_run_length_detector(bundle, data, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    stream = tmp_path / "calm.npy"
    np.save(stream, data["test"])
    assert main(["drift", str(bundle), str(stream), "--statistic", "cusum"]) == 2
    assert "'arl' parameter of DriftSettings" in capsys.readouterr().err
