"""The ``oodguard`` command line.

Environment variables are read here (the edge), never inside the library. Each command lives
with its kin: :mod:`oodguard.cli.offline` (demo, calibrate, evaluate) and
:mod:`oodguard.cli.runtime` (info, check, serve).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from oodguard._version import __version__
from oodguard.cli import (  # noqa: F401  (registers the commands)
    drift_cmd,
    fit_cmd,
    inspect_cmd,
    offline,
    runtime,
    score,
)
from oodguard.cli.base import COMMANDS, Command, HelpFormatter

__all__ = ["build_parser", "main"]

_DESCRIPTION = """\
oodguard: an out-of-distribution guard from the latent dynamics of an autoencoder.

A bundle (model.onnx, calibration.json, manifest.json) is exported from a trained autoencoder
in Python (oodguard.export.export_bundle), calibrated (oodguard calibrate), then checks inputs
(oodguard check) or serves them over HTTP (oodguard serve). Without an autoencoder, oodguard
fit trains one on your data, exports and calibrates it. oodguard demo runs the whole pipeline
on scikit-learn's digits.

commands:
{commands}

Run oodguard COMMAND --help for a command's options."""


# The pipeline's order: make a bundle, calibrate it, measure it, use it.
_ORDER = ("demo", "fit", "calibrate", "evaluate", "check", "score", "serve", "drift",
          "inspect", "info")


def _ordered() -> list[Command]:
    return sorted(COMMANDS.values(),
                  key=lambda c: _ORDER.index(c.name) if c.name in _ORDER else len(_ORDER))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered command."""
    width = max(len(name) for name in COMMANDS)
    listing = "\n".join(f"  {c.name:<{width}}  {c.summary}" for c in _ordered())
    parser = argparse.ArgumentParser(
        prog="oodguard", description=_DESCRIPTION.format(commands=listing),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"oodguard {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="warnings and errors only: no progress bars or step messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of the commands above")
    for c in _ordered():
        doc = (c.run.__doc__ or "").strip()
        c.setup(sub.add_parser(c.name, help=c.summary, description=doc,
                               formatter_class=HelpFormatter))
    return parser


def _bars_and_logs_share_stderr(quiet: bool) -> contextlib.AbstractContextManager[Any]:
    """Log lines printed above a progress bar instead of through it (tqdm's redirect);
    nothing to do under ``-q`` (no bars) or without tqdm."""
    if quiet:
        return contextlib.nullcontext()
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm
    except ImportError:
        return contextlib.nullcontext()
    return logging_redirect_tqdm()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from oodguard.errors import MissingDependencyError, OODGuardError

    try:
        with _bars_and_logs_share_stderr(args.quiet):
            return COMMANDS[args.command].run(args)
    except MissingDependencyError as err:  # an install problem, not a data problem
        print(f"oodguard {args.command}: {err}", file=sys.stderr)
        return 2
    except (OODGuardError, OSError, ValueError) as err:
        print(f"oodguard {args.command}: {err}", file=sys.stderr)
        return 1
