"""Fork safety: a guard whose thread pools were started before ``os.fork()`` keeps working in
the child (the pools' threads do not exist there; the at-fork hooks drop them)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from oodguard import Guard

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

WAIT_S = 60.0


def _wait(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None after killing it when it outlives ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _in_child(body) -> int | None:  # type: ignore[no-untyped-def]
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            code = body()
        finally:
            os._exit(code)
    return _wait(pid, WAIT_S)


@pytest.fixture
def warm(bundle, data):  # type: ignore[no-untyped-def]
    """A guard that has split a large batch over its batch threads and run a timed check."""
    g = Guard.load(bundle, registry=None, providers="cpu", max_batch=64,
                   engine_options={"batch_threads": 2}, timeout_s=30.0)
    x = np.ascontiguousarray(np.concatenate([data["test"], data["noise"]]))
    g.engine._row_seconds = 1.0  # every batch is split: the pool starts
    want = g.check(x)
    assert g.engine._pool is not None and g._timed.pool is not None
    yield g, x, want
    g.close()


def test_a_warm_guard_scores_in_a_forked_child(warm) -> None:  # type: ignore[no-untyped-def]
    g, x, want = warm

    def child() -> int:
        got = g.check(x)  # large batch: split over a new pool, under the timeout
        same = got.score.tobytes() == want.score.tobytes()
        return 0 if same and g.engine._pool is not None else 3

    assert _in_child(child) == 0
    # the parent's pools are untouched
    np.testing.assert_array_equal(g.check(x).score, want.score)


def test_a_fork_while_another_thread_holds_the_engine_busy(warm) -> None:  # type: ignore[no-untyped-def]
    """Fork while a large batch is being scored on other threads; the child still scores."""
    import threading

    g, x, want = warm
    big = np.ascontiguousarray(np.tile(x, (8, 1)))
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            g.check(big)

    t = threading.Thread(target=busy)
    t.start()
    try:
        time.sleep(0.05)
        assert _in_child(lambda: 0 if g.check(x).score.tobytes() == want.score.tobytes()
                         else 3) == 0
    finally:
        stop.set()
        t.join(timeout=WAIT_S)
    assert not t.is_alive()


def test_a_fork_while_another_thread_records_metrics(bundle, data) -> None:  # type: ignore[no-untyped-def]
    """A metrics lock held by another thread at the fork would stay held in the child (that
    thread does not exist there): the child's first check records under a fresh one."""
    import threading

    from prometheus_client import CollectorRegistry, generate_latest

    from oodguard.metrics.guard_metrics import _families_for

    registry = CollectorRegistry()
    g = Guard.load(bundle, registry=registry, providers="cpu", name="forked")
    x = np.ascontiguousarray(data["test"][:3])
    g.check(x)
    lock = _families_for(registry).lock_for("forked")
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:  # as a check recording its metrics at the moment of the fork
            held.set()
            release.wait(WAIT_S)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(WAIT_S)
    try:
        def child() -> int:
            g.check(x)
            text = generate_latest(registry).decode()
            return 0 if 'oodguard_inputs_total{guard="forked",verdict="in"}' in text else 3

        assert _in_child(child) == 0
    finally:
        release.set()
        t.join(WAIT_S)
    g.check(x)  # the parent's lock works as before
    g.close()
