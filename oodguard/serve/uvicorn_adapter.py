"""Everything oodguard does with uvicorn beyond its public ``Config``/``Server.run``: the one
module that uses uvicorn's internals, for the supported range :data:`SUPPORTED` only.

Two extensions, both on classes uvicorn does not document for subclassing:

* **A bound on how long a client may take to send a request's headers.** uvicorn bounds the
  size of a request's headers but not the time they take: a client that sends
  ``POST /v2/... HTTP/1.1\\r\\nHost: a\\r\\n`` and then one byte a minute (a "slowloris") holds
  its connection — and a slot of whatever bounds connections — for ever; a connection that
  sends nothing after connecting is held the same way (uvicorn's keep-alive timeout starts only
  after a first response). :func:`header_timeout_protocol` returns uvicorn's h11 protocol with
  one timer: armed when a connection opens and whenever data of a new request starts to arrive,
  cancelled once the request's headers are complete (h11 leaves its ``IDLE`` state). If it
  fires, the connection is closed without an answer (no request exists yet to answer; nginx's
  ``client_header_timeout`` does the same). Bodies have their own timeout
  (:mod:`oodguard.serve.body`), idle keep-alive connections uvicorn's.
* **Draining on SIGTERM without dropping a request a client already sent** (:func:`run`).

It uses ``H11Protocol``'s ``conn``, ``loop``, ``transport`` and callbacks, and ``Server``'s
``servers``, ``server_state``, ``lifespan``, ``handle_exit`` and ``shutdown``.
:func:`check_version` refuses a uvicorn outside :data:`SUPPORTED` with a message that says
what to install: a silent change there would drop the header timeout or lose requests at
shutdown, which no test of the caller would notice. The package's ``serve`` extra pins the same
range; ``tests/test_serve_adapters.py`` checks the installed uvicorn is inside it.

The service imports this only when it serves, so the runtime does not need uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from oodguard.errors import MissingDependencyError
from oodguard.extras import require_version

__all__ = ["DRAIN_QUIET_S", "SUPPORTED", "check_version", "header_timeout_protocol", "run"]

log = logging.getLogger(__name__)

#: the uvicorn releases this module supports: (lowest, first unsupported), as (major, minor)
SUPPORTED = ((0, 30), (0, 55))
#: after SIGTERM, how long accepted connections may go on reading what their clients sent
#: before idle ones are closed (see :func:`run`)
DRAIN_QUIET_S = 0.5
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def check_version(version: str | None = None) -> str:
    """The installed uvicorn's version (or ``version``), if :data:`SUPPORTED`.

    Raises
    ------
    MissingDependencyError
        uvicorn is not installed, or its version is outside the supported range.
    """
    if version is None:
        try:
            import uvicorn
        except ImportError as err:
            raise MissingDependencyError(
                f"oodguard serve needs uvicorn ({err}); install it with: "
                "pip install 'oodguard[serve]'") from err
        version = uvicorn.__version__
    return require_version("uvicorn", version, SUPPORTED, user="oodguard serve",
                           why="it extends uvicorn's H11Protocol and Server, which are not "
                               "public API", extra="serve")


def header_timeout_protocol(timeout_s: float) -> type[Any]:
    """uvicorn's ``H11Protocol`` with a ``timeout_s`` bound on reading each request's headers."""
    check_version()
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                if self._header_timer is None:  # a new request started arriving
                    self._arm()
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # a pipelined next request whose start arrived during the response
            if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


def run(app: Any, sock: socket.socket, *, header_timeout_s: float, graceful_timeout_s: float,
        on_exit: Callable[[], None]) -> None:
    """Serve ``app`` on the bound, listening ``sock`` until SIGTERM/SIGINT, then drain.

    ``on_exit`` is called as soon as the signal arrives (readiness then fails at once while
    in-flight requests finish). Returns once every started request has been answered (within
    ``graceful_timeout_s``) and the app's lifespan has ended.
    """
    check_version()
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            on_exit()
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await _drain(self, sock)
            await super().shutdown(sockets)

    server = DrainingServer(uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on",
        http=header_timeout_protocol(header_timeout_s),
        timeout_graceful_shutdown=int(graceful_timeout_s) or 1,
    ))
    # uvicorn re-raises the signal it drained on once it has shut down; with the default
    # handlers that kills the process (exit 143). The shutdown is done by then, so the
    # handlers it restores and re-raises into are no-ops and run() returns normally.
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _ignore) for s in _SIGNALS} if main else {}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _drain(server: Any, sock: socket.socket) -> None:
    """Stop accepting without dropping a request a client already sent.

    Closing a listening socket resets the connections the kernel completed but the server had
    not accepted yet, whose clients have already sent their request: under load that was 20-40%
    of the requests in flight. So they are accepted first and handed to the HTTP protocol like
    any other connection, then the listener closes, then every connection gets
    :data:`DRAIN_QUIET_S` to read what its client sent before uvicorn's shutdown closes idle
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
    await asyncio.sleep(DRAIN_QUIET_S)


def _ignore(sig: int, frame: Any) -> None:
    log.debug("signal %d after shutdown ignored", sig)
