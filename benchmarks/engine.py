"""The fused trajectory graph against the straightforward torch implementation.

For each model (``demo``: the demo autoencoder 64-32-8 trained briefly on digits; ``large``: an
MLP autoencoder 784-512-256-32 with random weights), each ``T`` and each batch size, the same
features (trajectory features and latent baselines) are computed by

- ``torch``: :func:`_models.torch_reference`, a Python loop over ``T`` steps and the features
  in torch under ``inference_mode`` (what a user would write from the paper);
- ``torch-compile``: the same code as a module through ``torch.compile`` (default inductor
  backend; on CPU it compiles C++ with the system's gcc, offline) — the fastest a torch user
  gets without oodguard. Compilation (per batch size until torch marks the batch dynamic) is
  done before timing and reported as ``compile_s`` in ``checks``;
- ``onnx-unrolled``: the exported graph (``T`` steps unrolled) through :class:`oodguard.Engine`;
- ``onnx-intra``: the same graph and engine with ONNX Runtime's own intra-op threading
  (``intra_op_threads=threads, batch_threads=1``) instead of the engine's default (single-threaded
  runs, large batches split over ``batch_threads``) — kept to justify that default;
- ``onnx-loop``: the same graph built around an ONNX ``Loop`` (see ``_loop.py``);

interleaved in one run, and reported as samples/s, p50/p99 latency per call, the ratio to
``torch`` and to ``torch-compile`` measured in the same run, and achieved GFLOP/s against the
machine's sgemm rate.

Denormals: converging trajectories produce subnormal step differences, and torch on x86 ran
the reference ~50× slower until ``torch.set_flush_denormal(True)``; the benchmark sets it for
the whole run (recorded as ``machine.torch_flush_denormal``) so that the torch rows are not
handicapped, and ONNX Runtime sessions set ``session.set_denormal_as_zero`` (see
:mod:`oodguard.export.stability`).

    python benchmarks/engine.py --quick --out results/engine.json
    python benchmarks/engine.py --providers cuda --compare results/engine.json   # on a GPU

Not a pass/fail test: it prints a table and writes JSON (``rows`` and ``machine``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    format_table,
    machine_info,
    measure_sgemm,
    summarise,
    time_interleaved,
    write_json,
)

IMPLS = ("torch", "torch-compile", "onnx-unrolled", "onnx-intra", "onnx-loop")
COLUMNS = [
    ("model", "model", ""), ("impl", "impl", ""), ("T", "T", "d"), ("batch", "batch", "d"),
    ("samples_per_s", "samples/s", ",.0f"), ("p50_ms", "p50 ms", ".3f"),
    ("p99_ms", "p99 ms", ".3f"), ("ratio_vs_torch", "× torch", ".2f"),
    ("ratio_vs_compile", "× compile", ".2f"),
    ("gflops", "GFLOP/s", ".1f"), ("pct_sgemm", "% sgemm", ".0f"),
]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--quick", action="store_true",
                   help="T=32 only, fewer batch sizes, shorter timing (< 2 minutes)")
    p.add_argument("--models", default="demo,large")
    p.add_argument("--steps", default=None, help="comma-separated T values (default 16,32,64)")
    p.add_argument("--batches", default=None, help="default 1,32,256,4096")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--providers", default="cpu", help="cpu, cuda or auto (for the ONNX rows)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for torch and ONNX Runtime alike (default: all cores)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of timing per (model, T, batch) cell")
    p.add_argument("--epochs", type=int, default=40, help="training epochs of the demo AE")
    p.add_argument("--compare", help="a previous JSON (e.g. the CPU run): adds ratio_vs_compare")
    return p.parse_args()


def _engine(data: bytes, bm: Any, steps: int, args: argparse.Namespace, *,
            intra: bool = False) -> Any:
    from oodguard.bundle import InputSpec, Manifest
    from oodguard.engine import Engine
    from oodguard.features import FEATURE_NAMES

    manifest = Manifest(
        input=InputSpec(name="x", shape=tuple(bm.inputs.shape[1:])), output_name="features",
        feature_names=FEATURE_NAMES, steps=steps, attractor_count=len(bm.attractors),
        latent_dim=int(bm.attractors.shape[1]), convergence_tol=bm.tol,
    )
    if intra:
        return Engine(data, manifest, providers=args.providers, intra_op_threads=args.threads,
                      batch_threads=1)
    return Engine(data, manifest, providers=args.providers, batch_threads=args.threads)


def _check(ref: np.ndarray, got: np.ndarray) -> float:
    """Worst |difference| relative to (1 + median |ref|) over features (parity's scale)."""
    scale = 1.0 + np.median(np.abs(ref), axis=0)
    return float((np.abs(got - ref) / scale).max())


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from _loop import loop_model
    from _models import (
        CompiledReference,
        baselines_of,
        batch_of,
        demo_model,
        large_model,
        torch_reference,
    )

    from oodguard.export.exporter import export_onnx
    from oodguard.export.trajectory import TrajectoryFeatures

    torch.set_num_threads(args.threads)
    flush = torch.set_flush_denormal(True)
    steps_list = [int(s) for s in (args.steps or ("32" if args.quick else "16,32,64")).split(",")]
    batches = [int(b) for b in (args.batches or ("1,256,4096" if args.quick
                                                  else "1,32,256,4096")).split(",")]
    impls = [i for i in args.impls.split(",") if i]
    unknown = set(impls) - set(IMPLS)
    if unknown or "torch" not in impls:
        raise SystemExit(f"--impls must include torch and be among {IMPLS}; got {impls}")
    device = "cpu"
    if args.providers in ("cuda", "auto") and torch.cuda.is_available():
        device = "cuda"
    machine = machine_info()
    machine["threads"] = args.threads
    machine["torch_device"] = device
    machine["torch_flush_denormal"] = flush
    print(f"# {machine['cpu']}, {machine['logical_cores']} cores, threads={args.threads}, "
          f"load {machine.get('load_average_at_start')}", flush=True)
    sgemm = measure_sgemm(args.threads, budget_s=1.5 if args.quick else 4.0)
    sgemm_best = max(v for k, v in sgemm.items() if not k.startswith("cuda"))
    sgemm_gpu = sgemm.get("cuda_torch_gflops")
    print(f"# sgemm 2048³: {sgemm}", flush=True)
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    models = []
    for name in args.models.split(","):
        t0 = time.perf_counter()
        bm = demo_model(epochs=args.epochs) if name == "demo" else large_model()
        print(f"# {bm.description}: K={len(bm.attractors)} attractors "
              f"({time.perf_counter() - t0:.1f}s)", flush=True)
        models.append({"name": bm.name, "description": bm.description,
                       "attractors": len(bm.attractors), "latent_dim": bm.attractors.shape[1]})
        enc, dec = bm.encoder.to(device), bm.decoder.to(device)
        a_dev = torch.from_numpy(bm.attractors).to(device)
        for steps in steps_list:
            baselines = baselines_of(bm, steps)
            module = TrajectoryFeatures(bm.encoder.cpu(), bm.decoder.cpu(),
                                        torch.from_numpy(bm.attractors), steps=steps,
                                        tol=bm.tol, baselines=baselines).eval()
            example = torch.from_numpy(batch_of(bm, 4))
            unrolled = export_onnx(module, example)
            engines = {"onnx-unrolled": _engine(unrolled, bm, steps, args)}
            quick_large = args.quick and bm.name == "large"
            if "onnx-intra" in impls and not quick_large:
                engines["onnx-intra"] = _engine(unrolled, bm, steps, args, intra=True)
            if "onnx-loop" in impls and not quick_large:
                engines["onnx-loop"] = _engine(loop_model(module, example), bm, steps, args)
            enc, dec = bm.encoder.to(device), bm.decoder.to(device)
            xc = batch_of(bm, 256)
            ref = torch_reference(enc, dec, a_dev, torch.from_numpy(xc).to(device),
                                  steps=steps, tol=bm.tol, baselines=baselines).cpu().numpy()
            for impl, eng in engines.items():
                checks.append({"model": bm.name, "T": steps, "impl": impl,
                               "max_scaled_diff_vs_torch": _check(ref, eng.run(xc))})
            compiled = None
            if "torch-compile" in impls:
                compiled = torch.compile(CompiledReference(
                    enc, dec, a_dev, steps=steps, tol=bm.tol, baselines=baselines).to(device))
                t0 = time.perf_counter()
                with torch.inference_mode():
                    got = compiled(torch.from_numpy(xc).to(device)).cpu().numpy()
                    for batch in batches:  # compile every shape before timing
                        compiled(torch.from_numpy(batch_of(bm, batch)).to(device))
                checks.append({"model": bm.name, "T": steps, "impl": "torch-compile",
                               "max_scaled_diff_vs_torch": _check(ref, got),
                               "compile_s": time.perf_counter() - t0})
            for batch in batches:
                x = batch_of(bm, batch)
                xt = torch.from_numpy(x).to(device)

                def ref_fn(xt: Any = xt, steps: int = steps, enc: Any = enc, dec: Any = dec,
                           a_dev: Any = a_dev, tol: float = bm.tol,
                           baselines: Any = baselines) -> Any:
                    out = torch_reference(enc, dec, a_dev, xt, steps=steps, tol=tol,
                                          baselines=baselines)
                    return out.cpu() if device == "cuda" else out

                fns: dict[str, Any] = {"torch": ref_fn}
                if compiled is not None:
                    def compiled_fn(xt: Any = xt, compiled: Any = compiled) -> Any:
                        with torch.inference_mode():
                            out = compiled(xt)
                        return out.cpu() if device == "cuda" else out

                    fns["torch-compile"] = compiled_fn
                for impl, eng in engines.items():
                    fns[impl] = lambda eng=eng, x=x: eng.run(x)
                flops = bm.flops(steps, batch)
                heavy = flops > 2e10
                budget = args.budget or (2.0 if args.quick else 4.0)
                lat = time_interleaved(fns, budget_s=budget, rounds=3 if heavy else 5,
                                       min_calls=1 if heavy else 3, warmup=1 if heavy else 2)
                base = summarise(lat["torch"], batch)
                comp = summarise(lat["torch-compile"], batch) if "torch-compile" in lat else None
                for impl, ls in lat.items():
                    s = summarise(ls, batch)
                    gflops = flops / (s["p50_ms"] / 1e3) / 1e9
                    on_gpu = (device == "cuda") if impl.startswith("torch") else (
                        engines[impl].providers[0] == "CUDAExecutionProvider")
                    limit = sgemm_gpu if on_gpu and sgemm_gpu else sgemm_best
                    row = {"model": bm.name, "impl": impl, "T": steps, "batch": batch, **s,
                           "ratio_vs_torch": s["samples_per_s"] / base["samples_per_s"],
                           "ratio_vs_compile": (s["samples_per_s"] / comp["samples_per_s"]
                                                if comp else None),
                           "gflops": gflops, "pct_sgemm": 100 * gflops / limit,
                           "provider": "torch-" + device if impl.startswith("torch")
                           else engines[impl].providers[0]}
                    rows.append(row)
                    print(format_table([row], COLUMNS).splitlines()[-1], flush=True)
    if args.compare:
        _add_comparison(rows, Path(args.compare))
    return {"benchmark": "engine", "machine": machine, "sgemm": sgemm, "models": models,
            "checks": checks, "quick": args.quick, "rows": rows}


def _add_comparison(rows: list[dict[str, Any]], path: Path) -> None:
    prev = {(r["model"], r["impl"], r["T"], r["batch"]): r for r in
            json.loads(path.read_text())["rows"]}
    for r in rows:
        old = prev.get((r["model"], r["impl"], r["T"], r["batch"]))
        if old:
            r["ratio_vs_compare"] = r["samples_per_s"] / old["samples_per_s"]


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    for noisy in ("torch", "torch.onnx", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    t0 = time.perf_counter()
    doc = run(args)
    doc["seconds"] = time.perf_counter() - t0
    cols = COLUMNS + ([("ratio_vs_compare", "× compare", ".2f")] if args.compare else [])
    print()
    print(format_table(doc["rows"], cols))
    print("\nfeature agreement (max |diff| / (1 + median|torch|)):")
    for c in doc["checks"]:
        diff = c["max_scaled_diff_vs_torch"]
        print(f"  {c['model']:6s} T={c['T']:<3d} {c['impl']:14s} {diff:.2e}")
    print(f"\n{doc['seconds']:.0f}s in all")
    if args.out:
        write_json(args.out, doc)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
