"""The guard: load a bundle, score batches, decide, and guard a model's inference."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from oodguard._version import __version__
from oodguard.bundle import (
    CALIBRATION_FILE,
    MODEL_FILE,
    Bundle,
    InputSpec,
    Manifest,
    load_calibration,
    read_bundle,
)
from oodguard.engine import Engine
from oodguard.errors import (
    GuardFailure,
    InvalidInputError,
    NotCalibratedError,
    OODInputError,
)
from oodguard.scoring import Scorer, score_threshold
from oodguard.validation import NONFINITE_POLICIES, validate_batch

__all__ = ["CheckResult", "Guard", "GuardedModel", "GuardedOutput"]

log = logging.getLogger(__name__)

P = TypeVar("P")
_DEFAULT: Any = object()  # "the global prometheus registry", distinct from None ("no metrics")


@dataclass(frozen=True, eq=False)
class CheckResult:
    """The guard's verdict on a batch of ``N`` inputs.

    Attributes
    ----------
    score : ndarray of float64, shape (N,)
        OOD score; higher = more OOD. ``+inf`` for rows with non-finite input.
    p_value : ndarray of float64, shape (N,)
        Conformal p-value; an in-distribution input has ``P(p ≤ alpha) ≤ alpha``.
        0 for rows with non-finite input.
    is_ood : ndarray of bool, shape (N,)
        ``p_value ≤ alpha``.
    features : ndarray of float32, shape (N, F)
        The trajectory features (NaN rows for non-finite input), named by ``feature_names``.
    """

    score: np.ndarray
    p_value: np.ndarray
    is_ood: np.ndarray
    features: np.ndarray
    feature_names: tuple[str, ...]
    alpha: float
    threshold: float

    def __len__(self) -> int:
        return len(self.score)

    @property
    def n_ood(self) -> int:
        return int(self.is_ood.sum())

    def feature(self, name: str) -> np.ndarray:
        """One feature column by name."""
        try:
            return self.features[:, self.feature_names.index(name)]
        except ValueError:
            raise KeyError(f"no feature {name!r}; features are {self.feature_names}") from None


@dataclass(frozen=True, eq=False)
class GuardedOutput(Generic[P]):
    """What a wrapped model returns: the prediction and the guard's result (``None`` when the
    guard failed and ``on_error="open"`` let the prediction through unguarded)."""

    prediction: P
    result: CheckResult | None


class Guard:
    """An OOD guard over one bundle. Create it with :meth:`load`.

    Thread-safe: :meth:`check` and wrapped models may be called from many threads at once; the
    guard holds no mutable state besides its (thread-safe) metrics.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        providers: str | Sequence[str] = "auto",
        name: str = "default",
        registry: Any = _DEFAULT,
        alpha: float | None = None,
        nonfinite: str = "flag",
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        max_batch: int | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}. Got {nonfinite!r}")
        if not bundle.calibrated:
            raise NotCalibratedError(
                f"bundle {bundle.path} has no {CALIBRATION_FILE}; calibrate it first with "
                "oodguard.calibration.calibrate(bundle, x_validation)"
            )
        doc = load_calibration(bundle)  # bounded parse; Scorer.from_dict checks the numbers
        self.bundle = bundle
        self.name = name
        self.nonfinite = nonfinite
        self.scorer = Scorer.from_dict(doc, bundle.manifest.feature_names)
        n = len(self.scorer.calibration_scores)
        self.alpha = self.scorer.alpha if alpha is None else float(alpha)
        if not 1.0 / (n + 1) <= self.alpha < 1.0:
            raise ValueError(
                f"alpha must lie in [1/(n+1), 1) = [{1 / (n + 1):.4g}, 1) for this calibration "
                f"(n={n}); got {self.alpha}. Calibrate on more data for a smaller alpha"
            )
        self.threshold = score_threshold(self.scorer.calibration_scores, self.alpha)
        self.engine = Engine(
            bundle.files[MODEL_FILE],
            bundle.manifest,
            providers=providers,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            max_batch=max_batch,
            **dict(engine_options or {}),
        )
        self.metrics = self._make_metrics(registry)

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> Guard:
        """Load and verify a calibrated bundle directory.

        Parameters
        ----------
        path : path of the bundle directory
        providers : "auto" (CUDA when available, else CPU), "cpu", "cuda" or a provider list
        name : label for this guard's metrics
        registry : prometheus_client ``CollectorRegistry``; default the global one, ``None``
            for no metrics
        alpha : target false-positive rate; default the calibrated one
        nonfinite : "flag" (NaN/inf rows are OOD) or "raise"
        intra_op_threads, inter_op_threads, max_batch : engine options (see ``Engine``)
        engine_options : further ``Engine`` keywords (``batch_threads``, ``spinning``,
            ``io_binding``, ``cuda_graph_batch``)

        Raises
        ------
        BundleError, NotCalibratedError, MissingDependencyError
        """
        return cls(read_bundle(path), **kwargs)

    def _make_metrics(self, registry: Any) -> Any:
        if registry is None:
            return None
        from oodguard.metrics import DEFAULT_REGISTRY, GuardMetrics, score_buckets

        m = self.manifest
        return GuardMetrics(
            DEFAULT_REGISTRY if registry is _DEFAULT else registry,
            self.name,
            score_edges=score_buckets(self.scorer.calibration_scores, self.threshold),
            threshold=self.threshold,
            info={
                "sha256": self.bundle.sha256(MODEL_FILE),
                "schema": str(m.schema_version),
                "version": __version__,
                "steps": str(m.steps),
                "alpha": f"{self.alpha:g}",
            },
        )

    # -- properties ------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def input_spec(self) -> InputSpec:
        return self.bundle.manifest.input

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.bundle.manifest.feature_names

    @property
    def providers(self) -> list[str]:
        return self.engine.providers

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"Guard(name={self.name!r}, input={m.input.shape}, T={m.steps}, "
            f"alpha={self.alpha:g}, providers={self.providers})"
        )

    # -- scoring ---------------------------------------------------------------------------
    def check(self, x: Any) -> CheckResult:
        """Score a batch.

        Parameters
        ----------
        x : array of floats, shape (N, *input_shape)
            float32 is used as is; float16/float64 are cast. See :mod:`oodguard.validation`
            for every outcome of bad input.

        Returns
        -------
        CheckResult
            Scores (higher = more OOD), conformal p-values and verdicts at ``alpha``.

        Raises
        ------
        InvalidInputError
            Wrong dtype, rank or shape; or non-finite rows with ``nonfinite="raise"``.
        """
        t0 = time.perf_counter()
        try:
            x32, finite = validate_batch(x, self.input_spec, nonfinite=self.nonfinite)
        except InvalidInputError as err:
            if self.metrics is not None:
                self.metrics.observe_refused(err.reason, _rows(x, len(self.input_spec.shape)))
            raise
        tv = time.perf_counter()
        n = len(x32)
        nf = len(self.feature_names)
        if n == 0:
            empty = np.empty(0)
            return CheckResult(
                empty, empty, empty.astype(bool), np.empty((0, nf), np.float32),
                self.feature_names, self.alpha, self.threshold,
            )
        if finite is None:
            features = self.engine.run(x32)
        else:
            features = np.full((n, nf), np.nan, dtype=np.float32)
            if finite.any():
                features[finite] = self.engine.run(np.ascontiguousarray(x32[finite]))
            if self.metrics is not None:
                self.metrics.observe_refused("non_finite", int((~finite).sum()))
        t1 = time.perf_counter()
        score = self.scorer.score(features)
        p = self.scorer.p_value(score)
        if finite is not None:
            score[~finite] = np.inf
            p[~finite] = 0.0
        is_ood = p <= self.alpha
        t2 = time.perf_counter()
        if self.metrics is not None:
            self.metrics.observe_check(
                score, p, int(is_ood.sum()), engine_s=t1 - tv, scoring_s=t2 - t1, total_s=t2 - t0
            )
        return CheckResult(score, p, is_ood, features, self.feature_names, self.alpha,
                           self.threshold)

    def wrap(
        self,
        predict: Callable[[np.ndarray], P],
        *,
        on_ood: str = "flag",
        fallback: Callable[[np.ndarray], Any] | None = None,
        on_error: str = "open",
    ) -> GuardedModel[P]:
        """Guard a model's inference; see :class:`GuardedModel` for the policies."""
        return GuardedModel(self, predict, on_ood=on_ood, fallback=fallback, on_error=on_error)


def _rows(x: Any, sample_rank: int) -> int:
    """How many inputs a refused batch held: its first axis when its rank is right, else 1
    (a wrong-rank array has no trustworthy batch axis)."""
    shape = getattr(x, "shape", None)
    if shape is not None and len(shape) == sample_rank + 1:
        return max(int(shape[0]), 1)
    return 1


class GuardedModel(Generic[P]):
    """A model's ``predict`` behind a guard.

    Calling it with a batch ``x`` checks ``x`` and then, by ``on_ood``:

    - ``"flag"``: runs the model on the whole batch; the result says which rows are OOD;
    - ``"raise"``: raises :class:`OODInputError` (holding the result) if any row is OOD, and
      does not run the model;
    - ``"fallback"``: runs ``predict`` on the in-distribution rows and ``fallback`` on the OOD
      rows and reassembles the predictions in row order (both must return arrays with one row
      per input).

    When the guard itself fails (engine error), ``on_error="open"`` logs, counts the failure
    and runs the model unguarded (``result=None``); ``"closed"`` raises :class:`GuardFailure`.
    Invalid input (wrong dtype, rank, shape) is the caller's error and always raises
    :class:`InvalidInputError` before the model runs.
    """

    def __init__(
        self,
        guard: Guard,
        predict: Callable[[np.ndarray], P],
        *,
        on_ood: str,
        fallback: Callable[[np.ndarray], Any] | None,
        on_error: str,
    ) -> None:
        if on_ood not in ("flag", "raise", "fallback"):
            raise ValueError(f"on_ood must be 'flag', 'raise' or 'fallback'. Got {on_ood!r}")
        if on_error not in ("open", "closed"):
            raise ValueError(f"on_error must be 'open' or 'closed'. Got {on_error!r}")
        if (on_ood == "fallback") != (fallback is not None):
            raise ValueError("pass fallback= exactly when on_ood='fallback'")
        self.guard, self.predict, self.fallback = guard, predict, fallback
        self.on_ood, self.on_error = on_ood, on_error

    def _timed(self, fn: Callable[[np.ndarray], Any], x: np.ndarray) -> Any:
        t0 = time.perf_counter()
        out = fn(x)
        if self.guard.metrics is not None:
            self.guard.metrics.observe_model(time.perf_counter() - t0)
        return out

    def __call__(self, x: Any) -> GuardedOutput[P]:
        try:
            result = self.guard.check(x)
        except InvalidInputError:
            raise
        except Exception as err:  # the guard must never take the host model down with it
            kind = type(err).__name__
            if self.guard.metrics is not None:
                self.guard.metrics.observe_failure(kind)
            if self.on_error == "closed":
                raise GuardFailure(f"guard {self.guard.name!r} failed: {kind}: {err}") from err
            log.warning("guard %r failed (%s); serving unguarded (on_error='open')",
                        self.guard.name, kind)
            return GuardedOutput(self._timed(self.predict, x), None)
        if self.on_ood == "raise" and result.n_ood:
            raise OODInputError(
                f"{result.n_ood} of {len(result)} inputs are out of distribution "
                f"(p ≤ {result.alpha:g}); rows {np.flatnonzero(result.is_ood)[:10].tolist()}",
                result=result,
            )
        if self.on_ood == "fallback" and result.n_ood:
            assert_fallback = self.fallback
            if assert_fallback is None:  # excluded in __init__; narrows the type
                raise GuardFailure("fallback policy without a fallback")
            xa = np.asarray(x)
            ood = result.is_ood
            parts_in = self._timed(self.predict, xa[~ood]) if (~ood).any() else None
            parts_ood = np.asarray(assert_fallback(xa[ood]))
            pred_in = None if parts_in is None else np.asarray(parts_in)
            dtype = parts_ood.dtype if pred_in is None else np.result_type(parts_ood, pred_in)
            merged = np.empty((len(xa), *parts_ood.shape[1:]), dtype=dtype)
            merged[ood] = parts_ood
            if pred_in is not None:
                merged[~ood] = pred_in
            return GuardedOutput(merged, result)  # type: ignore[arg-type]
        return GuardedOutput(self._timed(self.predict, x), result)
