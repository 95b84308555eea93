"""The exception hierarchy.

Every error oodguard raises derives from :class:`OODGuardError`, and each specific error also
derives from the builtin a caller would already catch (``ValueError``, ``ImportError``,
``RuntimeError``), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BundleError",
    "BundleExistsError",
    "ExportError",
    "GuardFailure",
    "InvalidInputError",
    "InvalidParameterError",
    "MissingDependencyError",
    "NonFiniteInputError",
    "NotCalibratedError",
    "OODGuardError",
    "OODInputError",
    "CalibrationError",
    "check_parameter",
    "parameter_error",
]


class OODGuardError(Exception):
    """Root of every error raised by oodguard."""


class InvalidInputError(OODGuardError, ValueError):
    """An input batch does not match what the bundle expects (dtype, rank, shape, emptiness).

    ``reason`` is a short, fixed token (``"dtype"``, ``"rank"``, ``"shape"``, ``"non_finite"``,
    ``"type"``) suitable as a metric label.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidParameterError(OODGuardError, ValueError):
    """A parameter outside its domain. The message names the parameter, the rule and the
    value, in scikit-learn's words: "The 'alpha' parameter of Guard must be a float in
    [1/(n+1), 1). Got 2.0 instead." ``parameter`` holds the name."""

    def __init__(self, message: str, *, parameter: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def parameter_error(name: str, rule: str, value: Any, *, owner: str | None = None,
                    fix: str = "") -> InvalidParameterError:
    """The :class:`InvalidParameterError` for ``value`` of parameter ``name`` (of ``owner``,
    a class or function name) breaking ``rule`` ("a float in (0, 1)"); ``fix`` adds how to
    mend it."""
    where = f"The {name!r} parameter" + (f" of {owner}" if owner else "")
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    tail = f" {fix}" if fix else ""
    return InvalidParameterError(f"{where} must be {rule}. Got {shown} instead.{tail}",
                                 parameter=name)


def check_parameter(ok: bool, name: str, rule: str, value: Any, *, owner: str | None = None,
                    fix: str = "") -> None:
    """Raise :func:`parameter_error` unless ``ok``: the one way public parameters are checked."""
    if not ok:
        raise parameter_error(name, rule, value, owner=owner, fix=fix)


class NonFiniteInputError(InvalidInputError):
    """An input holds NaN or infinity and the guard was told to refuse such rows."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="non_finite")


class BundleError(OODGuardError, ValueError):
    """A bundle directory is missing, corrupted, tampered with, or from an incompatible version."""


class BundleExistsError(OODGuardError, FileExistsError):
    """Something is already at the path a bundle was to be written to: a bundle (pass
    ``overwrite=True``), or something that is not a bundle, which oodguard never replaces."""


class NotCalibratedError(BundleError):
    """The bundle has no ``calibration.json``: run :func:`oodguard.calibration.calibrate` first."""


class ExportError(OODGuardError, RuntimeError):
    """Export refused to write a bundle (for example: ONNX and torch features disagree)."""


class CalibrationError(OODGuardError, ValueError):
    """Calibration cannot be done as asked (too few samples, alpha too small, degenerate data)."""


class MissingDependencyError(OODGuardError, ImportError):
    """An optional dependency is not installed; the message names the pip extra to install."""


class GuardFailure(OODGuardError, RuntimeError):
    """The guard itself failed to score a valid batch: the engine raised, returned features of
    the wrong shape or dtype, or did not answer within the timeout.

    ``reason`` is a short, fixed token suitable as a metric label: ``"engine_error"``,
    ``"output_shape"``, ``"output_dtype"``, ``"timeout"`` or ``"internal"``.
    Never raised for bad input (that is :class:`InvalidInputError`).
    """

    def __init__(self, message: str, *, reason: str = "engine_error") -> None:
        super().__init__(message)
        self.reason = reason


class OODInputError(OODGuardError, ValueError):
    """Raised by a wrapped model with ``on_ood="raise"`` when a batch holds OOD rows.

    ``result`` holds the full :class:`~oodguard.guard.CheckResult` for the batch (typed
    ``Any`` here: this module imports nothing from the package, so every module may import it).
    """

    def __init__(self, message: str, *, result: Any) -> None:
        super().__init__(message)
        self.result = result
