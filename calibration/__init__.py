"""Offline stage 2 (scikit-learn): fit the one-class scorer on in-distribution validation
features and calibrate conformal p-values and the threshold at a target false-positive rate.

>>> from oodguard.calibration import calibrate                    # doctest: +SKIP
>>> report = calibrate("bundle/", x_val, alpha=0.05)
"""

from oodguard.calibration.calibrate import (
    CalibrationReport,
    calibrate,
    fit_scorer,
    required_samples,
)
from oodguard.calibration.detection_metrics import aupr, auroc, fpr_at_tpr, roc_curve
from oodguard.calibration.evaluate import EvaluationReport, OODSetEvaluation, evaluate
from oodguard.calibration.transform import fit_transform

__all__ = [
    "CalibrationReport",
    "EvaluationReport",
    "OODSetEvaluation",
    "aupr",
    "auroc",
    "calibrate",
    "evaluate",
    "fit_scorer",
    "fit_transform",
    "fpr_at_tpr",
    "required_samples",
    "roc_curve",
]
