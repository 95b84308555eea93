"""oodguard: an out-of-distribution guard from the latent dynamics of an autoencoder.

The runtime (this package) needs numpy, onnxruntime and prometheus-client only. The offline
stages install as :mod:`oodguard.export` (torch, onnx) and :mod:`oodguard.calibration`
(scikit-learn) through pip extras.

>>> guard = Guard.load("bundle/")                      # doctest: +SKIP
>>> result = guard.check(x)                            # doctest: +SKIP
>>> result.score, result.p_value, result.is_ood        # doctest: +SKIP
"""

from oodguard._version import __version__
from oodguard.bundle import Bundle, InputSpec, Manifest, read_bundle, write_bundle
from oodguard.engine import Engine
from oodguard.errors import (
    BundleError,
    BundleExistsError,
    CalibrationError,
    ExportError,
    GuardFailure,
    InvalidInputError,
    InvalidParameterError,
    MissingDependencyError,
    NonFiniteInputError,
    NotCalibratedError,
    OODGuardError,
    OODInputError,
)
from oodguard.features import FEATURE_FORMULAS, FEATURE_NAMES
from oodguard.guard import Guard
from oodguard.results import CheckResult
from oodguard.scoring import Scorer
from oodguard.wrap import GuardedModel, GuardedOutput

__all__ = [
    "FEATURE_FORMULAS",
    "FEATURE_NAMES",
    "Bundle",
    "BundleError",
    "BundleExistsError",
    "CalibrationError",
    "CheckResult",
    "Engine",
    "ExportError",
    "Guard",
    "GuardFailure",
    "GuardedModel",
    "GuardedOutput",
    "InputSpec",
    "InvalidInputError",
    "InvalidParameterError",
    "Manifest",
    "MissingDependencyError",
    "NonFiniteInputError",
    "NotCalibratedError",
    "OODDetector",
    "OODGuardError",
    "OODInputError",
    "Scorer",
    "__version__",
    "fit",
    "read_bundle",
    "write_bundle",
]

# Offline entry points, loaded on first use so that ``import oodguard`` stays free of torch and
# scikit-learn; without them installed, using one names the extra to install.
_LAZY = {"fit": "oodguard.training.fit", "OODDetector": "oodguard.training.estimator"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from oodguard.extras import optional

        return getattr(optional(_LAZY[name], f"oodguard.{name}", "fit,cpu"), name)
    raise AttributeError(f"module 'oodguard' has no attribute {name!r}")
