"""Prometheus metrics for a guard: the only runtime package that imports prometheus_client.

- :mod:`~oodguard.metrics.guard_metrics` — the metric families and :class:`GuardMetrics`,
  which records one guard's checks (see its docstring for every metric);
- :mod:`~oodguard.metrics.collectors` — the single-process collectors behind them;
- :mod:`~oodguard.metrics.prometheus_adapter` — the one module that reads prometheus_client's
  private attributes, for a pinned version range.
"""

from oodguard.metrics.guard_metrics import (
    BATCH_BUCKETS,
    CONTENT_TYPE,
    DEFAULT_REGISTRY,
    DROP_REASONS,
    FAILURE_KINDS,
    HTTP_REFUSAL_REASONS,
    LATENCY_BUCKETS,
    NORMALIZED_SCORE_BUCKETS,
    P_VALUE_BUCKETS,
    REFUSAL_REASONS,
    VERDICTS,
    BatchHistogram,
    GuardMetrics,
    multiprocess_registry,
    new_registry,
    observe_many,
    render_latest,
    score_scale,
)

__all__ = [
    "BATCH_BUCKETS",
    "CONTENT_TYPE",
    "DEFAULT_REGISTRY",
    "DROP_REASONS",
    "FAILURE_KINDS",
    "HTTP_REFUSAL_REASONS",
    "LATENCY_BUCKETS",
    "NORMALIZED_SCORE_BUCKETS",
    "P_VALUE_BUCKETS",
    "REFUSAL_REASONS",
    "VERDICTS",
    "BatchHistogram",
    "GuardMetrics",
    "multiprocess_registry",
    "new_registry",
    "observe_many",
    "render_latest",
    "score_scale",
]
