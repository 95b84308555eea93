"""Shared pieces of the benchmarks: machine info, interleaved timing, the models, JSON output.

Timing on a shared machine is noisy, so every comparison is made *within one run*: the
implementations of one cell are interleaved round by round (A B C A B C …), every call is timed
on its own, and the summary is the median (p50) and the 99th percentile of those per-call
latencies. ``samples_per_s`` is ``batch / p50``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge the numbers: CPU, cores, memory, versions, load."""
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    for mod in ("torch", "onnxruntime", "onnx"):
        try:
            m = __import__(mod)
            info[mod] = m.__version__
        except ImportError:
            continue
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    budget_s: float,
    rounds: int = 5,
    min_calls: int = 3,
    warmup: int = 2,
) -> dict[str, np.ndarray]:
    """Per-call latencies (seconds) of each function, interleaved round by round.

    Each function gets about ``budget_s / len(fns)`` seconds in total, split over ``rounds``
    rounds, and at least ``min_calls`` calls per round.
    """
    per_call: dict[str, float] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        per_call[name] = max((time.perf_counter() - t0) / warmup, 1e-7)
    share = budget_s / max(len(fns), 1) / rounds
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            calls = max(min_calls, int(share / per_call[name]))
            lat = out[name]
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                lat.append(time.perf_counter() - t0)
    return {name: np.asarray(v) for name, v in out.items()}


def summarise(latencies: np.ndarray, batch: int) -> dict[str, float]:
    """p50 / p99 latency in milliseconds and samples/s (``batch / p50``)."""
    p50, p99 = np.percentile(latencies, [50, 99])
    return {
        "p50_ms": float(p50 * 1e3),
        "p99_ms": float(p99 * 1e3),
        "samples_per_s": float(batch / p50),
        "calls": int(len(latencies)),
    }


def measure_sgemm(threads: int, *, n: int = 2048, budget_s: float = 2.0) -> dict[str, float]:
    """The machine's float32 matrix-multiply rate (GFLOP/s, median) with numpy, torch and
    ONNX Runtime's own MatMul (MLAS), given ``threads`` threads.

    The BLAS kernels differ by machine: on an AVX-512 EPYC, numpy's OpenBLAS (built for Haswell)
    reached 240 GFLOP/s and MLAS 440 with 2 threads, so a reference without MLAS put the engine
    at 174% of "the machine's rate". ``onnxruntime_split`` runs ``threads`` single-threaded
    products side by side, the way the engine splits a large batch. Callers take the best."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty_like(a)
    fns: dict[str, Callable[[], Any]] = {"numpy": lambda: np.matmul(a, b, out=c)}
    products = {"numpy": 1}
    intra = _ort_matmul(n, threads)
    if intra is not None:
        fns["onnxruntime"] = lambda: intra(a, b)
        products["onnxruntime"] = 1
    if threads > 1 and intra is not None:
        from concurrent.futures import ThreadPoolExecutor

        singles = [f for f in (_ort_matmul(n, 1) for _ in range(threads)) if f is not None]
        pairs = [(rng.standard_normal((n, n), dtype=np.float32), b) for _ in range(threads)]
        pool = ThreadPoolExecutor(threads)

        def side_by_side() -> Any:  # onnxruntime releases the GIL while it runs
            futures = [pool.submit(f, x, y) for f, (x, y) in zip(singles, pairs, strict=True)]
            return [f.result() for f in futures]

        fns["onnxruntime_split"] = side_by_side
        products["onnxruntime_split"] = threads
    try:
        import torch

        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        torch.set_num_threads(threads)
        fns["torch"] = lambda: torch.mm(ta, tb, out=tc)
        products["torch"] = 1
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():  # the GPU rows are compared with the GPU's rate
            ga, gb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()

            def gpu_mm() -> Any:
                out = torch.mm(ga, gb)
                torch.cuda.synchronize()
                return out

            fns["cuda_torch"] = gpu_mm
            products["cuda_torch"] = 1
    except ImportError:
        pass
    # One library at a time, not interleaved: a BLAS's worker threads spin for a while after a
    # product and took cores from the next library's call (MLAS measured 240-370 GFLOP/s
    # interleaved, 440 on its own). A pause lets them park before the next library runs.
    lat = {}
    for name, fn in fns.items():
        time.sleep(0.3)
        lat.update(time_interleaved({name: fn}, budget_s=budget_s / len(fns), rounds=1,
                                    min_calls=3))
    if "onnxruntime_split" in fns:
        pool.shutdown()
    flops = 2.0 * n**3
    return {f"{k}_gflops": float(products[k] * flops / np.median(v) / 1e9)
            for k, v in lat.items()}


def _ort_matmul(n: int, threads: int) -> Callable[[np.ndarray, np.ndarray], Any] | None:
    """``f(a, b)``: one ONNX ``MatMul`` of two ``n×n`` float32 inputs through ONNX Runtime
    (CPU, ``threads`` intra-op threads), or None without onnx/onnxruntime."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm",
                              io[:2], io[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda a, b: sess.run(None, {"a": a, "b": b})


def write_json(path: str | os.PathLike[str], doc: Mapping[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False, default=_plain) + "\n")
    os.replace(tmp, p)


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A GitHub-markdown table; ``columns`` are ``(key, header, format)``."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---:" if f else "---" for _, _, f in columns) + "|"
    lines = [head, rule]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("" if v is None else (format(v, fmt) if fmt else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
