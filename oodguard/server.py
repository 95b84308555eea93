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

Every refused request gets a 4xx (or 503) JSON body ``{"error": "...", "reason": "..."}``
and, on the infer route, counts in ``oodguard_inputs_refused_total{reason=...}`` (a bad input,
at most ``max_request_rows`` per request) or ``oodguard_http_requests_dropped_total`` (ended
before its inputs were read: no token, body timeout, byte budget, disconnect). The contract,
outcome by outcome, is ``docs/guarantees-http.md``. Environment variables are read by the CLI
(the edge), not here.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oodguard._version import __version__
from oodguard.batching import Batcher, BatchRunner
from oodguard.decisions import batch_decisions
from oodguard.errors import GuardFailure, InvalidInputError
from oodguard.guard import Guard
from oodguard.http_body import BodyReader, Dropped, Hold
from oodguard.protocol import HEADER_LENGTH, ProtocolError, encode_response, model_metadata
from oodguard.protocol import parse_infer as _parse_infer
from oodguard.validation import validate_batch

__all__ = ["ServeConfig", "create_app", "serve"]

log = logging.getLogger(__name__)

_INLINE_PARSE_BYTES = 64 * 1024
#: after SIGTERM, how long accepted connections may go on reading what their clients sent
#: before idle ones are closed (see ``serve``)
_DRAIN_QUIET_S = 0.5


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How the service runs.

    Parameters
    ----------
    host, port : where to listen (loopback by default; port 0 picks a free one)
    model_name : the v2 model name; default the guard's name
    batching : coalesce concurrent requests (dynamic batching)
    max_batch : most rows per coalesced guard call
    max_wait_ms : longest a request waits for others to join its batch. 0 (the default) adds
        no latency: a batch is what queued while the previous one ran, which already grows
        with concurrency (see ``benchmarks/service.py``); a few ms helps when one engine call
        has a large fixed cost (GPU) and load is moderate
    max_body_bytes : larger request bodies get 413
    max_request_rows : requests with more rows get 413
    body_timeout_s : a request body not fully received this long after the request's headers
        gets 408 and the connection is closed (slow or unfinished uploads)
    header_timeout_s : a connection whose request headers are not complete this long after it
        opened (or after the request's first bytes) is closed without an answer (slowloris;
        see :mod:`oodguard.http_headers`)
    max_inflight_body_bytes : budget for the bodies of all requests being received or served
        at once (declared Content-Length reserved up front, chunked bodies as they come); a
        request that does not fit gets 503 with ``Retry-After: 1`` at once, without waiting
    token : bearer token required on ``/v2/models/...`` (health and ``/metrics`` stay open)
    graceful_timeout_s : how long SIGTERM waits for in-flight requests
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    batching: bool = True
    max_batch: int = 64
    max_wait_ms: float = 0.0
    max_body_bytes: int = 16 * 1024 * 1024
    max_request_rows: int = 4096
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    max_inflight_body_bytes: int = 64 * 1024 * 1024
    token: str | None = field(default=None, repr=False)
    graceful_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535]. Got {self.port}")
        for name in ("max_batch", "max_body_bytes", "max_request_rows",
                     "max_inflight_body_bytes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int. Got {getattr(self, name)!r}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ValueError(f"max_wait_ms must be in [0, 10000]. Got {self.max_wait_ms}")
        for name in ("graceful_timeout_s", "body_timeout_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0. Got {getattr(self, name)}")
        if self.max_inflight_body_bytes < self.max_body_bytes:
            raise ValueError(f"max_inflight_body_bytes ({self.max_inflight_body_bytes}) must be "
                             f">= max_body_bytes ({self.max_body_bytes}), or no large request "
                             "could ever be served")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must be a non-empty string or None")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["token"] = None if self.token is None else "***"
        return d


def _error(status: int, message: str, reason: str, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    return JSONResponse({"error": message, "reason": reason}, status_code=status,
                        headers=headers)


class _Service:
    """The routes' shared state: the guard, the batcher, readiness, the body-byte budget."""

    def __init__(self, guard: Guard, config: ServeConfig, registry: Any,
                 batcher: BatchRunner | None = None) -> None:
        self.guard, self.config, self.registry = guard, config, registry
        if guard.metrics is not None:
            guard.metrics.init_http()  # refusal and drop series at 0 before the first request
        self.name = config.model_name or guard.name
        self.batcher: BatchRunner = batcher or Batcher(
            guard.check, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000.0,
            enabled=config.batching)
        self.ready = False
        self._token = None if config.token is None else f"Bearer {config.token}".encode()
        self.bodies = BodyReader(max_bytes=config.max_body_bytes,
                                 timeout_s=config.body_timeout_s,
                                 budget_bytes=config.max_inflight_body_bytes)

    def refuse(self, err: ProtocolError | InvalidInputError, rows: int = 1) -> JSONResponse:
        if self.guard.metrics is not None:
            self.guard.metrics.observe_refused(
                err.reason, max(1, min(rows, self.config.max_request_rows)))
        status = getattr(err, "status", 400)
        return _error(status, str(err), err.reason)

    def drop(self, d: Dropped) -> JSONResponse:
        if self.guard.metrics is not None:
            self.guard.metrics.observe_dropped(d.reason)
        return _error(d.status, str(d), d.reason, d.headers)

    def authorize(self, request: Request) -> None:
        if self._token is None:
            return
        got = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(got, self._token):
            raise Dropped(401, "missing or wrong bearer token: send 'Authorization: Bearer "
                           "<token>'", "unauthorized",
                           {"WWW-Authenticate": "Bearer"})

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
            model_metadata(self.name, self.guard.input_spec, len(self.guard.feature_names)), 200))

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
        try:
            self.authorize(request)
            self.model(request)
            body = await self.bodies.read(request, hold)
            parse = functools.partial(
                _parse_infer, body, header_length=request.headers.get(HEADER_LENGTH),
                spec=self.guard.input_spec, max_rows=self.config.max_request_rows)
            # Decoding megabytes of JSON takes milliseconds: off the event loop, so that
            # other requests (and health probes) are not held up meanwhile.
            req = parse() if len(body) < _INLINE_PARSE_BYTES else await run_in_threadpool(parse)
        except ProtocolError as err:
            return self.refuse(err, err.rows)
        try:  # per request, so that one bad request never fails a coalesced batch
            validate_batch(req.x, self.guard.input_spec, nonfinite=self.guard.nonfinite)
        except InvalidInputError as err:
            return self.refuse(err, len(req.x))
        try:
            result = await self.batcher.submit(req.x)
        except Exception as err:  # the engine failed: the server's fault, counted as such
            counted = isinstance(err, GuardFailure)  # guard.check counted it already
            # Anything else is "internal", a label whose series exists from the start (an
            # exception's class name would start a new series at 1, and its first event
            # would never alert); the log names the exception.
            kind = err.reason if isinstance(err, GuardFailure) else "internal"
            log.exception("guard failed on a batch")
            if self.guard.metrics is not None and not counted:
                self.guard.metrics.observe_failure(kind)
            return _error(500, f"the guard failed: {kind}", "guard_failure")
        if req.fdr is not None:
            # This request's rows only: a coalesced batch mixes other clients' rows, and the
            # BH decision of a row depends on every row it is tested with.
            is_ood = batch_decisions(result.score, result.p_value, req.fdr)
            result = replace(result, is_ood=is_ood, rule="bh", fdr=req.fdr)
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


def create_app(guard: Guard, config: ServeConfig | None = None, *, registry: Any = None,
               batcher: BatchRunner | None = None) -> Starlette:
    """The ASGI application.

    Parameters
    ----------
    guard : the guard to serve (its ``check`` is called from a worker thread)
    config : limits, batching and token (``host``/``port`` are used by :func:`serve` only)
    registry : what ``/metrics`` exposes: the guard's registry, or
        :func:`oodguard.metrics.multiprocess_registry` under a pre-fork server; None: 404
    batcher : what coalesces validated requests into guard calls; default a
        :class:`~oodguard.batching.Batcher` over ``guard.check`` set by ``config``. The Ray Serve
        deployment (:mod:`oodguard.integrations.ray`) passes one built on ``@serve.batch``;
        every route, limit and refusal stays this module's.
    """
    svc = _Service(guard, config or ServeConfig(), registry, batcher)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await svc.batcher.start()
        svc.ready = True
        log.info("serving model %r (%s)", svc.name, svc.config)
        try:
            yield
        finally:
            svc.ready = False
            await svc.batcher.stop()

    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2", svc.server_metadata, methods=["GET"]),
        Route("/v2/health/live", svc.live, methods=["GET"]),
        Route("/v2/health/ready", svc.server_ready, methods=["GET"]),
        Route("/metrics", svc.metrics, methods=["GET"]),
    ]
    for base in (model, version):
        routes += [
            Route(base, svc.model_metadata, methods=["GET"]),
            Route(base + "/ready", svc.model_ready, methods=["GET"]),
            Route(base + "/infer", svc.infer, methods=["POST"]),
        ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _http_error})
    app.state.service = svc
    return app


def serve(guard: Guard, config: ServeConfig, *, registry: Any = None,
          announce: Any = print) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests and return.

    The socket is bound before ``announce`` is called with the URL, so with ``port=0`` the
    printed port is the real one and connections made right after it queue until served.
    """
    import uvicorn

    app = create_app(guard, config, registry=registry)
    svc: _Service = app.state.service
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit TCP_NODELAY: without it a response written in two parts
    # (headers, body) waits for the client's delayed ACK, 40 ms per request on Linux.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((config.host, config.port))
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            svc.ready = False  # readiness fails at once while in-flight requests finish
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await _drain(self, sock)
            await super().shutdown(sockets)

    from oodguard.http_headers import protocol_class

    server = _Server(uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on",
        http=protocol_class(config.header_timeout_s),
        timeout_graceful_shutdown=int(config.graceful_timeout_s) or 1,
    ))
    announce(f"oodguard serve: listening on http://{shown}:{port} (model {svc.name!r}, "
             f"v2 routes under /v2, metrics at /metrics)")
    # uvicorn re-raises the signal it drained on once it has shut down; with the default
    # handlers that kills the process (exit 143). The shutdown is done by then, so the
    # handlers it restores and re-raises into are no-ops and serve() returns normally.
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _ignore) for s in _SIGNALS} if main else {}
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    announce("oodguard serve: stopped")


_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def _drain(server: Any, sock: socket.socket) -> None:
    """Stop accepting without dropping a request a client already sent.

    Closing a listening socket resets the connections the kernel completed but the server had
    not accepted yet, whose clients have already sent their request: under load that was 20-40%
    of the requests in flight. So they are accepted first and handed to the HTTP protocol like
    any other connection, then the listener closes, then every connection gets
    ``_DRAIN_QUIET_S`` to read what its client sent before uvicorn's shutdown closes idle
    connections (a connection still without a request at that point gets none answered, as
    with any server). uvicorn then lets every started request finish (``graceful_timeout_s``)
    and the lifespan stops the batcher after its queue is empty.
    """
    loop = asyncio.get_running_loop()
    adopted = []
    while True:  # the listening socket is non-blocking under asyncio
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            break
        except OSError:  # closed already
            break
        adopted.append(conn)
    for srv in server.servers:
        srv.close()
    config = server.config

    def protocol() -> asyncio.Protocol:
        return config.http_protocol_class(
            config=config, server_state=server.server_state, app_state=server.lifespan.state)

    for conn in adopted:
        conn.setblocking(False)
        await loop.connect_accepted_socket(protocol, conn)
    log.info("draining: %d queued connection(s) adopted, %d open", len(adopted),
             len(server.server_state.connections))
    await asyncio.sleep(_DRAIN_QUIET_S)


def _ignore(sig: int, frame: Any) -> None:
    log.debug("signal %d after shutdown ignored", sig)
