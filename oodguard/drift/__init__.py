"""Drift: is the stream still exchangeable with the calibration data?

- :mod:`~oodguard.drift.bound` — calibration-conditional p-values;
- :mod:`~oodguard.drift.monitor` — :class:`DriftMonitor`, a conformal test martingale (or an
  average-run-length detector) over a guard's p-values.

Pure numpy. docs/drift.md derives the guarantee.
"""

from oodguard.drift.bound import conditional_p_values, kl_bernoulli
from oodguard.drift.monitor import (
    KAPPAS,
    STATISTICS,
    DriftMonitor,
    DriftSettings,
    DriftState,
    log_power_mixture,
)

__all__ = [
    "STATISTICS",
    "DriftMonitor",
    "DriftSettings",
    "DriftState",
    "KAPPAS",
    "conditional_p_values",
    "kl_bernoulli",
    "log_power_mixture",
]
