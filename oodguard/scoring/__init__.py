"""The runtime scorer: features ▶ OOD score (higher = more OOD), in numpy alone.

- :mod:`~oodguard.scoring.scorer` — :class:`Scorer`, rebuilt from ``calibration.json`` (no
  pickle): per-feature transforms, directions and one combination, one code path for every
  batch size;
- :mod:`~oodguard.scoring.tails` — Gaussian tail p-values and their Fisher / Cauchy
  combinations.

Conformal p-values and the threshold live in :mod:`oodguard.decisions`; the calibration
document's schema in :mod:`oodguard.bundle.calibration_doc`.
"""

from oodguard.bundle.calibration_doc import CALIBRATION_SCHEMA_VERSION, COMBINE_METHODS
from oodguard.decisions import conformal_p_values, score_threshold
from oodguard.scoring.scorer import Scorer, wilson_hilferty, yeo_johnson
from oodguard.scoring.tails import gaussian_log_sf

__all__ = [
    "CALIBRATION_SCHEMA_VERSION",
    "COMBINE_METHODS",
    "Scorer",
    "conformal_p_values",
    "gaussian_log_sf",
    "score_threshold",
    "wilson_hilferty",
    "yeo_johnson",
]
