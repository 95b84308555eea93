"""Server-side dynamic batching: coalesce concurrent requests into one guard call.

Requests wait in an asyncio queue; one worker takes the first, keeps taking more until the batch
holds ``max_batch`` rows or ``max_wait_s`` has passed since the first, runs the guard once in a
worker thread (the event loop keeps accepting requests meanwhile, so the next batch fills while
this one runs), and hands every request its own rows of the result. A request larger than
``max_batch`` runs alone, never split. A request with ``fdr`` runs alone too: its
Benjamini–Hochberg verdicts depend on every row tested with it, so they are decided by the
guard's own ``check(x, fdr=...)`` over the request's rows only — and recorded in the metrics as
the client receives them. With ``enabled=False`` each request runs on its own, concurrently in
a thread pool: the baseline the benchmark compares against.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from oodguard.results import CheckResult

__all__ = ["BatchRunner", "Batcher", "slice_result"]

log = logging.getLogger(__name__)


def slice_result(r: CheckResult, start: int, stop: int) -> CheckResult:
    """Rows ``start:stop`` of a result."""
    return CheckResult(r.score[start:stop], r.p_value[start:stop], r.is_ood[start:stop],
                       r.features[start:stop], r.feature_names, r.alpha, r.threshold)


class BatchRunner(Protocol):
    """What the service needs of a batcher: ``start`` in the serving loop, ``submit`` per
    validated request (its own rows of the result come back; with ``fdr``, the guard's
    ``check(x, fdr=fdr)`` of those rows alone), ``stop`` at shutdown."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, x: np.ndarray, *, fdr: float | None = None) -> CheckResult: ...


@dataclass(eq=False)
class _Item:
    x: np.ndarray
    future: asyncio.Future[CheckResult] = field(repr=False)


class Batcher:
    """Runs ``check`` on coalesced batches. Create, ``await start()`` in the serving loop,
    ``await submit(x)`` per request, ``await stop()`` at shutdown (pending requests finish).

    Parameters
    ----------
    check : the guard's ``check``, called from a worker thread as ``check(x)`` on coalesced
        batches and ``check(x, fdr=fdr)`` on a request with ``fdr``
    max_batch : most rows per coalesced call (>= 1)
    max_wait_s : longest a first request waits for company (>= 0; 0 = take only what is queued)
    enabled : False runs each request on its own (no coalescing)
    threads : worker threads when not batching (default: the CPU count)
    """

    def __init__(
        self,
        check: Callable[..., CheckResult],
        *,
        max_batch: int,
        max_wait_s: float,
        enabled: bool = True,
        threads: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1. Got {max_batch}")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0. Got {max_wait_s}")
        self.check = check
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.enabled = enabled
        workers = 1 if enabled else (threads or os.cpu_count() or 4)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="oodguard-batch")
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.enabled:
            self._queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name="oodguard-batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._queue is not None and self._task is not None:
            await self._queue.put(None)
            await self._task
        self._pool.shutdown(wait=True)

    async def submit(self, x: np.ndarray, *, fdr: float | None = None) -> CheckResult:
        """Score ``x`` (already validated), possibly together with other requests' rows;
        with ``fdr``, alone (see the module's docstring)."""
        loop = asyncio.get_running_loop()
        if fdr is not None:
            return await loop.run_in_executor(self._pool, functools.partial(
                self.check, x, fdr=fdr))
        if self._queue is None:
            return await loop.run_in_executor(self._pool, self.check, x)
        item = _Item(x, loop.create_future())
        await self._queue.put(item)
        return await item.future

    async def _collect(self, first: _Item) -> tuple[list[_Item], _Item | None, bool]:
        """A batch starting with ``first``; the item that did not fit; whether to stop."""
        queue = self._queue
        if queue is None:  # start() ran; narrows the type
            raise RuntimeError("Batcher.start() was not called")
        loop = asyncio.get_running_loop()
        items, rows = [first], len(first.x)
        deadline = loop.time() + self.max_wait_s
        while rows < self.max_batch:
            try:
                nxt = queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(queue.get(), left)
                except asyncio.TimeoutError:  # not the builtin before Python 3.11
                    break
            if nxt is None:
                return items, None, True
            if rows + len(nxt.x) > self.max_batch:
                return items, nxt, False
            items.append(nxt)
            rows += len(nxt.x)
        return items, None, False

    async def _run(self) -> None:
        queue = self._queue
        if queue is None:
            raise RuntimeError("Batcher.start() was not called")
        loop = asyncio.get_running_loop()
        carry: _Item | None = None
        stopping = False
        while not stopping or carry is not None:
            first = carry if carry is not None else await queue.get()
            carry = None
            if first is None:
                break
            items, carry, stopping = await self._collect(first)
            items = [it for it in items if not it.future.done()]  # cancelled by a disconnect
            if not items:
                continue
            x = items[0].x if len(items) == 1 else np.concatenate([it.x for it in items])
            try:
                result = await loop.run_in_executor(self._pool, self.check, x)
            except Exception as err:  # handed to each waiting request, which answers 500
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(err)
                continue
            start = 0
            for it in items:
                stop = start + len(it.x)
                if not it.future.done():
                    it.future.set_result(slice_result(result, start, stop))
                start = stop
