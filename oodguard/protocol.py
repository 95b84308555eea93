"""The Open Inference Protocol (KServe v2) request and response bodies, in numpy and json only.

An infer request carries one FP32 input tensor ``[N, *input_shape]``, either as JSON ``data``
(flat or nested) or through the binary tensor extension (the JSON header is followed by the
raw little-endian bytes; ``Inference-Header-Content-Length`` gives the header's length). The
response has the outputs ``score`` (FP64, higher = more OOD), ``p_value`` (FP64), ``is_ood``
(BOOL) and, on request, ``features`` (FP32 ``[N, F]``), each as JSON or binary as asked.

Every malformed request raises :class:`ProtocolError`, which carries the HTTP status and a
fixed ``reason`` token for the refusal metric.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from oodguard.bundle import InputSpec
from oodguard.errors import InvalidInputError
from oodguard.guard import CheckResult

__all__ = [
    "DEFAULT_OUTPUTS",
    "HEADER_LENGTH",
    "OUTPUTS",
    "InferRequest",
    "ProtocolError",
    "encode_response",
    "model_metadata",
    "parse_infer",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
#: output name ▶ (v2 datatype, numpy little-endian dtype)
OUTPUTS: dict[str, tuple[str, str]] = {
    "score": ("FP64", "<f8"),
    "p_value": ("FP64", "<f8"),
    "is_ood": ("BOOL", "|b1"),
    "features": ("FP32", "<f4"),
}
DEFAULT_OUTPUTS = ("score", "p_value", "is_ood")


class ProtocolError(InvalidInputError):
    """A request the server refuses: ``status`` is the HTTP status (4xx), ``reason`` the metric
    label, ``rows`` how many inputs it held when that is known (else 1)."""

    def __init__(self, message: str, *, status: int = 400, reason: str, rows: int = 1) -> None:
        super().__init__(message, reason=reason)
        self.status = status
        self.rows = rows


@dataclass(frozen=True, eq=False)
class InferRequest:
    """A parsed infer request.

    Attributes
    ----------
    x : ndarray of float32, shape (N, *input_shape)
    outputs : the requested output names, in order, each with ``True`` for binary data
    id : the request id, echoed in the response
    """

    x: np.ndarray
    outputs: tuple[tuple[str, bool], ...]
    id: str | None = None


def model_metadata(name: str, spec: InputSpec, n_features: int) -> dict[str, Any]:
    """The v2 model metadata document."""
    return {
        "name": name,
        "versions": ["1"],
        "platform": "oodguard",
        "inputs": [{"name": spec.name, "datatype": "FP32", "shape": [-1, *spec.shape]}],
        "outputs": [
            {"name": out, "datatype": OUTPUTS[out][0],
             "shape": [-1, n_features] if out == "features" else [-1]}
            for out in OUTPUTS
        ],
    }


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 < n <= len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} must be an integer in [1, {len(body)}] (the body's length); "
            f"got {header_length!r}",
            reason="protocol",
        )
    return body[:n], body[n:]


def _shape(inp: Mapping[str, Any], spec: InputSpec, max_rows: int) -> tuple[int, ...]:
    shape = inp.get("shape")
    want = f"[N, {', '.join(map(str, spec.shape))}]"
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(f"input 'shape' must be a list of non-negative integers like {want}; "
                            f"got {shape!r}", reason="shape")
    if len(shape) != len(spec.shape) + 1:
        raise ProtocolError(f"input shape must be {want} (rank {len(spec.shape) + 1}); got "
                            f"{shape}. A single sample needs a batch axis: [1, ...]",
                            reason="rank")
    if tuple(shape[1:]) != spec.shape:
        raise ProtocolError(f"input shape must be {want}; got {shape}. The bundle was exported "
                            f"for samples of shape {list(spec.shape)}", reason="shape",
                            rows=shape[0] or 1)
    if shape[0] > max_rows:
        raise ProtocolError(f"a request may hold at most {max_rows} rows; got {shape[0]}. "
                            "Split the batch", status=413, reason="batch_size", rows=shape[0])
    return tuple(shape)


def _tensor(inp: Mapping[str, Any], shape: tuple[int, ...], binary: bytes) -> tuple[np.ndarray,
                                                                                      int]:
    """The input tensor and the number of binary bytes it used."""
    n = int(np.prod(shape))
    params = inp.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("input 'parameters' must be an object", reason="protocol")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size != 4 * n:
            raise ProtocolError(f"binary_data_size must be 4 × {n} = {4 * n} bytes for FP32 shape "
                                f"{list(shape)}; got {size!r}", reason="shape", rows=shape[0])
        if len(binary) < size:
            raise ProtocolError(f"the body holds {len(binary)} binary bytes after the JSON header;"
                                f" binary_data_size says {size}", reason="protocol")
        return np.frombuffer(binary, dtype="<f4", count=n).astype(np.float32).reshape(shape), size
    if "data" not in inp:
        raise ProtocolError("input needs 'data' (JSON) or parameters.binary_data_size (binary "
                            "tensor extension)", reason="protocol")
    try:
        raw = np.asarray(inp["data"])
    except ValueError as err:  # ragged nesting
        raise ProtocolError(f"input 'data' is not a rectangular list of numbers ({err})",
                            reason="type", rows=shape[0]) from err
    if raw.size and raw.dtype.kind not in "fiu":
        raise ProtocolError(f"input 'data' must hold only numbers; got JSON values that make "
                            f"dtype {raw.dtype}", reason="type", rows=shape[0])
    if raw.size != n:
        raise ProtocolError(f"input 'data' holds {raw.size} numbers; shape {list(shape)} needs "
                            f"{n}", reason="shape", rows=shape[0])
    with np.errstate(over="ignore"):  # beyond float32 range ▶ inf ▶ a non-finite row
        return raw.astype(np.float32).reshape(shape), 0


def _outputs(doc: Mapping[str, Any]) -> tuple[tuple[str, bool], ...]:
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("request 'parameters' must be an object", reason="protocol")
    default_binary = bool(params.get("binary_data_output", False))
    requested = doc.get("outputs")
    if requested is None:
        return tuple((name, default_binary) for name in DEFAULT_OUTPUTS)
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise ProtocolError("'outputs' must be a list of objects", reason="protocol")
    out = []
    for o in requested:
        name = o.get("name")
        if name not in OUTPUTS:
            raise ProtocolError(f"unknown output {name!r}; outputs are {list(OUTPUTS)}",
                                reason="protocol")
        p = o.get("parameters") or {}
        out.append((name, bool(p.get("binary_data", default_binary)) if isinstance(p, dict)
                    else default_binary))
    return tuple(out)


def parse_infer(
    body: bytes, *, header_length: str | None, spec: InputSpec, max_rows: int
) -> InferRequest:
    """Parse and check an infer request body against the bundle's input spec.

    Raises
    ------
    ProtocolError
        With a 400 (or 413 for too many rows) status and a reason token.
    """
    head, binary = _split(body, header_length)
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"the request body is not valid JSON: {err}", reason="json") from err
    if not isinstance(doc, dict):
        raise ProtocolError("the request must be a JSON object with 'inputs'", reason="protocol")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"'inputs' must be a list of exactly one tensor object (the model's "
                            f"input {spec.name!r})", reason="protocol")
    inp = inputs[0]
    if inp.get("name") != spec.name:
        raise ProtocolError(f"the input must be named {spec.name!r}; got {inp.get('name')!r}",
                            reason="protocol")
    if inp.get("datatype") != "FP32":
        raise ProtocolError(f"input datatype must be 'FP32'; got {inp.get('datatype')!r}. "
                            "Send float32 values", reason="dtype")
    shape = _shape(inp, spec, max_rows)
    x, used = _tensor(inp, shape, binary)
    if used != len(binary):
        raise ProtocolError(f"{len(binary) - used} binary bytes follow the JSON header that no "
                            "input claims", reason="protocol")
    rid = doc.get("id")
    return InferRequest(x=x, outputs=_outputs(doc), id=rid if isinstance(rid, str) else None)


def _column(result: CheckResult, name: str) -> np.ndarray:
    arr = result.features if name == "features" else getattr(result, name)
    return np.ascontiguousarray(arr, dtype=OUTPUTS[name][1])


def encode_response(
    model: str, request: InferRequest, result: CheckResult
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (content type, and the JSON header's length when any
    output is binary). JSON outputs may hold ``Infinity``/``NaN`` for non-finite input rows."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in request.outputs:
        arr = _column(result, name)
        out: dict[str, Any] = {"name": name, "datatype": OUTPUTS[name][0],
                               "shape": list(arr.shape)}
        if binary:
            blob = arr.tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = arr.ravel().tolist()
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return b"".join([head, *blobs]), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }
