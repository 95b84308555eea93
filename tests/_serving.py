"""Test helpers: run ``oodguard serve`` and Prometheus as real subprocesses on loopback."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest


def tool(name: str) -> str:
    """The path of a Debian ``prometheus`` package binary; fail (never skip) without it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: apt-get install prometheus (scripts/test.sh does)")
    return path


class Proc:
    """A subprocess whose merged stdout/stderr is collected by a thread (no pipe can fill)."""

    def __init__(self, args: list[str], **kw: object) -> None:
        self.popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, **kw)  # type: ignore[call-overload]
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        out = self.popen.stdout
        if out is not None:
            for line in out:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s; "
                             f"exit={self.popen.poll()}; output:\n{self.output}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, SIGKILL as a last resort; the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._reader.join(5)
        return self.popen.returncode


@contextmanager
def serving(bundle: Path, *args: str, env: dict[str, str] | None = None
            ) -> Iterator[tuple[str, Proc]]:
    """``oodguard serve BUNDLE --port 0 ARGS`` until ready; yields its URL; stops it after."""
    proc = Proc([sys.executable, "-m", "oodguard.cli", "serve", str(bundle), "--port", "0",
                 *args], env=env)
    try:
        m = proc.wait_for(r"listening on (http://127\.0\.0\.1:\d+)", timeout=60)
        url = m.group(1)
        wait_ready(url + "/v2/health/ready", timeout=30)
        yield url, proc
    finally:
        proc.stop()


def wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready within {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``, in an exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


#: how many HTTP responses the tests received were read with :func:`strict_json` (conftest)
STRICT_PARSED = [0]


def _no_constant(name: str) -> Any:
    raise AssertionError(f"the response holds {name}, which is not JSON (RFC 8259)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise AssertionError(f"the response holds {text[:40]}, which overflows a float64")
    return value


def strict_json(body: bytes | str) -> Any:
    """Parse RFC 8259 JSON only, as ``JSON.parse`` or any strict parser would: ``NaN``,
    ``Infinity`` and numbers that overflow a float64 are refused (Python's ``json`` takes
    all three)."""
    return json.loads(body, parse_constant=_no_constant, parse_float=_finite)


def check_json_response(headers: Any, content: bytes) -> None:
    """Strictly parse a response's JSON: the whole body of an ``application/json`` answer,
    or the JSON header of a binary-tensor one (``Inference-Header-Content-Length``)."""
    length = headers.get("inference-header-content-length")
    if length is not None:
        strict_json(content[: int(length)])
    elif headers.get("content-type", "").startswith("application/json"):
        strict_json(content)
    else:
        return
    STRICT_PARSED[0] += 1
