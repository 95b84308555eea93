"""The Open Inference Protocol (KServe v2) request and response bodies, in numpy and json only.

An infer request carries one FP32 input tensor ``[N, *input_shape]``, either as JSON ``data``
(flat or nested) or through the binary tensor extension (the JSON header is followed by the
raw little-endian bytes; ``Inference-Header-Content-Length`` gives the header's length). The
response has the outputs ``score`` (FP64, higher = more OOD), ``p_value`` (FP64), ``is_ood``
(BOOL) and, on request, ``features`` (FP32 ``[N, F]``), each as JSON or binary as asked.

Every malformed request raises :class:`~oodguard.serve.refusals.ProtocolError`, which carries
the HTTP status and a fixed ``reason`` token for the refusal metric. Parsing is bounded before
anything is built from the body: :mod:`oodguard.serve.json_limits` refuses deep nesting and long
numbers before ``json.loads``, and the shape is checked with Python ints before any product is
taken. A refusal counts the rows the request *carried* (its ``data`` or binary bytes over one
sample's size, at least 1, at most ``max_rows``), never the rows its ``shape`` claims: a client
must not move the refusal counter, which alerts fire on, by writing a large number.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from oodguard.bundle import InputSpec
from oodguard.results import CheckResult
from oodguard.serve.json_limits import MAX_JSON_DEPTH, check_json_bounds
from oodguard.serve.refusals import ProtocolError
from oodguard.validation import check_fdr

__all__ = [
    "DEFAULT_OUTPUTS",
    "HEADER_LENGTH",
    "OUTPUTS",
    "InferRequest",
    "carried_rows",
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

@dataclass(frozen=True, eq=False)
class InferRequest:
    """A parsed infer request.

    Attributes
    ----------
    x : ndarray of float32, shape (N, *input_shape)
    outputs : the requested output names, in order, each with ``True`` for binary data
    id : the request id, echoed in the response
    fdr : ``parameters.fdr``: decide ``is_ood`` by Benjamini–Hochberg at this level over the
        request's rows (None: the guard's per-row ``p_value <= alpha``)
    """

    x: np.ndarray
    outputs: tuple[tuple[str, bool], ...]
    id: str | None = None
    fdr: float | None = None


def model_metadata(name: str, spec: InputSpec, n_features: int,
                   parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The v2 model metadata document; ``parameters`` (the drift monitor's state and
    settings, see :mod:`oodguard.drift`) is added when given."""
    doc: dict[str, Any] = {
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
    if parameters:
        doc["parameters"] = dict(parameters)
    return doc


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    h = header_length.strip()
    n = int(h) if h.isdigit() and len(h) <= 12 else -1
    if not 0 < n <= len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} must be an integer in [1, {len(body)}] (the body's length); "
            f"got {header_length[:40]!r}",
            reason="protocol",
        )
    return body[:n], body[n:]


def _shape(inp: Mapping[str, Any], spec: InputSpec, max_rows: int) -> tuple[int, ...]:
    shape = inp.get("shape")
    want = f"[N, {', '.join(map(str, spec.shape))}]"
    if not isinstance(shape, list) or len(shape) > MAX_JSON_DEPTH or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        shown = repr(shape) if len(repr(shape)) < 200 else repr(shape)[:200] + "…"
        raise ProtocolError(f"input 'shape' must be a list of non-negative integers like {want}; "
                            f"got {shown}", reason="shape")
    shown = str(shape) if len(str(shape)) < 200 else str(shape)[:200] + "…"
    if len(shape) != len(spec.shape) + 1:
        raise ProtocolError(f"input shape must be {want} (rank {len(spec.shape) + 1}); got "
                            f"{shown}. A single sample needs a batch axis: [1, ...]",
                            reason="rank")
    if tuple(shape[1:]) != spec.shape:
        raise ProtocolError(f"input shape must be {want}; got {shown}. The bundle was exported "
                            f"for samples of shape {list(spec.shape)}", reason="shape")
    if shape[0] > max_rows:
        raise ProtocolError(f"a request may hold at most {max_rows} rows; got "
                            f"{shown.split(',')[0].lstrip('[')}. Split the batch", status=413,
                            reason="batch_size")
    return tuple(shape)


def _leaf_types(data: list[Any], ndim: int) -> set[type]:
    """The Python types of the leaves of a rectangular nested list of depth ``ndim``."""
    level: Any = data
    for _ in range(ndim - 1):
        level = itertools.chain.from_iterable(level)
    return set(map(type, level))


def _tensor(inp: Mapping[str, Any], shape: tuple[int, ...], binary: bytes, *,
            maybe_bool: bool) -> tuple[np.ndarray, int]:
    """The input tensor and the number of binary bytes it used. ``maybe_bool``: the JSON holds
    ``true`` or ``false`` somewhere (else the leaves need no type check)."""
    n = math.prod(shape)  # bounded: shape[0] <= max_rows and shape[1:] is the bundle's
    params = inp.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("input 'parameters' must be an object", reason="protocol")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size != 4 * n:
            raise ProtocolError(f"binary_data_size must be 4 × {n} = {4 * n} bytes for FP32 shape "
                                f"{list(shape)}; got {size!r:.40}", reason="shape")
        if len(binary) < size:
            raise ProtocolError(f"the body holds {len(binary)} binary bytes after the JSON header;"
                                f" binary_data_size says {size}. The body is truncated or "
                                f"{HEADER_LENGTH} is too large", reason="protocol")
        return np.frombuffer(binary, dtype="<f4", count=n).astype(np.float32).reshape(shape), size
    if "data" not in inp:
        raise ProtocolError("input needs 'data' (JSON) or parameters.binary_data_size (binary "
                            "tensor extension)", reason="protocol")
    data = inp["data"]
    if not isinstance(data, list):
        raise ProtocolError(f"input 'data' must be a JSON list of numbers; got a "
                            f"{type(data).__name__}", reason="type")
    try:
        raw = np.asarray(data)
    except ValueError as err:  # ragged nesting
        raise ProtocolError(f"input 'data' is not a rectangular list of numbers ({err})",
                            reason="type") from err
    if raw.size and (raw.dtype.kind not in "fiu" or (
            maybe_bool and not _leaf_types(data, raw.ndim) <= {int, float})):
        # numpy turns [true, 0.5] into floats (strings and nulls it turns into non-numbers);
        # JSON booleans are not numbers here.
        raise ProtocolError("input 'data' must hold only JSON numbers (no true/false, strings, "
                            "null or objects)", reason="type")
    if raw.size != n:
        raise ProtocolError(f"input 'data' holds {raw.size} numbers; shape {list(shape)} needs "
                            f"{n}", reason="shape")
    with np.errstate(over="ignore"):  # beyond float32 range ▶ inf ▶ a non-finite row
        return raw.astype(np.float32).reshape(shape), 0


def _flag(params: Mapping[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"parameter {key!r} must be a JSON boolean (true or false); got "
                            f"{value!r:.40}", reason="protocol")
    return value


def _fdr(params: Mapping[str, Any]) -> float | None:
    q = params.get("fdr")
    try:
        return check_fdr(q)  # the guard's own rule for fdr
    except ValueError:
        raise ProtocolError(f"parameter 'fdr' must be a number in (0, 1), the target false "
                            f"discovery rate over this request's rows; got {q!r:.40}",
                            reason="protocol") from None


def _outputs(params: Mapping[str, Any], requested: Any) -> tuple[tuple[str, bool], ...]:
    default_binary = _flag(params, "binary_data_output", False)
    if requested is None:
        return tuple((name, default_binary) for name in DEFAULT_OUTPUTS)
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise ProtocolError("'outputs' must be a list of objects", reason="protocol")
    out: list[tuple[str, bool]] = []
    for o in requested:
        name = o.get("name")
        if name not in OUTPUTS:
            raise ProtocolError(f"unknown output {name!r:.40}; outputs are {list(OUTPUTS)}",
                                reason="protocol")
        if any(name == seen for seen, _ in out):
            raise ProtocolError(f"output {name!r} is requested twice", reason="protocol")
        p = o.get("parameters") or {}
        if not isinstance(p, dict):
            raise ProtocolError(f"output {name!r} 'parameters' must be an object",
                                reason="protocol")
        out.append((name, _flag(p, "binary_data", default_binary)))
    return tuple(out)


def parse_infer(
    body: bytes, *, header_length: str | None, spec: InputSpec, max_rows: int
) -> InferRequest:
    """Parse and check an infer request body against the bundle's input spec.

    Raises
    ------
    ProtocolError
        With a 400 (or 413 for too many rows) status and a reason token; ``rows`` is what
        the request carried (see :func:`carried_rows`), at most ``max_rows``.
    """
    head, binary = _split(body, header_length)
    check_json_bounds(head)
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"the request body is not valid JSON: {err}", reason="json") from err
    except (ValueError, RecursionError) as err:  # not reachable after the bounds; kept safe
        raise ProtocolError(f"the request body is not acceptable JSON: {err}",
                            reason="json") from err
    if not isinstance(doc, dict):
        raise ProtocolError("the request must be a JSON object with 'inputs'", reason="protocol")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"'inputs' must be a list of exactly one tensor object (the model's "
                            f"input {spec.name!r})", reason="protocol")
    inp = inputs[0]
    try:
        return _request(doc, inp, head, binary, spec=spec, max_rows=max_rows)
    except ProtocolError as err:
        err.rows = min(carried_rows(inp, binary, spec), max_rows)
        raise


def _request(doc: Mapping[str, Any], inp: Mapping[str, Any], head: bytes, binary: bytes, *,
             spec: InputSpec, max_rows: int) -> InferRequest:
    if inp.get("name") != spec.name:
        raise ProtocolError(f"the input must be named {spec.name!r}; got "
                            f"{inp.get('name')!r:.40}", reason="protocol")
    if inp.get("datatype") != "FP32":
        raise ProtocolError(f"input datatype must be 'FP32'; got {inp.get('datatype')!r:.40}. "
                            "Send float32 values", reason="dtype")
    shape = _shape(inp, spec, max_rows)
    x, used = _tensor(inp, shape, binary, maybe_bool=b"true" in head or b"false" in head)
    if used != len(binary):
        raise ProtocolError(f"{len(binary) - used} binary bytes follow the JSON header that no "
                            "input claims", reason="protocol")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("request 'parameters' must be an object", reason="protocol")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError(f"request 'id' must be a string; got {type(rid).__name__}",
                            reason="protocol")
    return InferRequest(x=x, outputs=_outputs(params, doc.get("outputs")), id=rid,
                        fdr=_fdr(params))


def _count_values(data: Any) -> int:
    """The leaves of a nested JSON list (0 for anything else), one level at a time: the
    nesting is at most MAX_JSON_DEPTH deep by then, so at most that many C-speed passes."""
    if not isinstance(data, list):
        return 0
    count, level = 0, data
    while level:
        lists = [v for v in level if isinstance(v, list)]
        count += len(level) - len(lists)
        level = list(itertools.chain.from_iterable(lists))
    return count


def carried_rows(inp: Mapping[str, Any], binary: bytes, spec: InputSpec) -> int:
    """How many samples an input tensor object carries, whatever its ``shape`` claims.

    The whole samples in its ``data`` (with the binary extension: in the bytes after the JSON
    header, 4 per FP32 value), at least 1. A refusal counts this, never the claimed shape,
    which costs a client nothing to inflate.
    """
    params = inp.get("parameters")
    if isinstance(params, dict) and "binary_data_size" in params:
        values = len(binary) // 4
    else:
        values = _count_values(inp.get("data"))
    per_sample = max(1, math.prod(spec.shape))
    return max(1, values // per_sample)


def _column(result: CheckResult, name: str) -> np.ndarray:
    arr = result.features if name == "features" else getattr(result, name)
    return np.ascontiguousarray(arr, dtype=OUTPUTS[name][1])


def _json_values(arr: np.ndarray) -> list[Any]:
    """Flat JSON-safe values: ±inf becomes ± the dtype's largest finite value (order kept,
    so ``score`` stays "higher = more OOD"), NaN becomes ``null``; RFC 8259 has neither."""
    flat = arr.ravel()
    if flat.dtype.kind != "f" or np.isfinite(flat).all():
        return flat.tolist()
    big = float(np.finfo(flat.dtype).max)
    values: list[Any] = np.clip(flat, -big, big).tolist()
    for i in np.flatnonzero(np.isnan(flat)).tolist():
        values[i] = None
    return values


def encode_response(
    model: str, request: InferRequest, result: CheckResult
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (content type, and the JSON header's length when any
    output is binary). JSON outputs are strict RFC 8259 JSON: a non-finite value (score +inf and
    NaN features of a non-finite input row) is sent as described in :func:`_json_values`;
    binary outputs carry the IEEE values unchanged."""
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
            out["data"] = _json_values(arr)
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    head = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return b"".join([head, *blobs]), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }
