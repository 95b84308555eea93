"""The one place that reads prometheus_client's private attributes, for the versions in
:data:`SUPPORTED`.

prometheus_client has no public way to observe many values in one histogram child, to ask
whether it writes multiprocess files, or to ask whether it exposes ``_created`` series. The
guard needs all three (see :mod:`oodguard.metrics`), so they are read here and nowhere else.
Each accessor degrades safely when an attribute is gone: a histogram child without its
internals is observed value by value, a missing mode flag means single-process, and
``_created`` series stay on (the library's default). ``tests/test_metrics.py`` pins the
installed version inside :data:`SUPPORTED`; widen it only after the tests pass on the new one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import prometheus_client
import prometheus_client.metrics
from prometheus_client import values

from oodguard.extras import require_version

__all__ = [
    "SUPPORTED",
    "HistogramInternals",
    "check_version",
    "created_series_enabled",
    "histogram_internals",
    "multiprocess_mode",
]

#: prometheus_client versions whose private attributes this module was checked against
SUPPORTED = ((0, 17), (0, 27))  # [from, to)


class HistogramInternals(NamedTuple):
    """A histogram child's bucket bounds, bucket values and sum value (each value object has
    ``inc``, and backs both single-process and multiprocess mode)."""

    bounds: Any
    buckets: Any
    total: Any


def check_version(version: str | None = None) -> str:
    """The installed prometheus_client's version (or ``version``), if :data:`SUPPORTED`;
    else a MissingDependencyError naming the range (see the module docstring)."""
    if version is None:
        from importlib.metadata import version as installed

        version = installed("prometheus_client")
    return require_version("prometheus_client", version, SUPPORTED, user="oodguard's metrics",
                           why="they read prometheus_client's private attributes",
                           extra="cpu")


def histogram_internals(child: Any) -> HistogramInternals | None:
    """The internals of a ``Histogram`` child, or None where this version lacks them."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None:
        return None
    return HistogramInternals(bounds, buckets, total)


def multiprocess_mode() -> bool:
    """Whether prometheus_client writes values to per-process files (decided at its import,
    from ``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def created_series_enabled() -> bool:
    """Whether counters and histograms expose ``_created`` series
    (``PROMETHEUS_DISABLE_CREATED_SERIES`` turns them off)."""
    return bool(getattr(prometheus_client.metrics, "_use_created", True))
