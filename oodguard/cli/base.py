"""What every command shares: the command registry, the help formatter, optional imports and
argument types."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from oodguard.extras import INSTALL_HINT, optional

__all__ = ["COMMANDS", "HelpFormatter", "Command", "alpha_arg", "command", "count_arg",
           "probability_arg", "optional", "positive_arg", "INSTALL_HINT"]

Handler = Callable[[argparse.Namespace], int]



@dataclass(frozen=True)
class Command:
    name: str
    setup: Callable[[argparse.ArgumentParser], None]
    run: Handler

    @property
    def summary(self) -> str:
        return (self.run.__doc__ or "").strip().splitlines()[0]


# In the order the help lists them: the pipeline first, then the runtime.
COMMANDS: dict[str, Command] = {}


def command(
    name: str, setup: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Handler], Handler]:
    """Register a subcommand: ``setup`` adds its arguments, the decorated function runs it;
    the first line of its docstring is the command's one-line help."""

    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Command(name, setup, fn)
        return fn

    return register


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and appends ``(default: …)`` to every option that
    has a meaningful default (not None, not False, not already stated in its help)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default == argparse.SUPPRESS
                or "default" in text or "%(default)" in text
                or (not action.option_strings and action.nargs not in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)"


def alpha_arg(value: str) -> float:
    """An ``--alpha`` value: a number in (0, 1)."""
    try:
        alpha = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value!r}") from None
    if not 0.0 < alpha < 1.0:
        raise argparse.ArgumentTypeError(f"alpha must lie in (0, 1), got {value}")
    return alpha


def tail_share_arg(value: str) -> float:
    """A ``--minor-tail`` value: a share in (0, 0.5]."""
    try:
        share = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number in (0, 0.5], got {value!r}") from None
    if not 0.0 < share <= 0.5:
        raise argparse.ArgumentTypeError(f"must lie in (0, 0.5], got {value}")
    return share


def probability_arg(value: str) -> float:
    """A probability in (0, 1) (``--false-alarm``, ``--drift-false-alarm``)."""
    try:
        return alpha_arg(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a probability in (0, 1); got {value!r}") from None


def count_arg(value: str) -> int:
    """A positive integer (batch sizes, row counts, epochs)."""
    n = int(value) if value.strip().isdigit() else 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def positive_arg(value: str) -> float:
    """A positive finite number (``--scale``)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}") from None
    if not 0.0 < x < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return x
