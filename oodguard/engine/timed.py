"""Engine runs bounded by a timeout, for one guard.

A timed run goes to a thread of the guard's pool and the caller waits at most ``timeout``
seconds. A run that times out is asked to stop (``RunOptions.terminate``, honoured by ONNX
Runtime at the next node) and counted as abandoned until it ends; while ``MAX_ABANDONED`` of
them are still running, a further timed run fails at once (``reason="timeout"``) instead of
queueing behind them, so stalled engine threads never accumulate without bound.

Fork safety: a child process created by ``os.fork()`` drops the pool and the lock it inherited
(their threads do not exist in the child) and starts afresh on its next timed run.
"""

from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from oodguard.engine.session import Engine
from oodguard.errors import GuardFailure

__all__ = ["MAX_ABANDONED", "TimedRuns"]

# Timed-out engine runs that may still be running per guard before timed runs fail at once.
MAX_ABANDONED = 4
# Threads that run timed checks (started on demand): enough that concurrent callers do not
# queue behind each other and spend their timeout waiting for a thread.
_WORKERS = 32
_ALL: weakref.WeakSet[TimedRuns] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for runs in list(_ALL):
        runs.pool = None
        runs.lock = threading.Lock()
        runs.abandoned = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class TimedRuns:
    """The timed engine runs of the guard named ``name`` (for messages); thread-safe."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pool: ThreadPoolExecutor | None = None
        self.lock = threading.Lock()
        self.abandoned = 0  # timed-out runs still running
        _ALL.add(self)

    def run(self, engine: Engine, x32: np.ndarray, timeout: float) -> np.ndarray:
        """``engine.run(x32)``, or a :class:`GuardFailure` (``reason="timeout"``) after
        ``timeout`` seconds or at once while ``MAX_ABANDONED`` runs are stalled."""
        with self.lock:
            if self.abandoned >= MAX_ABANDONED:
                raise GuardFailure(
                    f"guard {self.name!r}: {self.abandoned} earlier checks timed out and their "
                    "engine runs have not finished; refusing to queue another (timeout). The "
                    "engine is stalled — check the host's load", reason="timeout",
                )
            if self.pool is None:
                self.pool = ThreadPoolExecutor(MAX_ABANDONED + _WORKERS,
                                               thread_name_prefix="oodguard-timed")
            pool = self.pool
        opts = engine.new_run_options()
        future = pool.submit(engine.run, x32, run_options=opts)
        try:
            return future.result(timeout)
        except FutureTimeout:
            opts.terminate = True  # ONNX Runtime stops the run at its next node
            if not future.cancel():
                with self.lock:
                    self.abandoned += 1
                future.add_done_callback(self._release)
            raise GuardFailure(
                f"guard {self.name!r}: the engine did not answer within {timeout:g} s for a "
                f"batch of {len(x32)} rows (timeout)", reason="timeout",
            ) from None

    def _release(self, _future: Any) -> None:
        with self.lock:
            self.abandoned = max(0, self.abandoned - 1)

    def close(self) -> None:
        """Stop the pool's threads (queued runs are cancelled); later runs start a new one."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
