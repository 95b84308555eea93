"""The calibration study still runs on an artifact directory and summarises what it measured."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_study_on_an_artifact_directory(raw_bundle, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One artifact (the session's bundle, its data, a uniform-noise OOD set): the study copies
    the bundle (the artifact stays uncalibrated), evaluates the chosen variants, and reports
    per-variant AUROCs, FPRs and a summary against the baselines it finds in the bundle."""
    art = tmp_path / "artifacts" / "m0"
    shutil.copytree(raw_bundle, art / "bundle")
    np.savez(art / "data.npz", x_val=data["val"], x_test=data["test"],
             ood__noise=data["noise"])
    out = tmp_path / "study.json"
    variants = ["old_default", "rich+req+2s+keepsign fisher"]
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "calibration_study.py"), "--artifacts",
         str(art.parent), "--variants", *variants, "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    doc = json.loads(out.read_text())
    (res,) = doc["results"]
    assert set(res["variants"]) == set(variants) == set(doc["summary"])
    assert "calibration.json" not in {p.name for p in (art / "bundle").iterdir()}
    v = res["variants"]["rich+req+2s+keepsign fisher"]
    assert v["used"][:3] == ["recon_error", "latent_knn", "latent_mahalanobis"]
    assert 0.0 <= v["fpr"] <= 1.0 and 0.03 <= v["fpr_resampled_mean"] <= 0.06
    assert v["auroc"]["noise"] > 0.9
    s = doc["summary"]["rich+req+2s+keepsign fisher"]
    assert s["pairs"] == 1 and 0.0 <= s["within_0.02"] <= 1.0
