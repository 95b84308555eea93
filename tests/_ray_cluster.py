"""Test helper: one local Ray cluster per test module, and a check that it left nothing behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil


def _ray_processes() -> set[int]:
    """This user's processes that Ray started (raylet, gcs_server, workers, dashboard agents)."""
    me = os.getuid()
    out = set()
    for p in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["uids"] and p.info["uids"].real == me and (
                    "ray/core/src" in cmd or "ray::" in cmd or "raylet" in cmd
                    or "gcs_server" in cmd or "ray/_private" in cmd or "ray/dashboard" in cmd):
                out.add(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


@contextmanager
def local_cluster(num_cpus: int = 2) -> Iterator[None]:
    """``ray.init(num_cpus=...)`` inside the test process; ``ray.shutdown()`` after, then
    fail if a process the cluster started outlives it by more than a few seconds."""
    import ray

    before = _ray_processes()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
        deadline = time.monotonic() + 20
        left = _ray_processes() - before
        while left and time.monotonic() < deadline:
            time.sleep(0.25)
            left = _ray_processes() - before
        if left:
            raise AssertionError(f"Ray left processes running after ray.shutdown(): {left}")
