"""The drift monitor's metrics (see :mod:`oodguard.drift`).

================================== ========= ==========================================
metric                             type      meaning
================================== ========= ==========================================
``oodguard_drift_evidence_log10``  gauge     log10 of the monitor's statistic now
``oodguard_drift_alarm``           gauge     1 while the monitor's alarm is set, else 0
``oodguard_drift_alarms_total``    counter   alarms raised since the guard was loaded
``oodguard_drift_threshold_log10`` gauge     log10 of the alarm threshold (``1/ε'`` or ``A``)
================================== ========= ==========================================

All labelled by ``guard``. In single-process mode a :class:`DriftCollector` reads each watched
monitor when the registry is scraped, so a check pays nothing for them. In multiprocess mode
(no custom collector reaches the per-process files) :class:`DriftGauges` writes them after each
check; each process watches its own share of the traffic and exports its own evidence series
(label ``pid``), which the alert averages like replicas (docs/drift.md, "replicas").
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["DriftCollector", "DriftGauges"]

_DOCS = {
    "evidence": "log10 of the drift monitor's statistic (the conformal test martingale unless "
                "configured otherwise).",
    "alarm": "1 while the drift monitor's alarm is set (evidence reached the threshold), else 0.",
    "alarms": "Drift alarms raised since the guard was loaded.",
    "threshold": "log10 of the drift monitor's alarm threshold.",
}


class DriftCollector:
    """Exposes the state of every watched monitor of one registry, read at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lock = threading.Lock()
        self._monitors: dict[str, weakref.ref[Any]] = {}
        registry.register(self)

    def watch(self, guard: str, monitor: Any) -> None:
        """Expose ``monitor`` (a :class:`~oodguard.drift.DriftMonitor`) as guard ``guard``'s."""
        with self._lock:
            self._monitors[guard] = weakref.ref(monitor)

    def renew_lock(self) -> None:
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return []  # the series come and go with the guards watched

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            watched = [(g, ref()) for g, ref in self._monitors.items()]
        evidence = GaugeMetricFamily("oodguard_drift_evidence_log10", _DOCS["evidence"],
                                     labels=["guard"])
        alarm = GaugeMetricFamily("oodguard_drift_alarm", _DOCS["alarm"], labels=["guard"])
        alarms = CounterMetricFamily("oodguard_drift_alarms", _DOCS["alarms"], labels=["guard"])
        threshold = GaugeMetricFamily("oodguard_drift_threshold_log10", _DOCS["threshold"],
                                      labels=["guard"])
        for guard, monitor in watched:
            if monitor is None:
                continue
            s = monitor.state()
            evidence.add_metric([guard], s.evidence)
            alarm.add_metric([guard], 1.0 if s.alarm else 0.0)
            alarms.add_metric([guard], float(s.alarms))
            threshold.add_metric([guard], s.threshold)
        yield from (evidence, alarm, alarms, threshold)


class DriftGauges:
    """Multiprocess mode: the same series as :class:`DriftCollector`, written after each check
    (evidence and alarm keep the largest value across processes)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        kw: dict[str, Any] = {"registry": registry}
        # one series per live process: the alert averages the martingales (docs/drift.md)
        self.evidence = Gauge("oodguard_drift_evidence_log10", _DOCS["evidence"], ["guard"],
                              multiprocess_mode="liveall", **kw)
        self.alarm = Gauge("oodguard_drift_alarm", _DOCS["alarm"], ["guard"],
                           multiprocess_mode="max", **kw)
        self.alarms = Counter("oodguard_drift_alarms", _DOCS["alarms"], ["guard"], **kw)
        self.threshold = Gauge("oodguard_drift_threshold_log10", _DOCS["threshold"], ["guard"],
                               multiprocess_mode="max", **kw)
        self._lock = threading.Lock()
        self._counted: dict[str, int] = {}

    def renew_lock(self) -> None:
        self._lock = threading.Lock()

    def push(self, guard: str, monitor: Any) -> None:
        """Write ``monitor``'s state as guard ``guard``'s."""
        s = monitor.state()
        with self._lock:
            self.evidence.labels(guard).set(s.evidence)
            self.alarm.labels(guard).set(1.0 if s.alarm else 0.0)
            self.threshold.labels(guard).set(s.threshold)
            new = s.alarms - self._counted.get(guard, 0)
            if new > 0:
                self.alarms.labels(guard).inc(new)
            self._counted[guard] = s.alarms
