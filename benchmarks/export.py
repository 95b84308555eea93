"""Export time and peak memory per model family (issue 11's table, re-measured).

Each family is exported in a fresh subprocess (so the time is a user's first export, torch's
tracing caches cold, and the peak RSS is that export's alone), with the time split into attractor
discovery, latent baselines, ONNX graphs (torch.onnx.export), the parity check and the rest.
Models are random-init (seeded): the export's cost does not depend on training, except through
attractor discovery (a trained contractive map converges in a few steps; the rotation family
shows the other extreme, a map that never converges).

    .venv/bin/python benchmarks/export.py --out benchmarks/results/export.json
    .venv/bin/python benchmarks/export.py --tiny          # seconds: small inputs, T = 4

torch runs one thread (``OODGUARD_BENCH_THREADS`` sets another number): on a shared 2-core
machine two torch threads beside ONNX Runtime's own oversubscribed the cores and the GRU row took
79 s instead of 9 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from _common import machine_info, write_json  # noqa: E402

FAMILIES = ("conv28", "conv28_latent512", "spatial3", "vae", "gru", "lstm", "conv1d",
            "rotation", "vit_mae", "pyod", "float64")
STAGES = ("discover_attractors", "fit_latent_baselines", "export_graphs", "_verify")


def _family(name: str, tiny: bool) -> tuple[dict[str, Any], np.ndarray, int]:
    """``(export_bundle keyword arguments, x_train, T)``."""
    from _export_models import (
        VAE,
        GRUDecoder,
        GRUEncoder,
        Rotation,
        conv1d_ae,
        conv_ae,
        images,
        sines,
        spatial_ae,
        tabular,
    )

    torch.manual_seed(0)
    n = 64 if tiny else 512
    steps = 4 if tiny else 32
    length = 16 if tiny else 128
    if name in ("conv28", "conv28_latent512"):
        latent = 512 if name.endswith("512") else 32
        enc, dec = conv_ae(latent=latent, width=4 if tiny else 16)
        return {"encoder": enc.eval(), "decoder": dec.eval()}, images(n), (
            64 if latent == 512 and not tiny else steps)
    if name == "spatial3":
        enc, dec = spatial_ae(channels=3, side=32)
        return {"encoder": enc.eval(), "decoder": dec.eval()}, images(n, 3, 32), steps
    if name == "vae":
        return {"model": VAE(dim=30, latent=8).eval(), "latent": "mean"}, tabular(n, 30), steps
    if name in ("gru", "lstm"):
        enc_g = GRUEncoder(hidden=16, latent=8, cell=name)
        dec_g = GRUDecoder(length, 16, 8, cell=name)
        return {"encoder": enc_g.eval(), "decoder": dec_g.eval()}, sines(n, length), steps
    if name == "conv1d":
        enc, dec = conv1d_ae(length)
        return {"encoder": enc.eval(), "decoder": dec.eval()}, sines(n, length), steps
    if name == "rotation":
        x = np.random.default_rng(0).standard_normal((n, 2)).astype(np.float32) + 3
        return {"encoder": nn.Identity(), "decoder": Rotation()}, x, steps
    if name == "vit_mae":
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        from oodguard.export import vit_mae

        cfg = ViTMAEConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32,
                           num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           decoder_hidden_size=32, decoder_num_hidden_layers=1,
                           decoder_num_attention_heads=2, decoder_intermediate_size=64)
        return ({"model": vit_mae(ViTMAEForPreTraining(cfg).eval()), "max_steps": 100},
                images(n, 3, 32), steps)
    if name == "pyod":
        from pyod.models.auto_encoder import AutoEncoder

        from oodguard.export import pyod_autoencoder

        x = tabular(n, 30)
        det = AutoEncoder(epoch_num=2, hidden_neuron_list=[16, 8], verbose=0, random_state=0)
        det.fit(x)
        return {"model": pyod_autoencoder(det)}, x, steps
    if name == "float64":
        enc, dec = conv_ae(latent=32, width=4 if tiny else 16)
        return ({"encoder": enc.double().eval(), "decoder": dec.double().eval()},
                images(n).astype(np.float64), steps)
    raise SystemExit(f"unknown family {name!r}; one of {FAMILIES}")


def _timed(module: Any, names: tuple[str, ...], into: dict[str, float]) -> None:
    for n in names:
        fn: Callable[..., Any] = getattr(module, n)

        def wrap(*a: Any, _fn: Callable[..., Any] = fn, _n: str = n, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                into[_n] = into.get(_n, 0.0) + time.perf_counter() - t

        setattr(module, n, wrap)


def run_one(name: str, tiny: bool, out_dir: Path) -> dict[str, Any]:
    """Export one family in this process; the row of the table."""
    import oodguard.export.exporter as exporter
    from oodguard.export import export_bundle

    torch.set_num_threads(int(os.environ.get("OODGUARD_BENCH_THREADS", "1")))
    kw, x, steps = _family(name, tiny)
    stages: dict[str, float] = {}
    _timed(exporter, STAGES, stages)
    t = time.perf_counter()
    row: dict[str, Any] = {"family": name, "steps": steps, "n_train": len(x),
                           "input_shape": list(x.shape[1:])}
    try:
        rep = export_bundle(out_dir / name, x_train=x, steps=steps, overwrite=True, **kw)
        row |= {"ok": True, "attractors": len(rep.attractors.attractors),
                "converged": f"{rep.attractors.n_data_converged + rep.attractors.n_noise_converged}"
                             f"/{rep.attractors.n_data + rep.attractors.n_noise}",
                "latent_shape": rep.dynamics["model"]["latent_shape"],
                "bundle_mb": round(rep.onnx_bytes / 2**20, 2)}
    except Exception as err:  # a refusal is a result of the table too
        row |= {"ok": False, "error": f"{type(err).__name__}: {err}"[:300]}
    row["export_s"] = round(time.perf_counter() - t, 2)
    row["stages_s"] = {k.strip("_"): round(v, 2) for k, v in stages.items()}
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    row["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--tiny", action="store_true", help="small inputs, T = 4 (a smoke run)")
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--work", default=None, help="where bundles are written (default a temp dir)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.tiny, Path(args.work))))
        return
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        print(f"{'family':<18}{'ok':<4}{'export s':>9}{'discover':>9}{'graphs':>8}{'parity':>8}"
              f"{'peak MB':>9}{'bundle MB':>10}  converged  load")
        for fam in args.families.split(","):
            cmd = [sys.executable, __file__, "--one", fam, "--work", str(work)]
            cmd += ["--tiny"] if args.tiny else []
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                raise SystemExit(f"{fam} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(lines[-1])
            rows.append(row)
            st = row["stages_s"]
            print(f"{fam:<18}{'y' if row['ok'] else 'n':<4}{row['export_s']:>9.1f}"
                  f"{st.get('discover_attractors', 0):>9.1f}{st.get('export_graphs', 0):>8.1f}"
                  f"{st.get('verify', 0):>8.1f}{row['peak_rss_mb']:>9.0f}"
                  f"{row.get('bundle_mb', 0):>10.2f}  {row.get('converged', '-'):<10} "
                  f"{row['load_average'][0]}" + ("" if row["ok"] else f"  {row['error'][:80]}"))
    doc = {"machine": machine_info(), "tiny": args.tiny, "rows": rows}
    if args.out:
        write_json(args.out, doc)


if __name__ == "__main__":
    main()
