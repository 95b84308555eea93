"""``oodguard serve``: the app on a bound socket, until SIGTERM, then a drain.

The socket is bound here (so the announced port is the real one, and connections made right
after the announcement queue until served); everything that needs uvicorn's internals — the
header timeout, the drain — is in :mod:`oodguard.serve.uvicorn_adapter`.
"""

from __future__ import annotations

import signal
import socket
import threading
from typing import Any

from oodguard.guard import Guard
from oodguard.serve.app import Routes, create_app
from oodguard.serve.config import ServeConfig
from oodguard.serve.reload import BundleWatcher, LiveGuard
from oodguard.serve.uvicorn_adapter import check_version, run

__all__ = ["serve"]


def serve(guard: Guard | LiveGuard, config: ServeConfig, *, registry: Any = None,
          announce: Any = print, watcher: BundleWatcher | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests and return.

    With ``watcher`` (whose ``live`` guard is ``guard``), the bundle is reloaded without a
    restart when it changes on disk or on SIGHUP (:mod:`oodguard.serve.reload`).

    The socket is bound before ``announce`` is called with the URL, so with ``port=0`` the
    printed port is the real one and connections made right after it queue until served.

    Raises
    ------
    MissingDependencyError
        uvicorn is missing or outside the supported range (checked before binding).
    """
    check_version()
    app = create_app(guard, config, registry=registry)
    routes: Routes = app.state.routes
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

    def not_ready() -> None:
        routes.ready = False  # readiness fails at once while in-flight requests finish

    hup = None
    if watcher is not None:
        watcher.start()
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
            hup = signal.signal(signal.SIGHUP, lambda *_: watcher.request())
    announce(f"oodguard serve: listening on http://{shown}:{port} (model {routes.name!r}, "
             f"v2 routes under /v2, metrics at /metrics)")
    try:
        run(app, sock, header_timeout_s=config.header_timeout_s,
            graceful_timeout_s=config.graceful_timeout_s, on_exit=not_ready)
    finally:
        sock.close()
        if watcher is not None:
            watcher.stop()
            if hup is not None:
                signal.signal(signal.SIGHUP, hup)
    announce("oodguard serve: stopped")
