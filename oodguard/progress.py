"""Progress bars for the offline stages (training, attractor discovery, export, calibration).

A bar is drawn (tqdm, on stderr) only when asked (``progress=True``) or, by default, when
stderr is a terminal and the stage's logger is enabled for INFO: ``oodguard -q`` (WARNING),
a pipe, a log file, CI and a library caller who configured no logging get no bar. Without
tqdm installed there is no bar either; the runtime never imports this module.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["Bar", "progress_bar", "wants_progress"]


def wants_progress(log: logging.Logger, progress: bool | None = None) -> bool:
    """Whether to draw a bar: ``progress`` when given, else stderr is a terminal and ``log``
    would print INFO."""
    if progress is not None:
        return progress
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) and log.isEnabledFor(logging.INFO)


class Bar:
    """A bar that draws nothing (the same methods as the tqdm bar used)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_description_str(self, desc: str) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int, desc: str, log: logging.Logger, *, progress: bool | None = None,
                 unit: str = "it") -> Any:
    """A tqdm bar on stderr, or a :class:`Bar` that draws nothing (see :func:`wants_progress`).
    Use it as a context manager."""
    if not wants_progress(log, progress):
        return Bar()
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety; the work does not depend on it
        return Bar()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True)
