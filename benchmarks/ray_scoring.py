"""Batch scoring throughput: the local path against Ray Data with 1 and 2 actors.

- ``local``: ``guard.check`` over the rows in chunks of ``--batch-size``, in this process, one
  ONNX Runtime thread (what one actor gets);
- ``ray-1``, ``ray-2``: :func:`oodguard.integrations.ray.score_dataset` over the same rows
  (``ray.data.from_numpy``, one block per 8 batches, in the object store before the clock
  starts), with 1 or 2 actors of
  one CPU and one ORT thread each, consumed on the driver (``iter_batches``). The time includes
  starting the actors and loading the bundle in each: what a job pays once.

Each configuration runs ``--repeats`` times, interleaved (local, ray-1, ray-2, local, ...); the
table gives the median wall time, rows/s, and the cost per row beyond the local path
(``(t - t_local) / rows``, µs). The scores of every Ray run are checked against the local ones
(bitwise). On a shared machine these numbers are noisy: the JSON records the load average
before and after.

    python benchmarks/ray_scoring.py --out benchmarks/results/ray_scoring.json [--bundle PATH]

Without ``--bundle`` the demo bundle (digits autoencoder, T=32, calibrated) is built first.
``--tiny`` is the smoke test's mode (a few thousand rows, one repeat). An already initialised
Ray (a test's cluster) is used as it is; otherwise a local one with ``--cpus`` CPUs is started
and shut down at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import format_table, machine_info, write_json  # noqa: E402

_OPTS = {"providers": "cpu", "intra_op_threads": 1, "inter_op_threads": 1}


def local(bundle: Path, x: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    from oodguard import Guard

    t0 = time.perf_counter()
    guard = Guard.load(bundle, registry=None, **_OPTS)  # type: ignore[arg-type]
    scores = [guard.check(x[s:s + batch]).score for s in range(0, len(x), batch)]
    return time.perf_counter() - t0, np.concatenate(scores)


def on_ray(ds: Any, bundle: Path, batch: int, actors: int) -> tuple[float, np.ndarray]:
    from oodguard.integrations.ray import score_dataset
    from oodguard.integrations.ray.data import ordered

    t0 = time.perf_counter()
    scored = score_dataset(ds, bundle, batch_size=batch, concurrency=actors,
                           guard_options=_OPTS)
    scores = [b["score"] for b in ordered(scored).iter_batches(batch_size=None,
                                                               batch_format="numpy")]
    return time.perf_counter() - t0, np.concatenate(scores)


def run(bundle: Path, x: np.ndarray, *, batch: int, repeats: int) -> list[dict[str, Any]]:
    import ray.data

    # One block per 8 batches, so that 2 actors have blocks to share; in the object store
    # before any clock starts.
    blocks = max(2, -(-len(x) // (8 * batch)))
    ds = ray.data.from_numpy(np.array_split(x, blocks)).materialize()
    times: dict[str, list[float]] = {"local": [], "ray-1": [], "ray-2": []}
    _, want = local(bundle, x, batch)  # warm the page cache and imports
    for _ in range(repeats):
        for name in times:
            if name == "local":
                t, got = local(bundle, x, batch)
            else:
                t, got = on_ray(ds, bundle, batch, int(name[-1]))
            if not np.array_equal(got, want):
                raise AssertionError(f"{name}: scores differ from the local path")
            times[name].append(t)
    base = float(np.median(times["local"]))
    rows = []
    for name, ts in times.items():
        t = float(np.median(ts))
        rows.append({"path": name, "rows": len(x), "batch": batch, "repeats": repeats,
                     "wall_s": round(t, 3), "wall_s_all": [round(v, 3) for v in ts],
                     "rows_per_s": round(len(x) / t, 1),
                     "overhead_us_per_row": round((t - base) / len(x) * 1e6, 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_scoring.json"))
    a = p.parse_args(argv)
    if a.tiny:
        a.rows, a.repeats, a.batch_size = 3000, 1, 500
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if a.bundle is None:
                from guard import build_bundle

                bundle, pool = build_bundle(Path(tmp), steps=32, epochs=30)
            else:
                bundle = a.bundle
                from oodguard import read_bundle

                dim = read_bundle(bundle).manifest.input.shape
                pool = np.random.default_rng(0).uniform(0, 1, (1000, *dim)).astype(np.float32)
            x = np.ascontiguousarray(pool[np.arange(a.rows) % len(pool)])
            info = machine_info()
            rows = run(bundle, x, batch=a.batch_size, repeats=a.repeats)
    finally:
        if started:
            ray.shutdown()
    info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    info["ray"] = ray.__version__
    print(format_table(rows, [("path", "path", ""), ("rows", "rows", "d"),
                              ("wall_s", "wall s (median)", ".2f"),
                              ("rows_per_s", "rows/s", ".0f"),
                              ("overhead_us_per_row", "µs/row beyond local", ".2f")]))
    print(f"load average: start {info.get('load_average_at_start')}, end "
          f"{info['load_average_at_end']}")
    write_json(a.out, {"machine": info, "rows": rows,
                       "config": {"rows": a.rows, "batch_size": a.batch_size,
                                  "repeats": a.repeats, "guard_options": _OPTS}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
