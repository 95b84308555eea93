"""The cost of the guard around the engine, its start-up time and its memory.

- overhead at batch 1 and 256: ``guard.check(x)`` against ``guard.engine.run(x)``, interleaved,
  with the parts timed on their own (validation, scorer + p-values, metrics, the drift
  monitor's update), and a guard loaded with ``drift=0.05`` (its check, and the update alone);
- import + load to first score, in a fresh process that imports only ``oodguard``;
- peak resident memory of that process (and a check that torch / scikit-learn / onnx were not
  imported), and the peak when a batch 64× larger than ``max_batch`` is scored (chunking keeps
  the graph's working memory bounded).

    python benchmarks/guard.py --out results/guard.json [--bundle PATH]

Without ``--bundle`` a demo bundle (the demo autoencoder, T=32, calibrated) is built first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    format_table,
    machine_info,
    summarise,
    time_interleaved,
    write_json,
)

# Runs in a fresh interpreter: only the runtime is imported (timed from before the import).
_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()

def peak_mb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve, so a child started from
    # this (torch-laden) benchmark would report the parent's peak.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


import numpy as np
from oodguard import Guard
t_import = time.perf_counter() - t0
guard = Guard.load(sys.argv[1], registry=None, max_batch=int(sys.argv[3]) or None)
t_load = time.perf_counter() - t0
x = np.load(sys.argv[2])
rss_before = peak_mb()
guard.check(x[:1])
t_first = time.perf_counter() - t0
rows = int(sys.argv[4])
if rows:
    big = np.ascontiguousarray(np.resize(x, (rows, *x.shape[1:])))
    guard.check(big)
heavy = sorted(m for m in ("torch", "sklearn", "onnx", "scipy") if m in sys.modules)
print(json.dumps({"import_s": t_import, "load_s": t_load, "first_score_s": t_first,
                  "peak_rss_mb": peak_mb(), "peak_rss_before_first_score_mb": rss_before,
                  "max_batch": guard.engine.max_batch, "heavy_modules": heavy}))
"""


def build_bundle(root: Path, *, steps: int, epochs: int) -> tuple[Path, np.ndarray]:
    from oodguard.calibration import calibrate
    from oodguard.calibration.data import load_digits_data
    from oodguard.demo.train import train_autoencoder
    from oodguard.export import export_bundle

    data = load_digits_data()
    model = train_autoencoder(data.train, epochs=epochs, progress=False)
    export_bundle(root / "raw", model=model, x_train=data.train, steps=steps)
    calibrate(root / "raw", data.val, alpha=0.05, out=root / "bundle")
    x = np.concatenate([data.test, *(v for _, v in data.ood.values())]).astype(np.float32)
    return root / "bundle", x


def overhead(
    bundle: Path, x: np.ndarray, batches: list[int], budget: float, providers: str = "auto",
    batch_threads: int = 0,
) -> list[dict[str, Any]]:
    from prometheus_client import CollectorRegistry

    from oodguard import Guard
    from oodguard.validation import validate_batch

    opts = {"batch_threads": batch_threads} if batch_threads else None
    guard = Guard.load(bundle, registry=CollectorRegistry(), providers=providers,
                       engine_options=opts)
    bare = Guard.load(bundle, registry=None, providers=providers, engine_options=opts)
    drifting = Guard.load(bundle, registry=CollectorRegistry(), providers=providers,
                          engine_options=opts, drift=0.05)
    # The overhead is what a check costs beyond the engine alone: median check() minus median
    # engine.run() on the same batch, interleaved in one run. The time a check spends outside
    # its own engine.run call is reported too: a stricter reading that also charges the guard
    # for the cold caches its numpy code meets right after the engine.
    engine_run = guard.engine.run
    spent: list[float] = []

    def timed_engine(x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = engine_run(x)
        spent.append(time.perf_counter() - t0)
        return out  # type: ignore[no-any-return]

    guard.engine.run = timed_engine
    rows = []
    try:
        for n in batches:
            xb = np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])))
            feats = engine_run(xb)
            score = guard.scorer.score(feats)
            p = guard.scorer.p_value(score)
            outside: list[float] = []

            def check(xb: np.ndarray = xb, outside: list[float] = outside) -> None:
                t0 = time.perf_counter()
                guard.check(xb)
                outside.append(time.perf_counter() - t0 - spent[-1])

            # The parts as check() runs them (one path for every batch size).
            def scoring(feats: np.ndarray = feats) -> Any:
                s = guard.scorer.score(feats)
                return guard.scorer.p_value(s) <= guard.alpha

            def metrics(s: np.ndarray = score, p: np.ndarray = p, m: Any = guard.metrics) -> None:
                m.observe_check(s, p, 0, engine_s=1e-3, scoring_s=1e-4, total_s=1.1e-3)

            fns = {
                "engine": lambda xb=xb: engine_run(xb),
                "check": check,
                "check_no_metrics": lambda xb=xb: bare.check(xb),
                "check_drift": lambda xb=xb: drifting.check(xb),
                "drift_update": lambda p=p, m=drifting.drift: m.update(p),
                "validation": lambda xb=xb: validate_batch(xb, guard.input_spec),
                "scoring": scoring,
                "metrics": metrics,
            }
            lat = time_interleaved(fns, budget_s=budget, rounds=100, min_calls=1)
            med = {k: float(np.median(v)) * 1e6 for k, v in lat.items()}
            extra = med["check"] - med["engine"]
            row = {"batch": n, **{f"{k}_us": v for k, v in med.items()},
                   "overhead_us": extra, "overhead_pct": 100 * extra / med["engine"],
                   "drift_us": med["check_drift"] - med["check"],
                   "outside_engine_us": float(np.median(outside)) * 1e6,
                   "p99_check_us": float(np.percentile(lat["check"], 99)) * 1e6,
                   "p99_engine_us": float(np.percentile(lat["engine"], 99)) * 1e6,
                   "samples_per_s": summarise(lat["check"], n)["samples_per_s"]}
            rows.append(row)
    finally:
        del guard.engine.run
    return rows


def child(bundle: Path, x_path: Path, *, max_batch: int = 0, rows: int = 0) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, str(bundle), str(x_path),
                          str(max_batch), str(rows)],
                         capture_output=True, text=True, check=True)
    doc: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    doc["process_wall_s"] = time.perf_counter() - t0
    return doc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", help="a calibrated bundle (default: build the demo bundle)")
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--budget", type=float, default=4.0, help="seconds of timing per batch size")
    p.add_argument("--starts", type=int, default=5, help="fresh processes to time")
    p.add_argument("--providers", default="auto", help="auto, cpu or cuda (overhead rows)")
    p.add_argument("--batch-threads", type=int, default=0,
                   help="the engine's batch_threads for the overhead rows (default: its own)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.bundle:
            bundle = Path(args.bundle)
            from oodguard.bundle import read_bundle

            shape = read_bundle(bundle).manifest.input.shape
            x = np.random.default_rng(0).uniform(0, 1, (512, *shape)).astype(np.float32)
        else:
            bundle, x = build_bundle(root, steps=args.steps, epochs=args.epochs)
        x_path = root / "x.npy"
        np.save(x_path, x[:512])
        rows = overhead(bundle, x, [1, 256], args.budget, args.providers, args.batch_threads)
        starts = [child(bundle, x_path) for _ in range(args.starts)]
        small = child(bundle, x_path, max_batch=1024, rows=1024)
        large = child(bundle, x_path, max_batch=1024, rows=64 * 1024)
    start = {k: float(np.median([s[k] for s in starts])) for k in
             ("import_s", "load_s", "first_score_s", "process_wall_s", "peak_rss_mb")}
    start["heavy_modules"] = sorted({m for s in starts for m in s["heavy_modules"]})
    doc = {"benchmark": "guard", "machine": machine_info(), "bundle": str(bundle if args.bundle
                                                                          else "demo, T=32"),
           "rows": rows, "startup": start, "startup_runs": starts,
           "chunking": {"batch_1024": small, "batch_65536": large},
           "seconds": time.perf_counter() - t0}
    cols = [("batch", "batch", "d"), ("engine_us", "engine µs", ",.0f"),
            ("check_us", "check µs", ",.0f"), ("overhead_us", "overhead µs", ",.0f"),
            ("overhead_pct", "overhead %", ".1f"),
            ("outside_engine_us", "outside engine.run µs", ",.0f"),
            ("validation_us", "validation µs", ",.1f"),
            ("scoring_us", "scoring µs", ",.1f"), ("metrics_us", "metrics µs", ",.1f"),
            ("check_no_metrics_us", "check w/o metrics µs", ",.0f"),
            ("drift_update_us", "drift update µs", ",.2f"),
            ("drift_us", "check with drift − check µs", ",.1f")]
    print(format_table(rows, cols))
    print(f"\nfresh process (median of {len(starts)}): import {start['import_s']:.3f}s, "
          f"load {start['load_s']:.3f}s, first score {start['first_score_s']:.3f}s "
          f"(process wall {start['process_wall_s']:.3f}s), peak RSS {start['peak_rss_mb']:.0f} MB; "
          f"heavy modules imported: {start['heavy_modules'] or 'none'}")
    print(f"chunking (max_batch=1024): peak RSS {small['peak_rss_mb']:.0f} MB after a batch of "
          f"1024, {large['peak_rss_mb']:.0f} MB after a batch of 65536 "
          f"(input alone {65536 * x[0].size * 4 / 2**20:.0f} MB)")
    if args.out:
        write_json(args.out, doc)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
