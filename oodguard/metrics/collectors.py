"""The collectors behind the guard's metrics in single-process mode (see
:mod:`oodguard.metrics`): histograms observed a batch at a time (:class:`BatchHistogram`) and
per-guard series kept as plain Python numbers under the guard's one lock (:class:`PlainFamily`).
Both expose exactly what ``prometheus_client``'s ``Counter`` and ``Histogram`` would (tested)."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from oodguard.metrics.prometheus_adapter import created_series_enabled, histogram_internals

__all__ = ["FOLD_BATCHES", "FOLD_VALUES", "BatchHistogram", "PlainFamily", "observe_many"]

_LOOP_MAX = 8  # below this many values, plain observe() beats numpy's fixed cost
_INF = float("inf")


def observe_many(child: Any, values: np.ndarray) -> None:
    """Observe many values in one histogram child; the same exposition as ``observe`` per value.

    prometheus_client has no batch observe, and looping ``observe`` costs about a microsecond
    per value, which would dominate the guard at batch 256, while numpy's fixed cost dominates
    at batch 1. Up to ``_LOOP_MAX`` values are observed one by one; more are counted per bucket
    with one increment each, and the batch's sum (added left to right, as ``observe`` would:
    ``np.cumsum`` is sequential, unlike ``np.sum``) is added to the running sum with one atomic
    ``inc``. So counts are identical to per-value ``observe`` and the sum equal up to float
    rounding of the running total (tested), including NaN (no bucket, NaN sum) and ±inf, and
    concurrent callers never lose an update. It writes through the child's own value objects,
    which also back multiprocess mode.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    internals = histogram_internals(child)
    if len(values) <= _LOOP_MAX or internals is None:
        for v in values.tolist():
            child.observe(v)
        return
    bounds, buckets, total = internals
    # observe() puts v in the first bucket with v <= bound; NaN compares false everywhere.
    idx = np.searchsorted(np.asarray(bounds, dtype=np.float64), values[~np.isnan(values)],
                          side="left")
    counts = np.bincount(idx, minlength=len(bounds))
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf is NaN, as in observe
        total.inc(float(np.cumsum(values)[-1]))
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))


# A series queues the batches it is given and folds them into its bucket counts when it is
# scraped, or once this many batches or values wait (which bounds the memory they hold).
FOLD_BATCHES = 1024
FOLD_VALUES = 1 << 16


class _BatchChild:
    """One labelled series of a :class:`BatchHistogram`.

    ``observe_many`` only queues a private copy of the values (one lock, one copy, one list
    append); the bucket counts and the sum are brought up to date, in one vectorised pass over
    everything queued, by :meth:`snapshot` (every scrape) or once ``FOLD_BATCHES`` batches or
    ``FOLD_VALUES`` values wait. A scrape therefore sees every value observed before it, and
    the guard's hot path does none of the bucketing.
    """

    __slots__ = ("_bounds", "_counts", "_sum", "_lock", "_queued", "_queued_values",
                 "created", "offset", "scale")

    def __init__(self, bounds: np.ndarray, lock: threading.Lock | None = None,
                 offset: float = 0.0, scale: float = 1.0) -> None:
        # values are bucketed in their own units against bounds mapped there (e ▶ offset + e·s)
        self._bounds = bounds if (offset, scale) == (0.0, 1.0) else offset + scale * bounds
        self.offset, self.scale = offset, scale
        # one slot past the +Inf bucket: searchsorted puts NaN there, and NaN counts nowhere
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock() if lock is None else lock
        self._queued: list[np.ndarray] = []
        self._queued_values = 0
        self.created = time.time()

    def observe_many(self, values: np.ndarray) -> None:
        """Observe every value of a 1-D float array (NaN: no bucket, NaN sum, as ``observe``)."""
        v = np.array(values, dtype=np.float64)  # a copy: the caller may change its array later
        with self._lock:
            self.add_locked(v)

    def add_locked(self, v: np.ndarray) -> None:
        """Queue a private 1-D float64 array; the caller holds this series' lock (the guard's
        one lock, see :class:`PlainFamily`) and gives up the array."""
        self._queued.append(v)
        self._queued_values += len(v)
        if len(self._queued) >= FOLD_BATCHES or self._queued_values >= FOLD_VALUES:
            self._fold()

    def _fold(self) -> None:
        """Bring counts and sum up to date with the queue (the lock is held)."""
        if not self._queued:
            return
        queued, self._queued, self._queued_values = self._queued, [], 0
        # observe() puts v in the first bucket with v <= bound, which is searchsorted "left".
        v = queued[0] if len(queued) == 1 else np.concatenate(queued)
        self._counts += np.bincount(np.searchsorted(self._bounds, v, side="left"),
                                    minlength=len(self._counts))
        # The running sum continued left to right, in the order the batches were queued
        # (cumsum is sequential, np.sum pairwise): it equals observe()'s bit for bit.
        with np.errstate(over="ignore", invalid="ignore"):  # inf - inf is NaN, as observe
            self._sum = float(np.cumsum(np.concatenate(([self._sum], v)))[-1])

    def snapshot(self) -> tuple[np.ndarray, float]:
        with self._lock:
            self._fold()
            return self._counts[:-1].copy(), self._sum


class BatchHistogram:
    """A histogram family with one label, ``guard``, fed a whole batch per call.

    A collector (``registry.register``), not a ``prometheus_client.Histogram``: the counts live
    in a numpy array per series, one lock is taken per batch instead of one per touched bucket,
    and the bucketing itself waits for the scrape (see ``_BatchChild``). The exposition
    (``_bucket``, ``_count``, ``_sum`` — left out when the first bound is negative, as
    ``Histogram`` does — and ``_created``) is that of a ``Histogram`` observed value by value.
    Single-process mode only (see the module docstring).
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds or bounds != sorted(bounds) or np.isnan(bounds).any():
            raise ValueError(f"buckets must be sorted and non-empty; got {buckets!r}")
        if bounds[-1] != _INF:
            bounds.append(_INF)
        self.name, self.documentation = name, documentation
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._les = [floatToGoString(b) for b in bounds]
        self._children: dict[str, _BatchChild] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, guard: str, lock: threading.Lock | None = None, *, offset: float = 0.0,
               scale: float = 1.0) -> _BatchChild:
        """The series of ``guard``; a new one takes ``lock`` (default: a lock of its own). With
        ``offset``/``scale`` it takes raw values ``v`` and exposes them as
        ``(v − offset) / scale`` on the family's buckets (the bucketing is done in raw units,
        so observing costs the same); a later call returns the first one's series unchanged."""
        if not (np.isfinite(offset) and np.isfinite(scale) and scale > 0):
            raise ValueError(f"offset must be finite and scale finite and > 0; got {offset!r}, "
                             f"{scale!r}")
        with self._lock:
            child = self._children.get(guard)
            if child is None:
                child = self._children[guard] = _BatchChild(self._bounds, lock, offset, scale)
            return child

    def renew_locks(self, renewed: dict[int, threading.Lock]) -> None:
        """After ``fork()``, in the child: fresh locks for the family and its series (a series
        sharing a guard's lock gets ``renewed[id(old lock)]``)."""
        self._lock = threading.Lock()
        for child in self._children.values():
            child._lock = renewed.get(id(child._lock)) or threading.Lock()

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=["guard"])]

    def collect(self) -> Iterator[Metric]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=["guard"])
        # prometheus_client's switch for _created series (env PROMETHEUS_DISABLE_CREATED_SERIES
        # or disable_created_metrics()); read at scrape time, as its own metrics do.
        created = created_series_enabled()
        with self._lock:
            children = list(self._children.items())
        for guard, child in children:
            counts, total = child.snapshot()
            cum = np.cumsum(counts).tolist()
            if (child.offset, child.scale) != (0.0, 1.0):
                total = (total - cum[-1] * child.offset) / child.scale
            with_sum = self._bounds[0] >= 0
            fam.add_metric(
                [guard],
                [(le, float(c)) for le, c in zip(self._les, cum, strict=True)],
                sum_value=total if with_sum else None,
            )
            if not with_sum:  # add_metric writes _count only together with _sum
                fam.add_sample(self.name + "_count", {"guard": guard}, float(cum[-1]))
            if created:
                fam.add_sample(self.name + "_created", {"guard": guard}, child.created)
        yield fam


class _PlainSeries:
    """One series of a :class:`PlainFamily`: a counter's value (``total``), or a histogram's
    bucket counts and sum, as Python numbers, guarded by the lock of the guard it belongs to."""

    __slots__ = ("bounds", "counts", "total", "lock", "created")

    def __init__(self, bounds: list[float] | None, lock: threading.Lock) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds) if bounds is not None else []
        self.total = 0.0
        self.lock = lock
        self.created = time.time()

    def observe(self, v: float) -> None:
        """``Histogram.observe``: the sum, then the first bucket with ``v <= bound`` (none for
        NaN). The lock is held."""
        self.total += v
        if v == v and self.bounds is not None:
            self.counts[bisect_left(self.bounds, v)] += 1


class PlainFamily:
    """A counter (``buckets=None``) or histogram family of plain Python series; single-process
    mode only. A guard's series share one lock, so that recording a check takes one lock
    instead of one per value object (prometheus_client's ``Counter`` and ``Histogram`` take
    about ten per check). The exposition is that of a ``prometheus_client`` ``Counter`` or
    ``Histogram`` observed the same way (tested)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry, buckets: Sequence[float] | None = None) -> None:
        self.name, self.documentation = name, documentation
        self._labelnames = list(labelnames)
        self._bounds: list[float] | None = None
        self._with_sum = True  # as Histogram: no _sum (nor _count) with a negative bucket
        if buckets is not None:
            bounds = [float(b) for b in buckets]
            if bounds[-1] != _INF:
                bounds.append(_INF)
            self._bounds = bounds
            self._les = [floatToGoString(b) for b in bounds]
            self._with_sum = bounds[0] >= 0
        self._children: dict[tuple[str, ...], _PlainSeries] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, *values: str, lock: threading.Lock) -> _PlainSeries:
        """The series of these label values; a new one takes ``lock``."""
        with self._lock:
            child = self._children.get(values)
            if child is None:
                child = self._children[values] = _PlainSeries(self._bounds, lock)
            return child

    def renew_locks(self, renewed: dict[int, threading.Lock]) -> None:
        """After ``fork()``, in the child: as :meth:`BatchHistogram.renew_locks`."""
        self._lock = threading.Lock()
        for child in self._children.values():
            child.lock = renewed.get(id(child.lock)) or threading.Lock()

    def _family(self) -> CounterMetricFamily | HistogramMetricFamily:
        if self._bounds is None:
            return CounterMetricFamily(self.name, self.documentation, labels=self._labelnames)
        return HistogramMetricFamily(self.name, self.documentation, labels=self._labelnames)

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        fam = self._family()
        created = created_series_enabled()
        with self._lock:
            children = list(self._children.items())
        for label_values, child in children:
            with child.lock:
                counts, total = list(child.counts), child.total
            labels = dict(zip(self._labelnames, label_values, strict=True))
            if isinstance(fam, CounterMetricFamily):
                fam.add_metric(list(label_values), total,
                               created=child.created if created else None)
                continue
            cum, acc = [], 0.0
            for c in counts:
                acc += c
                cum.append(acc)
            with_sum = self._with_sum
            fam.add_metric(list(label_values), list(zip(self._les, cum, strict=True)),
                           sum_value=total if with_sum else None)
            if not with_sum:  # add_metric writes _count only together with _sum
                fam.add_sample(self.name + "_count", labels, cum[-1])
            if created:
                fam.add_sample(self.name + "_created", labels, child.created)
        yield fam
