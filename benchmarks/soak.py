"""Soak ``oodguard serve`` on loopback: many requests, memory over time, and a SIGTERM drain.

    .venv/bin/python benchmarks/soak.py --out soak.json            # 100 000 requests, 64 clients
    .venv/bin/python benchmarks/soak.py --quick --out soak.json    # smoke test (seconds)

Three parts, each against a real ``oodguard serve`` subprocess and a tiny calibrated bundle
(built as in ``benchmarks/service.py``):

1. **soak**: ``--clients`` keep-alive connections send ``--requests`` infer requests (JSON, one
   row) back to back. Reports errors (any non-200 or broken connection), req/s, p50/p99
   latency, and the server's RSS after a warm-up and at the end (growth in %).
2. **drain**: ``--in-flight`` connections each send one request to a stopped server (SIGSTOP,
   so that every request waits in the accept backlog or a socket buffer, the case a plain
   listener close resets); once every request is written, SIGTERM and SIGCONT. Reports how
   many were in flight and how many were lost (no complete response); the exit code.
3. **slow bodies**: ``--slow`` connections each declare a ``--slow-mib`` MiB body and send only
   part of it; reports the server's RSS before and while they hang, and their status codes
   (503 beyond the in-flight byte budget, 408 after the body timeout).

The clients run in this process on the same machine as the server: numbers are relative to
the machine and its load, not a performance claim.
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
from typing import Any

import numpy as np
from service import build_bundle, make_data, start_server


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MiB (Linux ``/proc``)."""
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) / 1024 if m else float("nan")


def _request(host: str, body: bytes) -> bytes:
    return (f"POST /v2/models/bench/infer HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


async def _response(reader: asyncio.StreamReader) -> int:
    """Read one whole response; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length: *(\d+)", head)
    if m is None:
        raise RuntimeError(f"no Content-Length in {head[:200]!r}")
    await reader.readexactly(int(m.group(1)))
    return int(head.split(b" ", 2)[1])


async def _client(host: str, port: int, request: bytes, left: list[int],
                  latencies: list[float], errors: list[str]) -> None:
    """One keep-alive connection sending requests back to back; reconnects after an error."""
    while left[0] > 0:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as err:
            errors.append(f"connect: {err}")
            left[0] -= 1
            continue
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while left[0] > 0:
                left[0] -= 1
                t0 = time.perf_counter()
                writer.write(request)
                status = await _response(reader)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors.append(f"status {status}")
        except (OSError, asyncio.IncompleteReadError, RuntimeError) as err:
            errors.append(f"{type(err).__name__}: {err}")
        finally:
            writer.close()


async def soak(url: str, body: bytes, clients: int, requests: int) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    errors: list[str] = []
    left = [requests]
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(host, int(port), _request(host, body), left, latencies,
                                   errors) for _ in range(clients)))
    secs = time.perf_counter() - t0
    lat = np.asarray(latencies)
    return {"requests": requests, "clients": clients, "seconds": secs,
            "requests_per_s": requests / secs, "errors": len(errors),
            "error_examples": sorted(set(errors))[:5],
            "p50_ms": float(np.percentile(lat, 50) * 1e3) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99) * 1e3) if len(lat) else float("nan")}


async def _one_shot(host: str, port: int, request: bytes, sent: asyncio.Event,
                    sent_count: list[int]) -> int | str:
    """Connect, send one request, report it sent, read the answer: its status or the error."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as err:
        sent_count[1] += 1
        return f"connect: {err}"
    try:
        writer.write(request)
        await writer.drain()
        sent_count[0] += 1
        if sent_count[0] + sent_count[1] == sent_count[2]:
            sent.set()
        return await _response(reader)
    except (OSError, asyncio.IncompleteReadError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    finally:
        writer.close()


async def sigterm_burst(proc: subprocess.Popen[str], url: str, body: bytes, n: int
                        ) -> dict[str, Any]:
    """``n`` connections each send one request to a stopped server (SIGSTOP: the kernel
    completes the connections and buffers the requests, none is accepted yet); once all are
    written, SIGTERM and SIGCONT. The outcome."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sent = asyncio.Event()
    counts = [0, 0, n]  # written, failed to connect, total
    proc.send_signal(signal.SIGSTOP)
    try:
        tasks = [asyncio.create_task(_one_shot(host, int(port), _request(host, body), sent,
                                               counts)) for _ in range(n)]
        await asyncio.wait_for(sent.wait(), 60)
        answered_before = sum(t.done() for t in tasks)
        proc.send_signal(signal.SIGTERM)
    finally:
        proc.send_signal(signal.SIGCONT)
    t0 = time.perf_counter()
    results = await asyncio.gather(*tasks)
    drain_s = time.perf_counter() - t0
    code = await asyncio.to_thread(proc.wait, 60)
    ok = sum(r == 200 for r in results)
    return {"connections": n, "sent": counts[0], "connect_failures": counts[1],
            "answered_before_sigterm": answered_before,
            "in_flight_at_sigterm": counts[0] - answered_before, "answered_200": ok,
            "lost": counts[0] - ok, "drain_s": drain_s, "exit_code": code,
            "failures": sorted({str(r) for r in results if r != 200})[:5]}


async def slow_bodies(proc: subprocess.Popen[str], url: str, n: int, mib: int,
                      hang_s: float) -> dict[str, Any]:
    """``n`` connections declare ``mib`` MiB bodies, send half, and hang; RSS and statuses."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    size = mib << 20
    head = (f"POST /v2/models/bench/infer HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n").encode()
    before = rss_mb(proc.pid)
    peak = [before]

    async def one() -> int | str:
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError as err:
            return f"connect: {err}"
        try:
            writer.write(head + b" " * (size // 2))
            await writer.drain()
            return await asyncio.wait_for(_response(reader), hang_s + 30)
        except (OSError, asyncio.IncompleteReadError, RuntimeError,
                asyncio.TimeoutError) as err:
            return f"{type(err).__name__}"
        finally:
            writer.close()

    async def watch() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb(proc.pid))
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    statuses = await asyncio.gather(*(one() for _ in range(n)))
    watcher.cancel()
    counts: dict[str, int] = {}
    for s in statuses:
        counts[str(s)] = counts.get(str(s), 0) + 1
    return {"connections": n, "declared_mib": mib, "rss_before_mb": before,
            "rss_peak_mb": peak[0], "statuses": counts}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, help="a calibrated bundle (default: build a tiny one)")
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--warmup", type=int, default=5_000)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--in-flight", type=int, default=600, help="connections at SIGTERM")
    p.add_argument("--slow", type=int, default=40, help="connections with unfinished bodies")
    p.add_argument("--slow-mib", type=int, default=15)
    p.add_argument("--body-timeout-s", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=8, help="T for the built bundle")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    a = p.parse_args()
    if a.quick:
        a.requests, a.warmup, a.clients, a.in_flight = 400, 100, 8, 40
        a.slow, a.slow_mib, a.body_timeout_s, a.steps = 4, 2, 1.0, 2

    x = make_data(1, seed=3)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]}).encode()
    doc: dict[str, Any] = {"benchmark": "soak", "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "loadavg": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = a.bundle or build_bundle(Path(tmp), a.steps)
        doc["config"] = {"requests": a.requests, "warmup": a.warmup, "clients": a.clients,
                         "in_flight": a.in_flight, "slow": a.slow, "slow_mib": a.slow_mib,
                         "bundle": str(a.bundle) if a.bundle else f"built, T={a.steps}"}

        proc, url = start_server(bundle, [])
        try:
            warm = asyncio.run(soak(url, body, a.clients, a.warmup))
            rss0 = rss_mb(proc.pid)
            run = asyncio.run(soak(url, body, a.clients, a.requests))
            rss1 = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        run.update(warmup_errors=warm["errors"], rss_after_warmup_mb=rss0, rss_end_mb=rss1,
                   rss_growth_pct=100 * (rss1 - rss0) / rss0)
        doc["soak"] = run
        print(f"soak: {run['requests']} requests, {run['clients']} clients: "
              f"{run['requests_per_s']:.0f} req/s, p50 {run['p50_ms']:.2f} ms, "
              f"p99 {run['p99_ms']:.2f} ms, {run['errors']} errors; RSS {rss0:.1f} → "
              f"{rss1:.1f} MiB ({run['rss_growth_pct']:+.2f}%)", file=sys.stderr)

        proc, url = start_server(bundle, ["--max-wait-ms", "200", "--max-batch", "1024"])
        drain = asyncio.run(sigterm_burst(proc, url, body, a.in_flight))
        doc["drain"] = drain
        print(f"drain: {drain['sent']} sent, {drain['in_flight_at_sigterm']} in flight at "
              f"SIGTERM, {drain['answered_200']} answered, {drain['lost']} lost, exit "
              f"{drain['exit_code']}", file=sys.stderr)

        budget = 4 * a.slow_mib << 20
        proc, url = start_server(bundle, ["--body-timeout-s", str(a.body_timeout_s),
                                          "--max-body-bytes", str(a.slow_mib << 20),
                                          "--max-inflight-body-bytes", str(budget)])
        try:
            slow = asyncio.run(slow_bodies(proc, url, a.slow, a.slow_mib, a.body_timeout_s))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        slow["budget_mib"] = budget >> 20
        doc["slow_bodies"] = slow
        print(f"slow bodies: {slow['connections']} × {a.slow_mib} MiB: RSS "
              f"{slow['rss_before_mb']:.1f} → peak {slow['rss_peak_mb']:.1f} MiB; "
              f"{slow['statuses']}", file=sys.stderr)

    rows = [("requests", doc["soak"]["requests"]), ("clients", doc["soak"]["clients"]),
            ("errors", doc["soak"]["errors"]), ("req/s", f"{doc['soak']['requests_per_s']:.0f}"),
            ("p50 ms", f"{doc['soak']['p50_ms']:.2f}"), ("p99 ms", f"{doc['soak']['p99_ms']:.2f}"),
            ("RSS after warm-up MiB", f"{doc['soak']['rss_after_warmup_mb']:.1f}"),
            ("RSS end MiB", f"{doc['soak']['rss_end_mb']:.1f}"),
            ("RSS growth %", f"{doc['soak']['rss_growth_pct']:+.2f}"),
            ("SIGTERM: in flight", drain["in_flight_at_sigterm"]),
            ("SIGTERM: lost", drain["lost"]), ("SIGTERM: exit code", drain["exit_code"]),
            ("slow bodies: RSS peak MiB", f"{slow['rss_peak_mb']:.1f}"),
            ("slow bodies: statuses", slow["statuses"])]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if a.out:
        a.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
