"""The ``oodguard`` command line: ``demo``, ``info``, ``check``, ``serve``.

Environment variables are read here (the edge), never inside the library.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(
    name: str, setup: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Handler], Handler]:
    """Register a subcommand: ``setup`` adds its arguments, the decorated function runs it."""

    def register(fn: Handler) -> Handler:
        _COMMANDS[name] = (setup, fn)
        return fn

    return register


def _optional(module: str, command: str, extra: str) -> Any:
    """Import the module behind a command that needs a pip extra; without it, a
    MissingDependencyError (exit 2) that names the extra to install."""
    from oodguard.errors import MissingDependencyError

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"needs the {extra.split(',')[0]} extra: pip install 'oodguard[{extra}]' ({err})"
        ) from err


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("oodguard-demo"), help="output folder")
    p.add_argument("--steps", type=int, default=32, help="latent steps T fused into the graph")
    p.add_argument("--alpha", type=float, default=0.05, help="target false-positive rate")
    p.add_argument("--epochs", type=int, default=400, help="autoencoder training epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corruption", choices=("noise", "mask"), default="noise",
                   help="training corruption: Gaussian noise (denoising) or MAE-like masking")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--resample", type=int, default=20,
                   help="re-drawn validation/test splits for the variance check (0: skip)")


@command("demo", _demo_args)
def _demo(a: argparse.Namespace) -> int:
    """Train, export, calibrate and evaluate on scikit-learn's digits; print the table."""
    run_demo = _optional("oodguard.demo.run", "demo", "demo,cpu").run_demo
    run_demo(a.out, steps=a.steps, alpha=a.alpha, epochs=a.epochs, seed=a.seed,
             plots=not a.no_plots, resample=a.resample, corruption=a.corruption)
    return 0


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path)


@command("info", _info_args)
def _info(a: argparse.Namespace) -> int:
    """Verify a bundle and print its manifest."""
    from oodguard.bundle import read_bundle

    b = read_bundle(a.bundle)
    doc = b.manifest.to_dict()
    doc["calibrated"] = b.calibrated
    print(json.dumps(doc, indent=2))
    return 0


def _inputs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", type=Path, help=".npy, .npz, IDX file or image folder")
    p.add_argument("--key", help="array name inside an .npz")
    p.add_argument("--scale", type=float, default=None,
                   help="divide the values by this (e.g. 255 for uint8 images), as in training")


def _load_inputs(a: argparse.Namespace, shape: tuple[int, ...]) -> Any:
    """Load the inputs file; scale; reshape flat rows to the bundle's sample shape.

    Integer data without ``--scale`` is refused by the guard's dtype check, on purpose: the
    autoencoder was trained on scaled floats.
    """
    import numpy as np

    if a.inputs.suffix == ".npy":
        x = np.load(a.inputs, allow_pickle=False)
    else:  # .npz, IDX files and image folders (the image loader needs Pillow)
        from oodguard.calibration.data import load_array

        x = load_array(a.inputs, key=a.key)
    if a.scale is not None:
        x = np.asarray(x, dtype=np.float32) / np.float32(a.scale)
    if x.ndim >= 1 and x.shape[1:] != shape and int(np.prod(x.shape[1:])) == int(np.prod(shape)):
        x = x.reshape(len(x), *shape)
    return x


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path)
    _inputs_args(p)
    p.add_argument("--providers", default="auto")


@command("check", _check_args)
def _check(a: argparse.Namespace) -> int:
    """Score a file of inputs; print one JSON line per input."""
    from oodguard.guard import Guard

    guard = Guard.load(a.bundle, providers=a.providers, registry=None)
    r = guard.check(_load_inputs(a, guard.input_spec.shape))
    for i in range(len(r)):
        print(json.dumps({"index": i, "score": float(r.score[i]), "p_value": float(r.p_value[i]),
                          "is_ood": bool(r.is_ood[i])}))
    return 0


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path)
    _inputs_args(p)
    p.add_argument("--alpha", type=float, default=0.05, help="target false-positive rate")
    p.add_argument("--ood", type=Path, help="optional OOD validation inputs (feature selection)")
    p.add_argument("--select", choices=("auto", "all"), default="auto")
    p.add_argument("--out", type=Path,
                   help="write the calibrated bundle here (default: in place, atomically); a "
                        "file or a non-bundle directory is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="allow --out to replace an existing bundle")
    p.add_argument("--seed", type=int, default=0)


@command("calibrate", _calibrate_args)
def _calibrate(a: argparse.Namespace) -> int:
    """Calibrate a bundle on in-distribution validation inputs from a file."""
    calibrate = _optional("oodguard.calibration", "calibrate", "calibrate").calibrate
    from oodguard.bundle import read_bundle

    shape = read_bundle(a.bundle).manifest.input.shape
    x_ood = None
    if a.ood is not None:
        x_ood = _load_inputs(argparse.Namespace(**{**vars(a), "inputs": a.ood}), shape)
    report = calibrate(a.bundle, _load_inputs(a, shape), alpha=a.alpha, x_ood=x_ood,
                       select=a.select, out=a.out, overwrite=a.overwrite, seed=a.seed)
    used = [report.scorer.feature_names[i] for i in report.scorer.used]
    print(json.dumps({"bundle": str(report.path), "alpha": a.alpha, "threshold": report.threshold,
                      "n_fit": report.n_fit, "n_cal": report.n_cal, "features": used}))
    return 0


def _ood_arg(value: str) -> tuple[str, Path]:
    """Parse ``--ood NAME=PATH``."""
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path:
        raise argparse.ArgumentTypeError(
            f"expected NAME=PATH (e.g. --ood noise=noise.npy), got {value!r}")
    return name.strip(), Path(path)


def _alpha_arg(value: str) -> float:
    try:
        alpha = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value!r}") from None
    if not 0.0 < alpha < 1.0:
        raise argparse.ArgumentTypeError(f"alpha must lie in (0, 1), got {value}")
    return alpha


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a calibrated bundle")
    p.add_argument("--in", dest="inputs", type=Path, required=True, metavar="ID",
                   help="in-distribution inputs not used for calibration (.npy, .npz, IDX "
                        "file or image folder)")
    p.add_argument("--ood", type=_ood_arg, action="append", required=True, metavar="NAME=PATH",
                   help="an OOD set (repeat for several)")
    p.add_argument("--out", type=Path, default=Path("oodguard-evaluation"),
                   help="folder for evaluation.json and the plots")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out folder that is not a previous evaluation")
    p.add_argument("--alpha", type=_alpha_arg, help="target false-positive rate "
                   "(default: the calibrated one)")
    p.add_argument("--key", help="array name inside .npz files")
    p.add_argument("--scale", type=float, default=None,
                   help="divide the values by this (e.g. 255 for uint8 images), as in training")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--providers", default="auto")


def _evaluation_out(out: Path, overwrite: bool) -> str | None:
    """Why ``out`` must not be written to, or None. A previous evaluation (its
    ``evaluation.json`` carries the ``oodguard_evaluation`` marker) may be replaced."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder"
    if not out.is_dir() or overwrite or not any(out.iterdir()):
        return None
    try:
        previous = json.loads((out / "evaluation.json").read_text())
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and "oodguard_evaluation" in previous:
        return None
    return (f"--out {out} is a non-empty folder that holds no previous evaluation; "
            "pick another folder or pass --overwrite to write into it")


@command("evaluate", _evaluate_args)
def _evaluate(a: argparse.Namespace) -> int:
    """Measure detection (AUROC, AUPR, FPR95, the calibrated operating point) on your data."""
    from oodguard.bundle import read_bundle
    from oodguard.errors import NotCalibratedError

    names = [name for name, _ in a.ood]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        print(f"oodguard evaluate: --ood names must be unique; {dup} given more than once",
              file=sys.stderr)
        return 2
    problem = _evaluation_out(a.out, a.overwrite)
    if problem:
        print(f"oodguard evaluate: {problem}", file=sys.stderr)
        return 2
    for flag, path in [("--in ", a.inputs)] + [(f"--ood {n}=", p) for n, p in a.ood]:
        if not path.exists():
            raise FileNotFoundError(f"{flag}{path}: no such file or folder")
    ev = _optional("oodguard.calibration.evaluate", "evaluate", "calibrate")
    if not a.no_plots:
        plots = _optional("oodguard.calibration.evaluation_plots", "evaluate", "demo")
        _optional("matplotlib", "evaluate", "demo")
    bundle = read_bundle(a.bundle)
    if not bundle.calibrated:
        raise NotCalibratedError(
            f"bundle {a.bundle} is not calibrated; run `oodguard calibrate {a.bundle} "
            "VALIDATION_INPUTS` first, then evaluate")
    shape = bundle.manifest.input.shape
    logging.getLogger(__name__).info("loading %s and %d OOD set(s)", a.inputs, len(a.ood))
    x_in = _load_inputs(a, shape)
    ood = {n: _load_inputs(argparse.Namespace(**{**vars(a), "inputs": p}), shape)
           for n, p in a.ood}
    from oodguard.guard import Guard

    guard = Guard(bundle, providers=a.providers, registry=None)
    report = ev.evaluate(guard, x_in, ood, alpha=a.alpha)
    doc = report.to_dict()
    doc["inputs"] = {"bundle": str(a.bundle), "in": str(a.inputs),
                     "ood": {n: str(p) for n, p in a.ood}, "scale": a.scale}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "evaluation.json").write_text(json.dumps(doc, indent=2) + "\n")
    written = [a.out / "evaluation.json"]
    if not a.no_plots:
        written += plots.plot_evaluation(report, a.out)
    print(report.table())
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    p.add_argument("--name", default="default", help="guard and v2 model name")
    p.add_argument("--max-batch", type=int, default=64, help="most rows per coalesced call")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="longest a request waits for others to join its batch (0: batch "
                        "only what queued while the previous batch ran)")
    p.add_argument("--no-batching", action="store_true", help="score each request on its own")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    p.add_argument("--max-request-rows", type=int, default=4096)
    p.add_argument("--body-timeout-s", type=float, default=30.0,
                   help="a body not received within this time gets 408 (slow uploads)")
    p.add_argument("--max-inflight-body-bytes", type=int, default=64 * 1024 * 1024,
                   help="budget for all request bodies held at once; beyond it: 503")
    p.add_argument("--graceful-timeout-s", type=float, default=30.0,
                   help="after SIGTERM, how long in-flight requests may take to finish")
    p.add_argument("--token-env", metavar="VAR",
                   help="require 'Authorization: Bearer $VAR' on /v2/models/* routes")
    p.add_argument("--providers", default="auto")
    p.add_argument("--alpha", type=float, help="target false-positive rate (default: calibrated)")


@command("serve", _serve_args)
def _serve(a: argparse.Namespace) -> int:
    """Serve a bundle over HTTP (Open Inference Protocol v2, /metrics) until SIGTERM."""
    import os

    server = _optional("oodguard.server", "serve", "serve,cpu")
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
                             max_inflight_body_bytes=a.max_inflight_body_bytes,
                             graceful_timeout_s=a.graceful_timeout_s)
    except ValueError as err:
        print(f"oodguard serve: {err}", file=sys.stderr)
        return 2
    # prometheus_client reads PROMETHEUS_MULTIPROC_DIR itself when first imported; /metrics
    # then aggregates every process's files instead of this process's registry.
    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry = multiprocess_registry(mp_dir) if mp_dir else DEFAULT_REGISTRY
    guard = Guard.load(a.bundle, providers=a.providers, name=a.name, alpha=a.alpha)
    serve(guard, config, registry=registry, announce=lambda msg: print(msg, flush=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oodguard", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (setup, fn) in _COMMANDS.items():
        setup(sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0]))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from oodguard.errors import MissingDependencyError, OODGuardError

    try:
        return _COMMANDS[args.command][1](args)
    except MissingDependencyError as err:  # an install problem, not a data problem
        print(f"oodguard {args.command}: {err}", file=sys.stderr)
        return 2
    except (OODGuardError, OSError, ValueError) as err:
        print(f"oodguard {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
