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
    _reads_every_documented_input(env_dir, bundle, data, tmp_path, expected)


def _run(cli: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(cli), "-q", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def _reads_every_documented_input(env_dir: Path, bundle: Path, data: dict, tmp_path: Path,  # type: ignore[type-arg]
                                  expected: object) -> None:
    """With ``oodguard[cpu]`` alone: ``.npz`` for check and score; an image folder and a
    parquet file get one line naming the extra (exit 2, no traceback); with Pillow added, the
    image folder is read."""
    import numpy as np
    from PIL import Image

    cli = env_dir / "bin" / "oodguard"
    x = data["test"][:10]
    np.savez(tmp_path / "x.npz", x=x)
    check = _run(cli, "check", str(bundle), str(tmp_path / "x.npz"), cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    scores = [json.loads(line)["score"] for line in check.stdout.splitlines()]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    out = tmp_path / "out.jsonl"
    score = _run(cli, "score", str(bundle), str(tmp_path / "x.npz"), "--output", str(out),
                 cwd=tmp_path)
    assert score.returncode == 0, score.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=1e-6)

    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(x.reshape(-1, 4, 4)):
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(images / f"{i:02d}.png")
    (tmp_path / "x.parquet").write_bytes(b"PAR1")  # never read: pyarrow is missing first
    for args, extra in (((str(images), "--reshape"), "images"), ((str(tmp_path / "x.parquet"),
                        "--output", str(tmp_path / "o.jsonl")), "parquet")):
        cmd = ("check", str(bundle), *args) if extra == "images" else ("score", str(bundle),
                                                                      *args)
        r = _run(cli, *cmd, cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
        assert f"needs the {extra} extra: pip install 'oodguard[{extra}]'" in lines[0]
        assert "Traceback" not in r.stderr
    pip = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "pillow"], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    check = _run(cli, "check", str(bundle), str(images), "--reshape", cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    got = [json.loads(line)["score"] for line in check.stdout.splitlines()]
    from oodguard import Guard

    want = Guard.load(bundle, registry=None).check(
        np.round(x * 255).astype(np.float32) / np.float32(255.0)).score
    np.testing.assert_allclose(got, want, rtol=1e-6)
