"""A clean virtual environment with only ``oodguard[cpu]`` loads a bundle and scores, and
neither torch nor scikit-learn is imported (or even installed) there."""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_runtime_only_install(bundle, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", f"{ROOT}[cpu]"],
        capture_output=True, text=True, timeout=900,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    import numpy as np

    np.save(tmp_path / "x.npy", data["test"][:10])
    code = f"""
import json, sys, numpy as np
import oodguard
g = oodguard.Guard.load({str(bundle)!r})
r = g.check(np.load({str(tmp_path / 'x.npy')!r}))
try:
    import torch  # noqa
    torch_installed = True
except ImportError:
    torch_installed = False
print(json.dumps({{"scores": r.score.tolist(), "file": oodguard.__file__,
  "torch_loaded": "torch" in sys.modules, "sklearn_loaded": "sklearn" in sys.modules,
  "torch_installed": torch_installed}}))
"""
    # Run from tmp_path so the source tree cannot shadow the installed package.
    p = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert str(env_dir) in out["file"]
    assert not out["torch_loaded"] and not out["sklearn_loaded"] and not out["torch_installed"]
    from oodguard import Guard

    expected = Guard.load(bundle, registry=None).check(data["test"][:10]).score
    np.testing.assert_allclose(out["scores"], expected, rtol=1e-6)
    # The installed command line (the oodguard.cli package) works without the offline extras.
    cli = env_dir / "bin" / "oodguard"
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("oodguard "), version.stderr
    check = subprocess.run([str(cli), "-q", "check", str(bundle), str(tmp_path / "x.npy")],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    scores = [json.loads(line)["score"] for line in check.stdout.splitlines()]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
