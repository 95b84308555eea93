"""Reading request bodies within bounds: size, time, and one byte budget for all requests.

A body must arrive within ``timeout_s`` of its request's headers; it may hold at most
``max_bytes``; and all bodies being received, parsed or scored share ``budget_bytes`` (a
declared ``Content-Length`` is reserved before any byte is read, a chunked body as it comes).
A request ended here raises :class:`~oodguard.serve.refusals.Dropped` (408/503, or the client
left), which the service counts apart from input refusals; a bad header raises
:class:`~oodguard.serve.refusals.ProtocolError` (413/415) like any other bad input.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

from oodguard.serve.refusals import Dropped, ProtocolError

__all__ = ["CONTENT_TYPES", "BodyReader", "Hold"]

#: body media types accepted (besides none): JSON, the binary extension, and what curl -d sends
CONTENT_TYPES = frozenset({"application/json", "application/octet-stream", "text/plain",
                           "application/x-www-form-urlencoded"})


class Hold:
    """One request's share of the budget: ``bytes`` reserved, ``complete`` once read in full."""

    __slots__ = ("bytes", "complete")

    def __init__(self) -> None:
        self.bytes = 0
        self.complete = False


class BodyReader:
    """Reads bodies for one service. Used from the event loop's thread only (no lock).

    Parameters
    ----------
    max_bytes : the largest body (413 beyond)
    timeout_s : the longest a body may take to arrive after the headers (408)
    budget_bytes : the bytes all requests may hold at once (503 beyond, at once)
    """

    def __init__(self, *, max_bytes: int, timeout_s: float, budget_bytes: int) -> None:
        self.max_bytes, self.timeout_s, self.budget_bytes = max_bytes, timeout_s, budget_bytes
        self.held = 0  # bytes of bodies being received, parsed or scored

    def declared(self, request: Request) -> int | None:
        """The declared body length, after the encoding, media type and size are checked."""
        enc = request.headers.get("content-encoding", "identity").strip().lower()
        if enc not in ("", "identity"):
            raise ProtocolError(f"Content-Encoding {enc[:40]!r} is not supported; send the body "
                                "uncompressed", status=415, reason="encoding")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media and media not in CONTENT_TYPES:
            raise ProtocolError(f"Content-Type {media[:60]!r} is not accepted; send "
                                "application/json, or application/octet-stream with the binary "
                                "tensor extension", status=415, reason="content_type")
        limit = self.max_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared[:20]) > limit):
            raise ProtocolError(f"the body may hold at most {limit} bytes; Content-Length is "
                                f"{declared[:40]}", status=413, reason="body_size")
        return None if declared is None else int(declared)

    def discardable(self, request: Request) -> bool:
        """Whether an unread rest of the body may be left to the HTTP layer to discard (its
        declared length is within the limit) rather than closing the connection."""
        declared = request.headers.get("content-length", "")
        return declared.isdigit() and int(declared[:20]) <= self.max_bytes

    def reserve(self, n: int, hold: Hold) -> None:
        """Take ``n`` bytes of the budget for ``hold``; :meth:`release` gives them back."""
        if self.held + n > self.budget_bytes:
            raise Dropped(503, f"the server holds its most request bytes ({self.budget_bytes}) "
                          "in flight; retry after a second", "overloaded", {"Retry-After": "1"})
        self.held += n
        hold.bytes += n

    def release(self, hold: Hold) -> None:
        self.held -= hold.bytes
        hold.bytes = 0

    async def read(self, request: Request, hold: Hold) -> bytes:
        """The whole body, within the size limit, the timeout and the budget."""
        declared = self.declared(request)
        limit = self.max_bytes
        if declared is not None:
            self.reserve(declared, hold)

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ProtocolError(f"the body may hold at most {limit} bytes", status=413,
                                        reason="body_size")
                if declared is None:
                    self.reserve(len(chunk), hold)
                chunks.append(chunk)
            hold.complete = True
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(read(), self.timeout_s)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            raise Dropped(408, f"the request body did not arrive within {self.timeout_s:g} s; "
                          "send it at once (the server closes the connection)", "body_timeout",
                          {"Connection": "close"}) from None
        except ClientDisconnect:
            raise Dropped(400, "the client disconnected", "disconnect") from None
