"""The runtime commands: ``info``, ``check`` and ``serve`` (numpy + onnxruntime; ``serve``
adds the serve extra)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from oodguard.cli.base import alpha_arg, command, optional, probability_arg
from oodguard.cli.inputs import Inputs, add_input_args, load_inputs

__all__ = ["calibrated_bundle", "result_rows"]

_PROVIDERS_HELP = ("ONNX Runtime execution providers: auto (CUDA when available, else CPU), "
                   "cpu or cuda")
_OUTPUT_FIELDS = ("index", "source", "row", "score", "p_value", "is_ood")


def calibrated_bundle(path: Path, command_name: str) -> Any:
    """Read the bundle; an uncalibrated one is refused with the command that calibrates it."""
    from oodguard.bundle import read_bundle
    from oodguard.errors import NotCalibratedError

    bundle = read_bundle(path)
    if not bundle.calibrated:
        raise NotCalibratedError(
            f"bundle {path} is not calibrated (it has no calibration.json); run "
            f"oodguard calibrate {path} VAL.npy on in-distribution validation inputs first, "
            f"then oodguard {command_name}"
        )
    return bundle


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle directory")


@command("info", _info_args)
def _info(a: argparse.Namespace) -> int:
    """Verify a bundle (hashes, schema, ONNX signature) and print its manifest as JSON."""
    from oodguard.bundle import read_bundle

    b = read_bundle(a.bundle)
    doc = b.manifest.to_dict()
    doc["calibrated"] = b.calibrated
    print(json.dumps(doc, indent=2))
    return 0


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a calibrated bundle directory")
    add_input_args(p)
    p.add_argument("--alpha", type=alpha_arg,
                   help="target false-positive rate of the verdict (default: the calibrated "
                        "one)")
    p.add_argument("--output", "-o", type=Path, metavar="FILE",
                   help="write the results to FILE instead of stdout: .jsonl (one JSON object "
                        "a line) or .csv, by extension")
    p.add_argument("--providers", default="auto", help=_PROVIDERS_HELP)


def _finite(v: float) -> float | None:
    """JSON has no Infinity or NaN: a non-finite score (a row holding NaN/inf, always OOD)
    is written as null."""
    return v if math.isfinite(v) else None


def result_rows(inputs: Inputs, result: Any) -> Iterator[dict[str, Any]]:
    """One dict per input: index, source file (an image's own file in a folder), row in that
    file (None for images), score (None when not finite), p_value, is_ood."""
    for i in range(len(result)):
        yield {"index": i, "source": inputs.sources[i], "row": inputs.rows[i],
               "score": _finite(float(result.score[i])),
               "p_value": float(result.p_value[i]), "is_ood": bool(result.is_ood[i])}


def _output_format(path: Path) -> str:
    fmt = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"--output {path}: name the file .jsonl or .csv to pick the format")
    if path.is_dir():
        raise IsADirectoryError(f"--output {path} is a folder; name a .jsonl or .csv file")
    return fmt


def _write(rows: Iterator[dict[str, Any]], fh: IO[str], fmt: str) -> None:
    if fmt == "csv":
        writer = csv.DictWriter(fh, fieldnames=_OUTPUT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "row": "" if r["row"] is None else r["row"],
                             "score": "" if r["score"] is None else r["score"]})
        return
    for r in rows:
        fh.write(json.dumps(r, allow_nan=False) + "\n")


@command("check", _check_args)
def _check(a: argparse.Namespace) -> int:
    """Score a file of inputs: one result per input (JSON lines on stdout, or --output)."""
    from oodguard.guard import Guard

    fmt = _output_format(a.output) if a.output is not None else "jsonl"
    bundle = calibrated_bundle(a.bundle, "check")
    guard = Guard(bundle, providers=a.providers, registry=None, alpha=a.alpha)
    inputs = load_inputs(a.inputs, a, guard.input_spec.shape)
    result = guard.check(inputs.x)  # the library's validation, unchanged
    if a.output is None:
        _write(result_rows(inputs, result), sys.stdout, fmt)
        return 0
    tmp = a.output.with_name(f".{a.output.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        _write(result_rows(inputs, result), fh, fmt)
    os.replace(tmp, a.output)  # a reader never sees half a file
    print(f"wrote {len(result)} results to {a.output} ({result.n_ood} OOD at "
          f"alpha={guard.alpha:g})", file=sys.stderr)
    return 0


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a calibrated bundle directory")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one "
                   "(printed)")
    p.add_argument("--name", default="default", help="guard and v2 model name")
    p.add_argument("--max-batch", type=int, default=64, help="most rows per coalesced call")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="longest a request waits for others to join its batch (0: batch "
                        "only what queued while the previous batch ran)")
    p.add_argument("--no-batching", action="store_true", help="score each request on its own")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024,
                   help="largest request body; beyond it: 413")
    p.add_argument("--max-request-rows", type=int, default=4096,
                   help="most rows in one request; beyond it: 413")
    p.add_argument("--body-timeout-s", type=float, default=30.0,
                   help="a body not received within this time gets 408 (slow uploads)")
    p.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="a connection whose request headers take longer is closed (slowloris)")
    p.add_argument("--max-inflight-body-bytes", type=int, default=64 * 1024 * 1024,
                   help="budget for all request bodies held at once; beyond it: 503")
    p.add_argument("--graceful-timeout-s", type=float, default=30.0,
                   help="after SIGTERM, how long in-flight requests may take to finish")
    p.add_argument("--token-env", metavar="VAR",
                   help="require 'Authorization: Bearer $VAR' on /v2/models/* routes")
    p.add_argument("--providers", default="auto", help=_PROVIDERS_HELP)
    p.add_argument("--alpha", type=alpha_arg,
                   help="target false-positive rate (default: the calibrated one)")
    p.add_argument("--drift-false-alarm", type=_drift_arg, default=0.05, metavar="EPS",
                   help="watch the stream for drift with a false-alarm probability EPS over "
                        "an unbounded stream (oodguard_drift_* metrics, docs/drift.md); "
                        "'off' watches nothing (default: 0.05)")
    p.add_argument("--reload-poll-s", type=float, default=2.0, metavar="S",
                   help="check the bundle's manifest every S seconds and swap in a changed "
                        "calibration without a restart (SIGHUP reloads at once; 0: only on "
                        "SIGHUP)")


def _drift_arg(text: str) -> float | None:
    if text.strip().lower() == "off":
        return None
    try:
        return probability_arg(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a probability in (0, 1) or 'off'; got "
                                         f"{text!r}") from None


@command("serve", _serve_args)
def _serve(a: argparse.Namespace) -> int:
    """Serve a bundle over HTTP (Open Inference Protocol v2, /metrics) until SIGTERM."""
    server = optional("oodguard.serve", "serve", "serve,cpu")
    ServeConfig, serve = server.ServeConfig, server.serve
    from oodguard.guard import Guard
    from oodguard.metrics import DEFAULT_REGISTRY, multiprocess_registry

    token = None
    if a.token_env:
        token = os.environ.get(a.token_env, "")
        if not token.strip():
            print(f"oodguard serve: --token-env {a.token_env}: that variable is unset or empty",
                  file=sys.stderr)
            return 2
    try:
        config = ServeConfig(host=a.host, port=a.port, model_name=a.name,
                             batching=not a.no_batching, max_batch=a.max_batch,
                             max_wait_ms=a.max_wait_ms, max_body_bytes=a.max_body_bytes,
                             max_request_rows=a.max_request_rows, token=token,
                             body_timeout_s=a.body_timeout_s,
                             header_timeout_s=a.header_timeout_s,
                             max_inflight_body_bytes=a.max_inflight_body_bytes,
                             graceful_timeout_s=a.graceful_timeout_s)
    except ValueError as err:
        print(f"oodguard serve: {err}", file=sys.stderr)
        return 2
    # prometheus_client reads PROMETHEUS_MULTIPROC_DIR itself when first imported; /metrics
    # then aggregates every process's files instead of this process's registry.
    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry = multiprocess_registry(mp_dir) if mp_dir else DEFAULT_REGISTRY
    if not a.reload_poll_s >= 0:
        print(f"oodguard serve: --reload-poll-s must be >= 0; got {a.reload_poll_s}",
              file=sys.stderr)
        return 2

    def load(path: Path) -> Guard:
        return Guard(calibrated_bundle(path, "serve"), providers=a.providers, name=a.name,
                     alpha=a.alpha, drift=a.drift_false_alarm)

    live = server.LiveGuard(load(a.bundle))
    watcher = server.BundleWatcher(live, a.bundle, load, poll_s=a.reload_poll_s or None)
    # LiveGuard forwards everything the service reads to the guard it currently serves.
    serve(live, config, registry=registry, announce=lambda msg: print(msg, flush=True),
          watcher=watcher)
    return 0
