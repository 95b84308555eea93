"""A model's ``predict`` behind a guard: policies for OOD rows and for guard failures.

Rows reach ``predict`` and ``fallback`` as the caller passed them: a torch tensor stays a torch
tensor (on its device), a numpy array a numpy array, a list a list. Predictions are reassembled
in the predictor's type: numpy arrays, or torch tensors when the predictor returned one (through
``sys.modules["torch"]``; the runtime never imports torch).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from oodguard.errors import GuardFailure, InvalidInputError, OODInputError, check_parameter
from oodguard.results import CheckResult

__all__ = ["Checker", "GuardedModel", "GuardedOutput", "prediction_labels"]

log = logging.getLogger(__name__)

P = TypeVar("P")


class Checker(Protocol):
    """What a :class:`GuardedModel` needs of its guard (:class:`oodguard.Guard` is one)."""

    name: str
    metrics: Any  # GuardMetrics or None

    def check(self, x: Any, *, fdr: float | None = ..., timeout_s: float | None = ...,
              groups: Any = ...) -> CheckResult: ...


@dataclass(frozen=True, eq=False)
class GuardedOutput(Generic[P]):
    """What a wrapped model returns: the prediction and the guard's result (``None`` when the
    guard failed and ``on_error="open"`` let the prediction through unguarded)."""

    prediction: P
    result: CheckResult | None


class GuardedModel(Generic[P]):
    """A model's ``predict`` behind a guard.

    Calling it with a batch ``x`` checks ``x`` and then, by ``on_ood``:

    - ``"flag"``: runs the model on the whole batch; the result says which rows are OOD;
    - ``"raise"``: raises :class:`OODInputError` (holding the result) if any row is OOD, and
      does not run the model;
    - ``"fallback"``: runs ``predict`` on the in-distribution rows and ``fallback`` on the OOD
      rows (each given rows of the caller's own type, indexed from ``x``) and reassembles the
      predictions in row order (both must return one row per input; a torch tensor from
      either gives a torch tensor, else a numpy array).

    When the guard itself fails (:class:`GuardFailure`: engine error, malformed output,
    timeout), ``on_error="open"`` logs, counts the failure and runs the model unguarded
    (``result=None``); ``"closed"`` raises the :class:`GuardFailure`. Input that fails
    validation in any way (type, dtype, rank, shape, a tensor that does not convert) is the
    caller's error and always raises :class:`InvalidInputError` before the model runs.

    An empty batch (zero rows) is checked but not passed to ``predict`` (many models refuse
    one): the prediction is an empty float64 array of shape ``(0,)``.

    ``group_by="prediction"`` (a bundle calibrated per class, ``calibrate(..., groups=y)``)
    checks each row against the calibration of the class the model predicts for it, so the
    false-positive rate holds class by class: the model runs *first* on the whole batch (its
    class is needed), its output read as labels (a 2-D output: the argmax of each row; 1-D: the
    labels themselves), then the guard checks; ``"raise"`` raises after the model ran, and
    ``"fallback"`` replaces the OOD rows' predictions by ``fallback``'s.
    """

    def __init__(
        self,
        guard: Checker,
        predict: Callable[[Any], P],
        *,
        on_ood: str,
        fallback: Callable[[Any], Any] | None,
        on_error: str,
        fdr: float | None = None,
        timeout_s: float | None = None,
        group_by: str | None = None,
    ) -> None:
        check_parameter(group_by in (None, "prediction"), "group_by", "None or 'prediction'",
                        group_by, owner="Guard.wrap")
        check_parameter(on_ood in ("flag", "raise", "fallback"), "on_ood",
                        "'flag', 'raise' or 'fallback'", on_ood, owner="Guard.wrap")
        check_parameter(on_error in ("open", "closed"), "on_error", "'open' or 'closed'",
                        on_error, owner="Guard.wrap")
        check_parameter((on_ood == "fallback") == (fallback is not None), "fallback",
                        "a callable exactly when on_ood='fallback'", fallback,
                        owner="Guard.wrap")
        self.guard, self.predict, self.fallback = guard, predict, fallback
        self.on_ood, self.on_error = on_ood, on_error
        self.fdr, self.timeout_s = fdr, timeout_s
        self.group_by = group_by

    def _timed(self, fn: Callable[[Any], Any], x: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(x)
        if self.guard.metrics is not None:
            self.guard.metrics.observe_model(time.perf_counter() - t0)
        return out

    def __call__(self, x: Any) -> GuardedOutput[P]:
        if self.group_by == "prediction":
            return self._by_prediction(x)
        try:
            result = self.guard.check(x, fdr=self.fdr, timeout_s=self.timeout_s)
        except InvalidInputError:
            raise
        except Exception as err:  # the guard must never take the host model down with it
            self._failed(err)
            return GuardedOutput(self._timed(self.predict, x), None)
        if len(result) == 0:
            return GuardedOutput(np.empty(0), result)  # type: ignore[arg-type]
        return self._apply_policy(x, result)

    def _apply_policy(self, x: Any, result: CheckResult, pred: Any = None,
                      per: str = "") -> GuardedOutput[P]:
        """``on_ood`` on a checked batch: raise, fall back on the OOD rows, or serve. ``pred``:
        the model's output on the whole batch when it already ran (``group_by``), else None
        (the model then runs here, on the in-distribution rows only under ``"fallback"``)."""
        if self.on_ood == "raise" and result.n_ood:
            raise OODInputError(
                f"{result.n_ood} of {len(result)} inputs are out of distribution "
                f"({_rule(result)}{per}); rows {np.flatnonzero(result.is_ood)[:10].tolist()}",
                result=result,
            )
        if self.on_ood == "fallback" and result.n_ood:
            fallback = self.fallback
            if fallback is None:  # excluded in __init__; narrows the type
                raise GuardFailure("fallback policy without a fallback", reason="internal")
            ood = result.is_ood
            idx_in, idx_ood = np.flatnonzero(~ood), np.flatnonzero(ood)
            pred_in = None
            if len(idx_in):
                pred_in = (self._timed(self.predict, _take(x, idx_in)) if pred is None
                           else _take(pred, idx_in))
            pred_ood = fallback(_take(x, idx_ood))
            return GuardedOutput(_merge(len(ood), idx_in, pred_in, idx_ood, pred_ood), result)
        return GuardedOutput(self._timed(self.predict, x) if pred is None else pred, result)

    def _failed(self, err: Exception) -> None:
        """The guard failed: raise (``on_error="closed"``) or log and go on unguarded."""
        if isinstance(err, GuardFailure):  # counted by check
            if self.on_error == "closed":
                raise err
            failure = err
        else:  # a bug of the guard itself
            failure = GuardFailure(f"guard {self.guard.name!r} failed: "
                                   f"{type(err).__name__}: {err}", reason="internal")
            if self.guard.metrics is not None:
                self.guard.metrics.observe_failure(failure.reason)
            if self.on_error == "closed":
                raise failure from err
        log.warning("guard %r failed (%s); serving unguarded (on_error='open')",
                    self.guard.name, failure.reason)

    def _by_prediction(self, x: Any) -> GuardedOutput[P]:
        """``group_by="prediction"``: predict, then check each row against its class."""
        if len(x) == 0:
            return GuardedOutput(np.empty(0), self.guard.check(x))  # type: ignore[arg-type]
        pred = self._timed(self.predict, x)
        try:
            result = self.guard.check(x, fdr=self.fdr, timeout_s=self.timeout_s,
                                      groups=prediction_labels(pred))
        except InvalidInputError:
            raise
        except Exception as err:  # the guard must never take the host model down with it
            self._failed(err)
            return GuardedOutput(pred, None)
        return self._apply_policy(x, result, pred, per=", per predicted class")

def prediction_labels(pred: Any) -> np.ndarray:
    """A model's output as one class label per row: the argmax of each row of a 2-D output
    (scores, logits, probabilities), or a 1-D output as it is (labels)."""
    torch = _torch_if_tensor(pred)
    a = pred.detach().cpu().numpy() if torch is not None else np.asarray(pred)
    if a.ndim == 2:
        return np.argmax(a, axis=1)
    if a.ndim == 1:
        return a
    raise InvalidInputError(f"group_by='prediction' needs the model's output as labels [N] or "
                            f"class scores [N, C]; got shape {a.shape}", reason="group")


def _rule(result: CheckResult) -> str:
    return f"p ≤ {result.alpha:g}" if result.rule == "alpha" else f"BH at FDR {result.fdr:g}"


def _torch_if_tensor(obj: Any) -> Any:
    """The torch module when ``obj`` is a torch tensor (torch already imported), else None."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return torch
    return None


def _take(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of ``x`` in ``x``'s own type."""
    torch = _torch_if_tensor(x)
    if torch is not None:
        return x[torch.as_tensor(idx, dtype=torch.long, device=x.device)]
    if isinstance(x, np.ndarray):
        return x[idx]
    if isinstance(x, (list, tuple)):
        return type(x)(x[i] for i in idx)
    try:
        return x[idx]  # other array libraries index with integer arrays
    except Exception:  # noqa: BLE001 - anything else gets numpy rows
        return np.asarray(x)[idx]


def _merge(n: int, idx_in: np.ndarray, pred_in: Any, idx_ood: np.ndarray,
           pred_ood: Any) -> Any:
    """Predictions of both parts in row order: a torch tensor if either part is one (on that
    part's device), else a numpy array of the parts' common dtype."""
    parts = [(idx_ood, pred_ood)] + ([] if pred_in is None else [(idx_in, pred_in)])
    torch = next((t for t in (_torch_if_tensor(p) for _, p in parts) if t is not None), None)
    if torch is None:
        arrays = [(i, np.asarray(p)) for i, p in parts]
        dtype = np.result_type(*(a for _, a in arrays))
        merged = np.empty((n, *arrays[0][1].shape[1:]), dtype=dtype)
        for i, a in arrays:
            merged[i] = a
        return merged
    ref = next(p for _, p in parts if isinstance(p, torch.Tensor))
    tensors = [(i, torch.as_tensor(p, device=ref.device)) for i, p in parts]
    dtype = tensors[0][1].dtype
    for _, t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    merged_t = torch.empty((n, *tensors[0][1].shape[1:]), dtype=dtype, device=ref.device)
    for i, t in tensors:
        merged_t[torch.as_tensor(i, dtype=torch.long, device=ref.device)] = t.to(dtype)
    return merged_t
