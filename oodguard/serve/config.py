"""How the HTTP service runs: limits, batching, token (a frozen, validated configuration)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ServeConfig"]


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
        see :mod:`oodguard.serve.uvicorn_adapter`)
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
