"""benchmarks/classifier_ood.py's tiny mode (oodguard's side only) runs and writes the
documented JSON. No timings are asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_classifier_benchmark_tiny_run_writes_results(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "classifier_ood.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "classifier_ood.py"), "--tiny",
           "--out", str(out)]
    run = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900)
    assert "| digits-mlp | embedding | MEAN |" in run.stdout
    doc = json.loads(out.read_text())
    assert doc["tiny"] and doc["alpha"] == 0.05 and "not run" in doc["peers"]
    (m,) = doc["models"]
    assert set(m["methods"]) == {"embedding", "embedding (AE on layer)", "raw",
                                 "embedding_mahalanobis (column)", "msp (here)", "energy (here)"}
    assert set(m["methods"]["embedding_mahalanobis (column)"]["ood"]) == {
        "digits_5_9", "inverted", "uniform_noise"}
    for name in ("embedding", "embedding (AE on layer)", "raw"):
        g = m["methods"][name]
        lo, hi = g["fpr_range_99"]
        assert 0 <= lo <= hi <= 1 and g["fpr_within"] == (lo <= g["fpr_at_alpha"] <= hi)
        assert set(g["ood"]) == {"digits_5_9", "inverted", "uniform_noise"}
        for v in g["ood"].values():
            assert 0 <= v["auroc"] <= 1 and 0 <= v["fpr95"] <= 1 and 0 <= v["tpr_at_alpha"] <= 1
    assert out.with_suffix(".png").stat().st_size > 0
