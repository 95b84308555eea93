"""Prometheus metrics for a guard; the only runtime module that imports prometheus_client.

Every guard records into a registry the caller passes (default: the global
``prometheus_client.REGISTRY``; ``None`` turns metrics off), labelled by the guard's name only —
a small, fixed label set, never per-input labels. Histograms, not per-index gauges, so that
fractions over any threshold can be read in PromQL and aggregate across replicas.

=========================================== ========= =======================================
metric                                      type      labels
=========================================== ========= =======================================
``oodguard_inputs_total``                   counter   guard, verdict (``in`` / ``ood``)
``oodguard_inputs_refused_total``           counter   guard, reason (dtype, rank, shape, …)
``oodguard_score_normalized``               histogram guard (fixed buckets, see below)
``oodguard_p_value``                        histogram guard (buckets fine near 0)
``oodguard_guard_duration_seconds``         histogram guard, stage (engine / scoring / total)
``oodguard_model_duration_seconds``         histogram guard (the wrapped model)
``oodguard_batch_size``                     histogram guard (samples per call)
``oodguard_bundle_info``                    gauge (1) guard, sha256, calibration_sha256, schema,
                                                      version, steps, alpha
``oodguard_threshold_score``                gauge     guard
``oodguard_guard_failures_total``           counter   guard, kind
``oodguard_http_requests_dropped_total``    counter   guard, reason (server: unauthorized, …)
``oodguard_parity_ok``                      gauge     guard, provider: 1 when the engine
                                                      reproduced the bundle's reference
                                                      features at load, else 0
``oodguard_parity_error_ratio``             gauge     guard: largest difference over its
                                                      allowed bound (≤ 1 is parity)
``oodguard_drift_evidence_log10``           gauge     guard (with ``drift=``; see
``oodguard_drift_alarm``                    gauge     :mod:`oodguard.metrics.drift_metrics`)
``oodguard_drift_alarms_total``             counter   guard
``oodguard_drift_threshold_log10``          gauge     guard
=========================================== ========= =======================================

Every labelled counter starts at 0 for its known label values (the tuples below; the server
adds its own with :meth:`GuardMetrics.init_http`): a series born at 1 has no earlier sample, so
``increase()`` misses the first event and an alert on it never fires. ``bundle_info`` hashes
both ``model.onnx`` (``sha256``) and ``calibration.json``. ``oodguard_score_normalized`` is the
score in units of the bundle's calibration, ``(score − m) / (t − m)`` (:func:`score_scale`; 0 =
median calibration score, 1 = threshold), on buckets every bundle shares, so quantiles add
across guards and rollouts; each series buckets raw scores against bounds mapped to raw units
(``m + e·(t − m)``), which costs the hot path nothing.

``oodguard_http_requests_dropped_total`` counts infer requests the HTTP service answered (or
could not answer) without looking at their inputs: ``unauthorized`` (401), ``body_timeout``
(408), ``overloaded`` (503, in-flight body budget spent), ``disconnect`` (the client left before
its body arrived). They are not input refusals, so a client without a token or a slow network
cannot move ``oodguard_inputs_refused_total`` (and the refusal alert) at will.

Non-finite input rows (``nonfinite="flag"``) are counted as ``verdict="ood"`` and as
``reason="non_finite"`` refusals; their score (+inf) is left out of the score histogram, whose
``_sum`` would otherwise stay infinite for the life of the process.

The two per-input histograms (score, p-value) take a whole batch per call. In the usual
single-process mode they are :class:`BatchHistogram` collectors: a batch is copied and queued
under one lock, and bucketed with numpy, everything queued at once, when the registry is
scraped (or every 1024 batches / 65 536 values). A ``prometheus_client.Histogram`` takes one
lock per touched bucket per increment; on the demo bundle at batch 256 (about 20 buckets
touched) recording a check cost 27 µs that way and 6 µs now. The exposition is the same as a
``Histogram`` observed value by value (tested, sums bit for bit).

The per-check counter and histograms (inputs by verdict, batch size, durations by stage) are,
in single-process mode, :class:`PlainFamily` collectors: a guard's series are plain Python
numbers that one lock guards, so recording a check takes that lock once, together with the two
batch histograms' queues (prometheus_client's values take a lock each: about ten per check,
5.5 µs at batch 1 against 2.3 µs now). Their exposition is that of ``Counter`` and
``Histogram`` (tested).

Multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` is first
imported, every value lives in per-process files; serve ``/metrics`` from
:func:`multiprocess_registry`. A custom collector cannot write those files, so in this mode the
per-input histograms are ``prometheus_client`` histograms fed through :func:`observe_many`.
The bundle info is a gauge set to 1 (``Info`` does not work in multiprocess mode) and both
gauges aggregate with ``multiprocess_mode="max"``, so each series appears once instead of once
per process.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from oodguard.metrics.collectors import BatchHistogram, PlainFamily, observe_many
from oodguard.metrics.drift_metrics import DriftCollector, DriftGauges
from oodguard.metrics.prometheus_adapter import multiprocess_mode

__all__ = [
    "BATCH_BUCKETS",
    "LATENCY_BUCKETS",
    "BatchHistogram",
    "CONTENT_TYPE",
    "DEFAULT_REGISTRY",
    "GuardMetrics",
    "DROP_REASONS",
    "FAILURE_KINDS",
    "HTTP_REFUSAL_REASONS",
    "INFO_KEYS",
    "NORMALIZED_SCORE_BUCKETS",
    "P_VALUE_BUCKETS",
    "REFUSAL_REASONS",
    "VERDICTS",
    "multiprocess_registry",
    "new_registry",
    "observe_many",
    "render_latest",
    "score_scale",
]

log = logging.getLogger(__name__)

DEFAULT_REGISTRY = REGISTRY
# The classic text format, which every Prometheus 2.x parses; our names need none of 1.0.0's
# UTF-8 escaping, so generate_latest's output is valid 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
P_VALUE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
#: edges of ``oodguard_score_normalized`` (0 = median calibration score, 1 = the threshold)
NORMALIZED_SCORE_BUCKETS = (
    -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0,
    10.0, 100.0,
)
#: the label values every counter starts with (at 0), so the first event moves ``increase``
VERDICTS = ("in", "ood")
#: ``InvalidInputError.reason`` of ``Guard.check`` (see oodguard.validation)
REFUSAL_REASONS = ("dtype", "rank", "shape", "type", "non_finite", "group")
#: further refusal reasons of the HTTP service (``ProtocolError.reason``)
HTTP_REFUSAL_REASONS = ("json", "protocol", "batch_size", "body_size", "encoding",
                        "content_type", "model")
#: ``GuardFailure.reason`` and the guard's ``output_nonfinite``
FAILURE_KINDS = ("engine_error", "output_shape", "output_dtype", "output_nonfinite", "timeout",
                 "internal")
#: ``oodguard_http_requests_dropped_total`` reasons (``oodguard.serve.refusals.Dropped``)
DROP_REASONS = ("unauthorized", "body_timeout", "overloaded", "disconnect")


def score_scale(sorted_cal: np.ndarray, threshold: float) -> tuple[float, float]:
    """``(m, s)`` with ``u = (score − m) / s`` the normalised score: ``m`` the median of the
    calibration scores and ``s = threshold − m``, so that ``u = 1`` at the threshold. Where the
    threshold is not above the median (alpha ≥ 0.5, or ties), ``s`` is the calibration scores'
    range, or 1 when they are all equal."""
    cal = np.asarray(sorted_cal, dtype=np.float64)
    m = float(np.median(cal))
    s = float(threshold) - m
    if not (np.isfinite(s) and s > 0):
        s = float(cal[-1] - cal[0])
    if not (np.isfinite(s) and s > 0):
        s = 1.0
    return m, s


class _GuardSeries:
    """What one check records, in single-process mode, under the guard's one lock: inputs by
    verdict, batch size, duration by stage, and the scores and p-values queued for their
    histograms."""

    __slots__ = ("_lock", "_in", "_ood", "_batch", "_engine", "_scoring", "_total", "_score",
                 "_p", "__weakref__")

    def __init__(self, fam: _Families, guard: str, score_scale: tuple[float, float]) -> None:
        self._lock = lock = fam.lock_for(guard)
        fam.series.add(self)
        self._in = fam.inputs.labels(guard, "in", lock=lock)
        self._ood = fam.inputs.labels(guard, "ood", lock=lock)
        offset, scale = score_scale
        self._score = fam.score.labels(guard, lock, offset=offset, scale=scale)
        self._p = fam.p_value.labels(guard, lock)
        self._engine = fam.duration.labels(guard, "engine", lock=lock)
        self._scoring = fam.duration.labels(guard, "scoring", lock=lock)
        self._total = fam.duration.labels(guard, "total", lock=lock)
        self._batch = fam.batch.labels(guard, lock=lock)

    def record(self, n: int, n_ood: int, scores: np.ndarray, p_values: np.ndarray,
               engine_s: float, scoring_s: float, total_s: float) -> None:
        """Scores and p-values: private float64 arrays, given up by the caller."""
        with self._lock:
            self._batch.observe(n)
            self._ood.total += n_ood
            self._in.total += n - n_ood
            self._score.add_locked(scores)
            self._p.add_locked(p_values)
            self._engine.observe(engine_s)
            self._scoring.observe(scoring_s)
            self._total.observe(total_s)


INFO_KEYS = ("sha256", "calibration_sha256", "schema", "version", "steps", "alpha")


class _Families:
    """The metric families of one registry, created once and shared by its guards."""

    def __init__(self, registry: CollectorRegistry) -> None:
        kw: dict[str, Any] = {"registry": registry}
        self.plain = not multiprocess_mode()
        self._locks: dict[str, threading.Lock] = {}
        self.series: weakref.WeakSet[_GuardSeries] = weakref.WeakSet()
        self.inputs: Any
        self.duration: Any
        self.batch: Any
        inputs_doc = "Inputs scored by the guard, by verdict."
        if self.plain:
            self.inputs = PlainFamily("oodguard_inputs", inputs_doc, ["guard", "verdict"],
                                       registry)
        else:
            self.inputs = Counter("oodguard_inputs", inputs_doc, ["guard", "verdict"], **kw)
        self.refused = Counter(
            "oodguard_inputs_refused",
            "Inputs the guard refused before scoring, by reason.",
            ["guard", "reason"],
            **kw,
        )
        per_input: Callable[[str, str, Sequence[float]], Any]
        if not self.plain:
            def per_input(name: str, doc: str, buckets: Sequence[float]) -> Any:
                return Histogram(name, doc, ["guard"], buckets=buckets, registry=registry)
        else:
            def per_input(name: str, doc: str, buckets: Sequence[float]) -> Any:
                return BatchHistogram(name, doc, buckets, registry)
        self.score = per_input(
            "oodguard_score_normalized",
            "OOD score per input in units of the bundle's calibration: 0 = median calibration "
            "score, 1 = the threshold (higher = more OOD).",
            NORMALIZED_SCORE_BUCKETS,
        )
        self.p_value = per_input(
            "oodguard_p_value",
            "Conformal p-value per input (small = unusual for in-distribution data).",
            P_VALUE_BUCKETS,
        )
        # The per-check series are plain (one lock per guard) in single-process mode.
        per_call: Any = PlainFamily if self.plain else (
            lambda name, doc, labels, registry, buckets: Histogram(
                name, doc, labels, buckets=buckets, registry=registry))
        self.duration = per_call("oodguard_guard_duration_seconds",
                                 "Time the guard spent per call, by stage.", ["guard", "stage"],
                                 registry, LATENCY_BUCKETS)
        self.model_duration = Histogram(
            "oodguard_model_duration_seconds",
            "Time the wrapped model spent per call.",
            ["guard"],
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.batch = per_call("oodguard_batch_size", "Samples per guard call.", ["guard"],
                              registry, BATCH_BUCKETS)
        # A gauge set to 1 rather than Info: Info does not work in multiprocess mode. "max"
        # keeps one series across processes (the mode is ignored in single-process mode).
        self.info = Gauge(
            "oodguard_bundle_info",
            "The bundle a guard runs (always 1; the labels carry the information).",
            ["guard", *INFO_KEYS],
            multiprocess_mode="max",
            **kw,
        )
        self.threshold = Gauge(
            "oodguard_threshold_score",
            "Score above which an input is OOD at the guard's alpha.",
            ["guard"],
            multiprocess_mode="max",
            **kw,
        )
        self.failures = Counter(
            "oodguard_guard_failures",
            "Failures of the guard itself (engine errors), by kind.",
            ["guard", "kind"],
            **kw,
        )
        # Absent for bundles without reference features (nothing was checked).
        self.parity_ok = Gauge(
            "oodguard_parity_ok",
            "1 when the guard's engine reproduced the bundle's reference features within the "
            "export's tolerance at load, 0 when it did not.",
            ["guard", "provider"],
            multiprocess_mode="min",
            **kw,
        )
        self.parity_ratio = Gauge(
            "oodguard_parity_error_ratio",
            "Largest difference between the guard's and the exporter's reference features, "
            "over its allowed bound (at most 1 is parity).",
            ["guard"],
            multiprocess_mode="max",
            **kw,
        )
        self.drift: DriftCollector | DriftGauges = (
            DriftCollector(registry) if self.plain else DriftGauges(registry))
        self.dropped = Counter(
            "oodguard_http_requests_dropped",
            "Infer requests the HTTP service ended without reading their inputs, by reason.",
            ["guard", "reason"],
            **kw,
        )

    def renew_locks(self) -> None:
        """After ``fork()``, in the child: every lock of the single-process series anew. A lock
        that another thread of the parent held at the fork stays held forever in the child
        (that thread does not exist there), and the child's first check would wait on it."""
        renewed: dict[int, threading.Lock] = {}
        for guard, old in list(self._locks.items()):
            self._locks[guard] = renewed[id(old)] = threading.Lock()
        if self.plain:
            for family in (self.inputs, self.duration, self.batch, self.score, self.p_value):
                family.renew_locks(renewed)
        for series in list(self.series):
            series._lock = renewed.get(id(series._lock)) or threading.Lock()
        self.drift.renew_lock()

    def lock_for(self, guard: str) -> threading.Lock:
        """The lock of every plain series of ``guard`` (shared by its GuardMetrics objects)."""
        with _lock:
            return self._locks.setdefault(guard, threading.Lock())


_families: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for fam in list(_families.values()):
        fam.renew_locks()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _families_for(registry: CollectorRegistry) -> _Families:
    with _lock:
        fam = _families.get(registry)
        if fam is None:
            fam = _families[registry] = _Families(registry)
        return fam


def _batch_observer(family: Any, guard: str, offset: float = 0.0, scale: float = 1.0
                    ) -> Callable[[np.ndarray], None]:
    """``f(values)`` observing a float64 array of raw values in ``guard``'s histogram series
    of either kind, as ``(v − offset) / scale``."""
    if isinstance(family, BatchHistogram):
        return family.labels(guard, offset=offset, scale=scale).observe_many
    child = family.labels(guard)
    if (offset, scale) == (0.0, 1.0):
        return lambda v: observe_many(child, v)
    return lambda v: observe_many(child, (v - offset) / scale)  # multiprocess mode


class GuardMetrics:
    """Records one guard's calls. Thread-safe: a check's series are updated under the guard's
    lock (single-process mode) or through prometheus_client's own locked values.

    Parameters
    ----------
    registry : where the families live (shared by every guard of the registry)
    guard : the ``guard`` label
    score_scale : ``(m, s)`` of :func:`score_scale`: the normalised score is ``(score − m) / s``
    threshold : the score threshold (``oodguard_threshold_score``)
    info : the ``oodguard_bundle_info`` labels (every key of ``INFO_KEYS``)
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        guard: str,
        *,
        score_scale: tuple[float, float],
        threshold: float,
        info: Mapping[str, str],
    ) -> None:
        missing = [k for k in INFO_KEYS if k not in info]
        if missing:
            raise ValueError(f"info must hold {INFO_KEYS}; missing {missing}")
        fam = _families_for(registry)
        # single-process mode: one lock per check; multiprocess: prometheus_client's values
        self._series = _GuardSeries(fam, guard, score_scale) if fam.plain else None
        if self._series is None:
            self._in = fam.inputs.labels(guard, "in")
            self._ood = fam.inputs.labels(guard, "ood")
            self._score = _batch_observer(fam.score, guard, *score_scale)
            self._p = _batch_observer(fam.p_value, guard)
            self._engine = fam.duration.labels(guard, "engine")
            self._scoring = fam.duration.labels(guard, "scoring")
            self._total = fam.duration.labels(guard, "total")
            self._batch = fam.batch.labels(guard)
        self._model = fam.model_duration.labels(guard)
        self._refused = fam.refused
        self._failures = fam.failures
        self._dropped = fam.dropped
        self._parity = (fam.parity_ok, fam.parity_ratio)
        self._guard = guard
        self._drift_family = fam.drift
        self._drift_push: Any = None  # multiprocess mode: the monitor to write after checks
        self._drift_monitor: Any = None
        self._info = fam.info
        self._info_labels = (guard, *(str(info[k]) for k in INFO_KEYS))
        self.publish_info()
        fam.threshold.labels(guard).set(threshold)
        # Series at 0 from the start: the first refusal or failure is then an increase.
        for reason in REFUSAL_REASONS:
            fam.refused.labels(guard, reason)
        for kind in FAILURE_KINDS:
            fam.failures.labels(guard, kind)

    def publish_info(self) -> None:
        """Set this guard's ``oodguard_bundle_info`` series (1)."""
        self._info.labels(*self._info_labels).set(1)

    def retire_info(self) -> None:
        """Remove this guard's ``oodguard_bundle_info`` series (a served guard replaced by a
        recalibrated one, see :mod:`oodguard.serve.reload`)."""
        try:
            self._info.remove(*self._info_labels)
        except KeyError:  # already removed
            pass

    def watch_drift(self, monitor: Any) -> None:
        """Expose a :class:`~oodguard.drift.DriftMonitor` as this guard's
        ``oodguard_drift_*`` series (see :mod:`oodguard.metrics.drift_metrics`): read at scrape
        time, or, in multiprocess mode, written after every :meth:`observe_check`."""
        self._drift_monitor = monitor  # the collector holds it weakly: live as long as we do
        if isinstance(self._drift_family, DriftCollector):
            self._drift_family.watch(self._guard, monitor)
        else:
            self._drift_push = monitor
            self._drift_family.push(self._guard, monitor)

    def init_http(self) -> None:
        """Start the HTTP service's refusal and drop series at 0 (the server calls this)."""
        for reason in HTTP_REFUSAL_REASONS:
            self._refused.labels(self._guard, reason)
        for reason in DROP_REASONS:
            self._dropped.labels(self._guard, reason)

    def observe_check(
        self,
        scores: np.ndarray,
        p_values: np.ndarray,
        n_ood: int,
        *,
        engine_s: float,
        scoring_s: float,
        total_s: float,
    ) -> None:
        """Record one check: its scores (float64 ``[N]``, ``+inf`` for rows flagged without a
        score, which the score histogram leaves out), p-values, how many rows were flagged
        OOD, and the time of each stage."""
        n = len(scores)
        # +inf marks a non-finite input row (counted as a refusal); keep it out of the sum.
        finite = np.isfinite(scores)
        kept = scores if finite.all() else scores[finite]
        if self._series is not None:  # private copies: the caller may change its arrays
            self._series.record(n, n_ood, np.array(kept, dtype=np.float64),
                                np.array(p_values, dtype=np.float64), engine_s, scoring_s,
                                total_s)
            return
        self._batch.observe(n)
        self._ood.inc(n_ood)
        self._in.inc(n - n_ood)
        self._score(kept)
        self._p(p_values)
        self._engine.observe(engine_s)
        self._scoring.observe(scoring_s)
        self._total.observe(total_s)
        if self._drift_push is not None and isinstance(self._drift_family, DriftGauges):
            self._drift_family.push(self._guard, self._drift_push)

    def observe_refused(self, reason: str, n: int = 1) -> None:
        """Count ``n`` inputs refused before scoring; ``reason`` is a fixed token (for example
        ``InvalidInputError.reason``, or the server's ``body_size``), never input data."""
        self._refused.labels(self._guard, reason).inc(n)

    def observe_dropped(self, reason: str) -> None:
        """Count one infer request the HTTP service ended before reading its inputs; ``reason``
        is a fixed token (``unauthorized``, ``body_timeout``, ``overloaded``, ``disconnect``)."""
        self._dropped.labels(self._guard, reason).inc()

    def observe_parity(self, ok: bool, ratio: float, provider: str) -> None:
        """Record the load-time parity check (:mod:`oodguard.bundle.reference`)."""
        self._parity[0].labels(self._guard, provider).set(1.0 if ok else 0.0)
        self._parity[1].labels(self._guard).set(ratio)

    def observe_failure(self, kind: str) -> None:
        self._failures.labels(self._guard, kind).inc()

    def observe_model(self, seconds: float) -> None:
        self._model.observe(seconds)


def new_registry() -> CollectorRegistry:
    """A fresh, empty registry (for one server or one test)."""
    return CollectorRegistry()


def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry that aggregates every process's values from ``path`` (the directory named
    by ``PROMETHEUS_MULTIPROC_DIR``) at collection time; serve ``/metrics`` from it."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry


def render_latest(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of ``registry`` and its content type, for a ``/metrics`` route."""
    return generate_latest(registry), CONTENT_TYPE
