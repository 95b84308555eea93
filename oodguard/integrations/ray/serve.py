"""The guard on Ray Serve: the service's own routes, with ``@serve.batch`` and autoscaling.

Each replica builds the ASGI application of :func:`oodguard.serve.create_app` — the same
Open Inference Protocol v2 routes, request parsing, limits, refusals, token and ``/metrics``
as ``oodguard serve`` (``docs/guarantees-http.md``) — around its own guard, so every request
goes through the same :meth:`oodguard.serve.InferenceService.infer` call; only the batcher
differs: concurrent requests are coalesced by Ray Serve's ``@serve.batch`` (by rows, at most
``ServeConfig.max_batch``, waiting at most ``ServeConfig.max_wait_ms``), and a request with
``parameters.fdr`` is checked alone, as by :class:`oodguard.serve.Batcher`. What the HTTP layer
of ``oodguard serve`` adds below the application (the header timeout against slow clients,
draining on SIGTERM) is Ray Serve's proxy's business here.

``/metrics`` answers for the replica the request reached, as each process of a multi-process
``oodguard serve`` would without ``PROMETHEUS_MULTIPROC_DIR``: with several replicas, scrape
each (their series aggregate, being histograms and counters) or read Ray's own metrics.

>>> from ray import serve                                             # doctest: +SKIP
>>> from oodguard.integrations.ray import guard_app
>>> serve.run(guard_app("bundle/", name="g", num_replicas=2), route_prefix="/")
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from oodguard.bundle import Bundle
from oodguard.guard import Guard
from oodguard.integrations.ray.data import as_bundle
from oodguard.results import CheckResult
from oodguard.serve import ServeConfig, create_app, slice_result

__all__ = ["GuardReplica", "ServeBatcher", "guard_app"]


def _rows(items: list[np.ndarray]) -> int:
    return sum(len(x) for x in items)


class ServeBatcher:
    """The service's batcher (see :class:`oodguard.serve.BatchRunner`) on ``@serve.batch``:
    requests are coalesced into one guard call of at most ``max_batch`` rows, waiting at most
    ``max_wait_s`` for company; a request of ``max_batch`` rows or more runs alone. The guard
    runs in a worker thread, so the replica's event loop keeps taking requests meanwhile."""

    def __init__(self, guard: Guard, *, max_batch: int, max_wait_s: float) -> None:
        self.guard = guard
        self.max_batch = max_batch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oodguard-serve")
        coalesced: Any = self._coalesced  # @serve.batch's wrapper carries the setters
        coalesced.set_max_batch_size(max_batch)
        coalesced.set_batch_wait_timeout_s(max_wait_s)

    async def start(self) -> None:
        """Nothing to start: Ray Serve runs the batching loop."""

    async def stop(self) -> None:
        self._pool.shutdown(wait=True)

    async def _check(self, x: np.ndarray, fdr: float | None = None) -> CheckResult:
        check = functools.partial(self.guard.check, x, fdr=fdr)
        return await asyncio.get_running_loop().run_in_executor(self._pool, check)

    async def submit(self, x: np.ndarray, *, fdr: float | None = None) -> CheckResult:
        """Score ``x`` (already validated), possibly together with other requests' rows;
        with ``fdr``, alone: its Benjamini–Hochberg verdicts are the guard's over these rows
        (as :class:`oodguard.serve.Batcher` does)."""
        if fdr is not None or not 0 < len(x) < self.max_batch:
            # alone (@serve.batch refuses larger items)
            return await self._check(x, fdr)
        result: CheckResult = await self._coalesced(x)
        return result

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0, batch_size_fn=_rows)
    async def _coalesced(self, xs: list[np.ndarray]) -> list[CheckResult]:
        result = await self._check(xs[0] if len(xs) == 1 else np.concatenate(xs))
        bounds = np.cumsum([0, *map(len, xs)])
        return [slice_result(result, int(a), int(b))
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class GuardReplica:
    """One Ray Serve replica: a guard (one ONNX Runtime session) with its own metrics
    registry, behind :func:`oodguard.serve.create_app`."""

    def __init__(self, bundle: Bundle, name: str, config: ServeConfig,
                 guard_options: Mapping[str, Any]) -> None:
        from oodguard.metrics import new_registry

        self.registry = new_registry()
        self.guard = Guard(bundle, name=name, registry=self.registry, **dict(guard_options))
        self.config = config

    def __serve_build_asgi_app__(self) -> Any:
        batcher = None
        if self.config.batching:
            batcher = ServeBatcher(self.guard, max_batch=self.config.max_batch,
                                   max_wait_s=self.config.max_wait_ms / 1000.0)
        return create_app(self.guard, self.config, registry=self.registry, batcher=batcher)


def guard_app(
    bundle: Bundle | str | os.PathLike[str],
    *,
    name: str = "default",
    config: ServeConfig | None = None,
    num_replicas: int | None = None,
    autoscaling_config: Mapping[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    ray_actor_options: Mapping[str, Any] | None = None,
    guard_options: Mapping[str, Any] | None = None,
) -> Any:
    """A Ray Serve application serving a calibrated bundle.

    Parameters
    ----------
    bundle : path (read and verified on the driver) or :class:`~oodguard.Bundle`; its bytes
        reach the replicas through Ray, so the nodes need no copy of the directory
    name : the guard's name: the v2 model name (unless ``config.model_name``) and the
        metrics label
    config : limits, token and batching (``max_batch``, ``max_wait_ms``, ``batching``) as for
        ``oodguard serve``; ``host``/``port`` are ignored (``serve.start(http_options=...)``
        sets Ray Serve's)
    num_replicas, autoscaling_config, max_ongoing_requests, ray_actor_options : Ray Serve's
        deployment options, passed through (``autoscaling_config`` e.g.
        ``{"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}``)
    guard_options : further :class:`~oodguard.Guard` keywords (``providers``, ``alpha``, ...)

    Returns
    -------
    ray.serve.Application — pass it to ``serve.run(app, route_prefix="/")``
    """
    opts = dict(guard_options or {})
    for key in ("name", "registry"):
        if key in opts:
            raise ValueError(f"guard_options must not set {key!r}: pass name=, each replica "
                             "keeps its own registry for /metrics")
    deployment_options: dict[str, Any] = {"name": f"oodguard-{name}"}
    for key, value in (("num_replicas", num_replicas),
                       ("autoscaling_config", autoscaling_config),
                       ("max_ongoing_requests", max_ongoing_requests),
                       ("ray_actor_options", ray_actor_options)):
        if value is not None:
            deployment_options[key] = dict(value) if isinstance(value, Mapping) else value
    ingress = serve.ingress()(GuardReplica)
    deployment: Any = serve.deployment(ingress, **deployment_options)
    return deployment.bind(as_bundle(bundle), name, config or ServeConfig(), opts)
