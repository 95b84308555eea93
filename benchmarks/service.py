"""Benchmark ``oodguard serve`` on loopback: 1, 8 and 64 concurrent clients, with and without
dynamic batching. Prints a table and writes JSON. A benchmark, not a test.

    .venv/bin/python benchmarks/service.py --out service.json
    .venv/bin/python benchmarks/service.py --bundle path/to/bundle --requests 5000

Each client (one keep-alive connection) sends one infer request (``--rows`` samples, JSON
FP32) after another; a fixed number of requests is spread over the clients. The clients run in
this process (raw asyncio streams) on the same machine as the server, so both compete for the
CPU: compare rows with each other, not with numbers from another machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

DIM = 16


def make_data(n: int, *, seed: int) -> np.ndarray:
    """The tests' synthetic data: a 3-dimensional manifold in 16-D, squashed to (0, 1)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(1234).normal(size=(3, DIM))
    z = rng.normal(size=(n, 3))
    return (1.0 / (1.0 + np.exp(-(z @ basis) * 0.7))).astype(np.float32)


def build_bundle(out: Path, steps: int) -> Path:
    """A tiny calibrated bundle (needs the export and calibrate extras)."""
    from oodguard.calibration import calibrate
    from oodguard.demo.train import train_autoencoder
    from oodguard.export import export_bundle

    ae = train_autoencoder(make_data(800, seed=1), latent=3, hidden=16, epochs=60,
                           progress=False)
    export_bundle(out / "raw", model=ae, x_train=make_data(800, seed=1), steps=steps)
    calibrate(out / "raw", make_data(600, seed=2), alpha=0.05, out=out / "bundle")
    return out / "bundle"


def start_server(bundle: Path, args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "oodguard.cli", "-q", "serve", str(bundle), "--port", "0",
         "--name", "bench", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.stdout is not None:
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            url = m.group(1)
            while httpx.get(url + "/v2/health/ready", timeout=5).status_code != 200:
                time.sleep(0.1)
            return proc, url
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("oodguard serve did not start")


def batch_calls(url: str) -> tuple[float, float]:
    """(guard calls, rows) so far, from /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    get = {k: float(v) for k, v in re.findall(
        r'^oodguard_batch_size_(count|sum)\{guard="bench"\} (\S+)$', text, re.M)}
    return get.get("count", 0.0), get.get("sum", 0.0)


async def _client(host: str, port: int, request: bytes, latencies: list[float],
                  left: list[int]) -> None:
    """One keep-alive HTTP/1.1 connection sending requests back to back. A minimal client on
    raw asyncio streams: httpx's pool, not the server, was the bottleneck at 64 clients."""
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while left[0] > 0:
            left[0] -= 1
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            if m is None:
                raise RuntimeError(f"no Content-Length in {head!r}")
            await reader.readexactly(int(m.group(1)))
            latencies.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
    finally:
        writer.close()


async def load(url: str, body: bytes, clients: int, requests: int) -> tuple[float, np.ndarray]:
    """Send ``requests`` requests from ``clients`` concurrent clients; (seconds, latencies)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = (f"POST /v2/models/bench/infer HTTP/1.1\r\nHost: {host}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    latencies: list[float] = []
    left = [requests]
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(host, int(port), request, latencies, left)
                           for _ in range(clients)))
    return time.perf_counter() - t0, np.asarray(latencies)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, help="a calibrated bundle (default: build a tiny one)")
    p.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--rows", type=int, default=1, help="samples per request")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=8, help="T for the built bundle")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        bundle = a.bundle or build_bundle(Path(tmp), a.steps)
        x = make_data(a.rows, seed=3)
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                       "data": x.ravel().tolist()}]}).encode()
        rows = []
        for mode, extra in (("batching", ["--max-batch", str(a.max_batch), "--max-wait-ms",
                                          str(a.max_wait_ms)]),
                            ("no batching", ["--no-batching"])):
            proc, url = start_server(bundle, extra)
            try:
                asyncio.run(load(url, body, 8, 200))  # warm-up
                for c in a.clients:
                    calls0, rows0 = batch_calls(url)
                    secs, lat = asyncio.run(load(url, body, c, a.requests))
                    calls1, rows1 = batch_calls(url)
                    rows.append({
                        "mode": mode, "clients": c, "requests": a.requests,
                        "rows_per_request": a.rows, "seconds": secs,
                        "requests_per_s": a.requests / secs,
                        "samples_per_s": a.requests * a.rows / secs,
                        "p50_ms": float(np.percentile(lat, 50) * 1e3),
                        "p99_ms": float(np.percentile(lat, 99) * 1e3),
                        "mean_batch": (rows1 - rows0) / max(calls1 - calls0, 1.0),
                    })
                    r = rows[-1]
                    print(f"{mode:>11} {c:>4} clients: {r['requests_per_s']:8.0f} req/s  "
                          f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                          f"mean batch {r['mean_batch']:5.1f}", file=sys.stderr)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)

    head = (f"{'mode':<12}{'clients':>8}{'req/s':>10}{'samples/s':>11}{'p50 ms':>9}"
            f"{'p99 ms':>9}{'batch':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['mode']:<12}{r['clients']:>8}{r['requests_per_s']:>10.0f}"
              f"{r['samples_per_s']:>11.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['mean_batch']:>7.1f}")
    if a.out:
        a.out.write_text(json.dumps({
            "benchmark": "service", "machine": {"cpus": os.cpu_count(),
                                                "platform": platform.platform(),
                                                "python": platform.python_version()},
            "config": {"max_batch": a.max_batch, "max_wait_ms": a.max_wait_ms,
                       "rows_per_request": a.rows, "requests": a.requests,
                       "bundle": str(a.bundle) if a.bundle else f"built, T={a.steps}"},
            "results": rows,
        }, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
