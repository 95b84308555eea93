"""The two ways the service turns a request away, each with its HTTP status and metric label.

:class:`ProtocolError`: the request's inputs were read and are bad (400, 413, 415, 404),
counted in ``oodguard_inputs_refused_total`` by the rows the request carried.
:class:`Dropped`: the request ended before its inputs were read (401, 408, 503, or the client
left), counted once in ``oodguard_http_requests_dropped_total``.
"""

from __future__ import annotations

from oodguard.errors import InvalidInputError

__all__ = ["Dropped", "ProtocolError"]


class ProtocolError(InvalidInputError):
    """A request the server refuses: ``status`` is the HTTP status (4xx), ``reason`` the metric
    label, ``rows`` how many inputs the request carried (its data, never its claimed shape;
    at least 1)."""

    def __init__(self, message: str, *, status: int = 400, reason: str, rows: int = 1) -> None:
        super().__init__(message, reason=reason)
        self.status = status
        self.rows = rows


class Dropped(Exception):
    """A request ended before its inputs were read: ``status``, a fixed ``reason`` token for
    ``oodguard_http_requests_dropped_total`` and the response ``headers``."""

    def __init__(self, status: int, message: str, reason: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.headers = status, reason, headers
