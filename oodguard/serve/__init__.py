"""The HTTP guard service (``serve`` extra): Open Inference Protocol v2 over the guard.

A request flows through one module per step::

    body.py      read the body within size, time and byte-budget bounds
    protocol.py  decode the v2 request (json_limits.py bounds the JSON first)
    service.py   one transport-neutral call: validate, batch, check, count (no HTTP here)
    protocol.py  encode the v2 response
    app.py       the Starlette routes that chain these; config.py holds their limits

``runner.py`` serves the app with uvicorn until SIGTERM (``reload.py`` swaps in a recalibrated
bundle without a restart), and ``uvicorn_adapter.py`` is the one
module that touches uvicorn's internals. The Ray Serve deployment
(:mod:`oodguard.integrations.ray.serve`) builds the same app around its own batcher.
"""

from __future__ import annotations

from oodguard.serve.app import create_app
from oodguard.serve.batching import Batcher, BatchRunner, slice_result
from oodguard.serve.body import BodyReader, Dropped
from oodguard.serve.config import ServeConfig
from oodguard.serve.protocol import InferRequest, ProtocolError, encode_response, parse_infer
from oodguard.serve.reload import BundleWatcher, LiveGuard
from oodguard.serve.runner import serve
from oodguard.serve.service import InferenceService

__all__ = [
    "BatchRunner",
    "Batcher",
    "BodyReader",
    "BundleWatcher",
    "Dropped",
    "InferRequest",
    "InferenceService",
    "LiveGuard",
    "ProtocolError",
    "ServeConfig",
    "create_app",
    "encode_response",
    "parse_infer",
    "serve",
    "slice_result",
]
