"""The HTTP guard service: Open Inference Protocol v2 routes and ``/metrics`` (``serve`` extra).

Routes (``{name}`` is the model name, by default the guard's name; ``/versions/1`` may follow it):

=================================== ====== ============================================
route                               method answer
=================================== ====== ============================================
``/v2``                             GET    server metadata
``/v2/health/live``                 GET    200 while the process serves
``/v2/health/ready``                GET    200 when ready, 503 while starting/draining
``/v2/models/{name}``               GET    model metadata (input, outputs)
``/v2/models/{name}/ready``         GET    200 / 503
``/v2/models/{name}/infer``         POST   score, p_value, is_ood (+ features)
``/metrics``                        GET    Prometheus text exposition
=================================== ====== ============================================

The infer route is decode ▶ one call ▶ encode: the token, the model name and the body
(:mod:`.body`) are checked, the request is decoded (:mod:`.protocol`), its batch goes to
:meth:`InferenceService.infer <oodguard.serve.service.InferenceService.infer>` (which knows
nothing of HTTP), and the result is encoded.

Every refused request gets a 4xx (or 503) JSON body ``{"error": "...", "reason": "..."}``
and, on the infer route, counts in ``oodguard_inputs_refused_total{reason=...}`` (a bad input,
by the rows it carried, at most ``max_request_rows``) or
``oodguard_http_requests_dropped_total`` (ended before its inputs were read: no token, body
timeout, byte budget, disconnect). The contract, outcome by outcome, is
``docs/guarantees-http.md``. Environment variables are read by the CLI (the edge), not here.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oodguard import __version__
from oodguard.errors import GuardFailure, InvalidInputError
from oodguard.guard import Guard
from oodguard.serve.batching import Batcher, BatchRunner
from oodguard.serve.body import BodyReader, Hold
from oodguard.serve.config import ServeConfig
from oodguard.serve.protocol import HEADER_LENGTH, encode_response, model_metadata, parse_infer
from oodguard.serve.refusals import Dropped, ProtocolError
from oodguard.serve.reload import LiveGuard
from oodguard.serve.service import InferenceService

__all__ = ["Routes", "create_app"]

log = logging.getLogger(__name__)

#: bodies at least this large are decoded in a worker thread, off the event loop
INLINE_PARSE_BYTES = 64 * 1024


def _error(status: int, message: str, reason: str, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    return JSONResponse({"error": message, "reason": reason}, status_code=status,
                        headers=headers)


class Routes:
    """The routes' shared state: the service, the config, readiness, the body reader.

    ``ready`` is False until the lifespan has started the service and again once shutdown
    begins (:func:`oodguard.serve.serve` clears it at SIGTERM).
    """

    def __init__(self, service: InferenceService, config: ServeConfig, registry: Any) -> None:
        self.service, self.config, self.registry = service, config, registry
        self.guard = service.guard
        self.name = config.model_name or self.guard.name
        self.ready = False
        self._token = None if config.token is None else f"Bearer {config.token}".encode()
        self.bodies = BodyReader(max_bytes=config.max_body_bytes,
                                 timeout_s=config.body_timeout_s,
                                 budget_bytes=config.max_inflight_body_bytes)

    def refuse(self, err: ProtocolError | InvalidInputError, rows: int) -> JSONResponse:
        self.service.refused(err.reason, rows)
        return _error(getattr(err, "status", 400), str(err), err.reason)

    def drop(self, d: Dropped) -> JSONResponse:
        self.service.dropped(d.reason)
        return _error(d.status, str(d), d.reason, d.headers)

    def authorize(self, request: Request) -> None:
        if self._token is None:
            return
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, self._token):
            raise Dropped(401, "missing or wrong bearer token: send 'Authorization: Bearer "
                          "<token>'", "unauthorized", {"WWW-Authenticate": "Bearer"})

    def model(self, request: Request) -> None:
        name = request.path_params["name"]
        version = request.path_params.get("version", "1")
        if name != self.name or version != "1":
            raise ProtocolError(f"no model {name[:100]!r} version {version[:20]!r}; this server "
                                f"has {self.name!r} version '1'", status=404, reason="model")

    # -- routes ----------------------------------------------------------------------------
    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "oodguard", "version": __version__,
                             "extensions": ["binary_tensor_data"]})

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def server_ready(self, request: Request) -> Response:
        return JSONResponse({"ready": self.ready}, status_code=200 if self.ready else 503)

    async def model_metadata(self, request: Request) -> Response:
        return self._model_json(request, lambda: (
            model_metadata(self.name, self.guard.input_spec, len(self.guard.feature_names),
                           self._parameters()), 200))

    def _parameters(self) -> dict[str, Any] | None:
        """The drift monitor's settings and state, for the model metadata."""
        drift = self.guard.drift
        if drift is None:
            return None
        return {"drift": {**drift.settings.to_dict(), **drift.state().to_dict()}}

    async def model_ready(self, request: Request) -> Response:
        return self._model_json(request, lambda: (
            {"name": self.name, "ready": self.ready}, 200 if self.ready else 503))

    def _model_json(
        self, request: Request, build: Callable[[], tuple[dict[str, Any], int]]
    ) -> Response:
        """A model route's JSON answer, after the token and the model name are checked."""
        try:
            self.authorize(request)
            self.model(request)
        except ProtocolError as err:
            return _error(err.status, str(err), err.reason)
        except Dropped as d:
            return _error(d.status, str(d), d.reason, d.headers)
        doc, status = build()
        return JSONResponse(doc, status_code=status)

    async def infer(self, request: Request) -> Response:
        hold = Hold()
        try:
            response = await self._infer(request, hold)
        except Dropped as d:
            if d.reason == "disconnect":  # nobody reads the answer; one line, no traceback
                log.info("client %s disconnected before its request body arrived",
                         request.client.host if request.client else "?")
            response = self.drop(d)
        finally:
            self.bodies.release(hold)
        if not hold.complete and not self.bodies.discardable(request):
            # An answer before the body was read: the HTTP layer reads and discards the rest of
            # a body whose declared length is within the limit (the client, still sending, then
            # gets the answer instead of a reset). Anything else closes the connection.
            response.headers["Connection"] = "close"
        return response

    async def _infer(self, request: Request, hold: Hold) -> Response:
        # decode
        try:
            self.authorize(request)
            self.model(request)
            body = await self.bodies.read(request, hold)
            parse = functools.partial(
                parse_infer, body, header_length=request.headers.get(HEADER_LENGTH),
                spec=self.guard.input_spec, max_rows=self.config.max_request_rows)
            # Decoding megabytes of JSON takes milliseconds: off the event loop, so that
            # other requests (and health probes) are not held up meanwhile.
            req = parse() if len(body) < INLINE_PARSE_BYTES else await run_in_threadpool(parse)
        except ProtocolError as err:
            return self.refuse(err, err.rows)
        # one transport-neutral call
        try:
            result = await self.service.infer(req.x, fdr=req.fdr)
        except InvalidInputError as err:  # counted by the service
            return _error(400, str(err), err.reason)
        except GuardFailure as err:  # the server's fault, counted as such by the service
            return _error(500, f"the guard failed: {err.reason}", "guard_failure")
        # encode
        content, headers = encode_response(self.name, req, result)
        return Response(content, headers=headers)

    async def metrics(self, request: Request) -> Response:
        if self.registry is None:
            return _error(404, "metrics are off (the guard has no registry)", "metrics")
        from oodguard.metrics import render_latest

        content, content_type = render_latest(self.registry)
        return Response(content, headers={"content-type": content_type})


async def _http_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, str(exc.detail), "route", dict(exc.headers or {}))
    return _error(500, "internal error", "internal")


def create_app(guard: Guard | LiveGuard, config: ServeConfig | None = None, *, registry: Any = None,
               batcher: BatchRunner | None = None) -> Starlette:
    """The ASGI application.

    Parameters
    ----------
    guard : the guard to serve (its ``check`` is called from a worker thread)
    config : limits, batching and token (``host``/``port`` are used by
        :func:`oodguard.serve.serve` only)
    registry : what ``/metrics`` exposes: the guard's registry, or
        :func:`oodguard.metrics.multiprocess_registry` under a pre-fork server; None: 404
    batcher : what coalesces validated requests into guard calls; default a
        :class:`~oodguard.serve.Batcher` over ``guard.check`` set by ``config``. The Ray Serve
        deployment (:mod:`oodguard.integrations.ray`) passes one built on ``@serve.batch``;
        every route, limit, refusal and the :class:`~oodguard.serve.InferenceService` call
        stay the same.

    The :class:`Routes` object is ``app.state.routes``.
    """
    config = config or ServeConfig()
    runner = batcher or Batcher(guard.check, max_batch=config.max_batch,
                                max_wait_s=config.max_wait_ms / 1000.0,
                                enabled=config.batching)
    service = InferenceService(guard, runner, max_request_rows=config.max_request_rows)
    routes = Routes(service, config, registry)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        routes.ready = True
        log.info("serving model %r (%s)", routes.name, config)
        try:
            yield
        finally:
            routes.ready = False
            await service.stop()

    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    table = [
        Route("/v2", routes.server_metadata, methods=["GET"]),
        Route("/v2/health/live", routes.live, methods=["GET"]),
        Route("/v2/health/ready", routes.server_ready, methods=["GET"]),
        Route("/metrics", routes.metrics, methods=["GET"]),
    ]
    for base in (model, version):
        table += [
            Route(base, routes.model_metadata, methods=["GET"]),
            Route(base + "/ready", routes.model_ready, methods=["GET"]),
            Route(base + "/infer", routes.infer, methods=["POST"]),
        ]
    app = Starlette(routes=table, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _http_error})
    app.state.routes = routes
    return app
