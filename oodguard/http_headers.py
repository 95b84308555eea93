"""A bound on how long a client may take to send a request's headers.

uvicorn bounds the size of a request's headers but not the time they take: a client that sends
``POST /v2/... HTTP/1.1\\r\\nHost: a\\r\\n`` and then one byte a minute (a "slowloris") holds its
connection — and a slot of whatever bounds connections — for ever; a connection that sends
nothing after connecting is held the same way (uvicorn's keep-alive timeout starts only after a
first response). :func:`protocol_class` returns uvicorn's h11 protocol with one timer: armed
when a connection opens and whenever data of a new request starts to arrive, cancelled once
the request's headers are complete (h11 leaves its ``IDLE`` state). If it fires, the connection
is closed without an answer (no request exists yet to answer; nginx's
``client_header_timeout`` does the same). Bodies have their own timeout
(:mod:`oodguard.http_body`), idle keep-alive connections uvicorn's.

The service imports this only when it serves, so the runtime does not need uvicorn.
"""

from __future__ import annotations

from typing import Any

__all__ = ["protocol_class"]


def protocol_class(timeout_s: float) -> type[Any]:
    """uvicorn's ``H11Protocol`` with a ``timeout_s`` bound on reading each request's headers."""
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
