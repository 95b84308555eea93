"""The benchmark scripts still run and write the documented JSON (tiny settings, no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_engine_benchmark_writes_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "engine.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "engine.py"), "--models", "demo",
         "--steps", "2", "--batches", "1,40", "--epochs", "1", "--budget", "0.05",
         "--threads", "1", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    doc = json.loads(out.read_text())
    assert {"machine", "sgemm", "rows", "checks"} <= set(doc)
    impls = {r["impl"] for r in doc["rows"]}
    assert impls == {"torch", "torch-compile", "onnx-unrolled", "onnx-intra", "onnx-loop"}
    for r in doc["rows"]:
        assert {"model", "impl", "T", "batch", "samples_per_s", "ratio_vs_torch", "p50_ms",
                "p99_ms"} <= set(r)
        assert r["samples_per_s"] > 0
    # every ONNX variant computes the reference's features
    assert all(c["max_scaled_diff_vs_torch"] < 1e-3 for c in doc["checks"])


@pytest.mark.slow
def test_guard_benchmark_reports_overhead_and_a_runtime_only_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "guard.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "guard.py"), "--steps", "2", "--epochs", "1",
         "--budget", "0.1", "--starts", "1", "--providers", "cpu", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    doc = json.loads(out.read_text())
    assert [r["batch"] for r in doc["rows"]] == [1, 256]
    assert doc["startup"]["heavy_modules"] == []  # torch / sklearn / onnx not imported
    assert doc["startup"]["peak_rss_mb"] > 0


@pytest.mark.slow
def test_soak_benchmark_quick_mode_reports_no_errors_and_no_lost_request(
        tmp_path, bundle) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "soak.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--quick", "--bundle",
         str(bundle), "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    doc = json.loads(out.read_text())
    soak, drain, slow = doc["soak"], doc["drain"], doc["slow_bodies"]
    assert soak["errors"] == 0 and soak["requests"] == 400 and soak["p99_ms"] > 0
    assert {"rss_after_warmup_mb", "rss_end_mb", "rss_growth_pct", "requests_per_s"} <= set(soak)
    assert drain["in_flight_at_sigterm"] == drain["sent"] == 40
    assert drain["lost"] == 0 and drain["exit_code"] == 0
    assert sum(slow["statuses"].values()) == slow["connections"]
    assert set(slow["statuses"]) <= {"408", "503"}
