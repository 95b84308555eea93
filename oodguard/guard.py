"""The guard: load a bundle, score batches, decide, and guard a model's inference.

Every valid input gets a verdict or a :class:`GuardFailure`, never another error: the engine's
output is checked (shape ``(N, F)`` and float32, else a failure; finite rows with non-finite
features are flagged OOD and counted, see :meth:`Guard.check`) and an optional timeout bounds
the wait (see :mod:`oodguard.engine.timed`: stalled runs never pile up). Failures are counted
(``observe_failure(reason)``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from oodguard._version import __version__
from oodguard.bundle import (
    CALIBRATION_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    Bundle,
    InputSpec,
    Manifest,
    load_calibration,
    read_bundle,
)
from oodguard.bundle.reference import ParityReport, compare, parse_reference
from oodguard.decisions import batch_decisions, score_threshold
from oodguard.drift import DriftMonitor, DriftSettings
from oodguard.engine import Engine, check_features
from oodguard.engine.timed import TimedRuns
from oodguard.errors import (
    BundleError,
    GuardFailure,
    InvalidInputError,
    InvalidParameterError,
    check_parameter,
)
from oodguard.results import CheckResult
from oodguard.scoring import Scorer
from oodguard.validation import NONFINITE_POLICIES, check_fdr, check_timeout, validate_batch
from oodguard.wrap import GuardedModel

__all__ = ["Guard"]

log = logging.getLogger(__name__)

P = TypeVar("P")
_DEFAULT: Any = object()  # "the global prometheus registry", distinct from None ("no metrics")


class Guard:
    """An OOD guard over one bundle. Create it with :meth:`load`.

    Thread-safe: :meth:`check` and wrapped models may be called from many threads at once; the
    guard holds no mutable state besides its (thread-safe) metrics, its drift monitor (one
    lock) and the thread that runs timed checks. Fork-safe: a child process drops the inherited
    threads and starts new ones.
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
        timeout_s: float | None = None,
        strict: bool = True,
        drift: float | DriftSettings | None = None,
    ) -> None:
        self.timeout_s = check_timeout(timeout_s)
        check_parameter(isinstance(strict, bool), "strict", "True or False", strict,
                        owner="Guard")
        check_parameter(nonfinite in NONFINITE_POLICIES, "nonfinite",
                        f"one of {NONFINITE_POLICIES}", nonfinite, owner="Guard")
        # NotCalibratedError without calibration.json; parsed by read_bundle, within bounds;
        # Scorer.from_dict checks the numbers.
        doc = load_calibration(bundle)
        self.bundle = bundle
        self.name = name
        self.nonfinite = nonfinite
        self.scorer = Scorer.from_dict(doc, bundle.manifest.feature_names)
        n = len(self.scorer.calibration_scores)
        check_parameter(
            alpha is None or (not isinstance(alpha, bool)
                              and isinstance(alpha, (int, float, np.floating))
                              and 1.0 / (n + 1) <= alpha < 1.0),
            "alpha", f"None or a float in [1/(n+1), 1) = [{1 / (n + 1):.4g}, 1) for this "
            f"calibration (n={n})", alpha, owner="Guard",
            fix="Calibrate on more data for a smaller alpha.")
        self.alpha = self.scorer.alpha if alpha is None else float(alpha)
        if self.scorer.groups is not None:
            self.scorer.groups.check_alpha(self.alpha, owner="Guard")
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
        self.drift: DriftMonitor | None = (
            None if drift is None else DriftMonitor(n, _drift_settings(drift)))
        self.metrics = self._make_metrics(registry)
        if self.metrics is not None and self.drift is not None:
            self.metrics.watch_drift(self.drift)
        self._timed = TimedRuns(name)
        self.parity = self._check_parity(strict)

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
        timeout_s : default bound, in seconds, on the engine's part of each check (``None``:
            wait as long as it takes); see :meth:`check`
        strict : a bundle whose reference features (``reference.npz``, written by the
            exporter) this engine does not reproduce within the export's tolerance is a
            ``BundleError`` (True), or a logged warning (False); either way
            ``oodguard_parity_ok`` says so in the metrics, and :attr:`parity` holds the report
            (None for a bundle without reference features)
        drift : float in (0, 1) or DriftSettings, optional
            Watch the stream of checked rows for drift (:attr:`drift`, a
            :class:`~oodguard.drift.DriftMonitor`): a float is the probability ε of any false
            alarm over an unbounded stream of rows exchangeable with the calibration data
            (docs/drift.md); ``None`` (default) watches nothing

        Raises
        ------
        BundleError, NotCalibratedError, MissingDependencyError
        """
        return cls(read_bundle(path), **kwargs)

    def _make_metrics(self, registry: Any) -> Any:
        if registry is None:
            return None
        from oodguard.metrics import DEFAULT_REGISTRY, GuardMetrics, score_scale

        m = self.manifest
        return GuardMetrics(
            DEFAULT_REGISTRY if registry is _DEFAULT else registry,
            self.name,
            score_scale=score_scale(self.scorer.calibration_scores, self.threshold),
            threshold=self.threshold,
            info={
                "sha256": self.bundle.sha256(MODEL_FILE),
                "calibration_sha256": self.bundle.sha256(CALIBRATION_FILE),
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
    def check(self, x: Any, *, fdr: float | None = None,
              timeout_s: float | None = _DEFAULT, groups: Any = None) -> CheckResult:
        """Score a batch.

        Parameters
        ----------
        x : array of floats, shape (N, *input_shape)
            float32 is used as is; float16/float64 are cast; a torch tensor (any device, with
            or without grad) is detached and copied to host memory. See
            :mod:`oodguard.validation` for every outcome of bad input.
        fdr : float in (0, 1), optional
            Decide with Benjamini–Hochberg at this false discovery rate over the batch instead
            of ``p ≤ alpha`` row by row (see :mod:`oodguard.decisions`); verdicts then depend
            on the batch.
        timeout_s : float or None, optional
            Bound on the engine's part of this check (default: the guard's ``timeout_s``).
        groups : array-like of shape (N,), optional
            Each row's group (for a classifier, its class), for a bundle calibrated with
            ``calibrate(..., groups=...)``: a row's p-value then comes from its own group's
            calibration scores, so the false-positive rate holds group by group
            (:mod:`oodguard.groups`). The drift monitor keeps betting on the pooled p-values.

        Returns
        -------
        CheckResult
            Scores (higher = more OOD), conformal p-values and verdicts.

        Raises
        ------
        InvalidInputError
            Wrong type, dtype, rank or shape; or non-finite rows with ``nonfinite="raise"``.
        GuardFailure
            The engine raised, returned features of the wrong shape or dtype, or timed out
            (``reason`` says which); counted in the metrics. A finite row whose features come
            back non-finite (an input that overflows float32 in the graph, or an engine fault)
            is not an error: it is flagged OOD (score +inf, p-value 0) and counted as a
            failure of kind ``"output_nonfinite"``.
            ``groups`` that are not one label per row, hold a label without calibration, or
            are given for a bundle calibrated without groups (``reason="group"``).
        ValueError
            ``fdr`` or ``timeout_s`` out of range.
        """
        t0 = time.perf_counter()
        q = check_fdr(fdr)
        timeout = self.timeout_s if timeout_s is _DEFAULT else check_timeout(timeout_s)
        try:
            x32, finite = validate_batch(x, self.input_spec, nonfinite=self.nonfinite)
        except InvalidInputError as err:
            if self.metrics is not None:
                self.metrics.observe_refused(err.reason, _rows(x, len(self.input_spec.shape)))
            raise
        tv = time.perf_counter()
        n = len(x32)
        rule = "alpha" if q is None else "bh"
        if n == 0:
            empty = np.empty(0)
            return CheckResult(
                empty, empty, empty.astype(bool), np.empty((0, len(self.feature_names)),
                                                           np.float32),
                self.feature_names, self.alpha, self.threshold, rule, q,
            )
        try:
            if finite is None:
                features = self._features(x32, timeout)
            else:
                features = np.full((n, len(self.feature_names)), np.nan, dtype=np.float32)
                if finite.any():
                    features[finite] = self._features(np.ascontiguousarray(x32[finite]),
                                                      timeout)
                if self.metrics is not None:
                    self.metrics.observe_refused("non_finite", int((~finite).sum()))
        except GuardFailure as err:
            if self.metrics is not None:
                self.metrics.observe_failure(err.reason)
            raise
        t1 = time.perf_counter()
        score = self.scorer.score(features)
        if groups is None:
            p = pooled = self.scorer.p_value(score)
        else:
            try:
                p = self.scorer.p_value(score, groups)
            except InvalidInputError as err:
                if self.metrics is not None:
                    self.metrics.observe_refused(err.reason, n)
                raise
            # the drift monitor bets on the pooled p-values; computed only for it
            pooled = self.scorer.p_value(score) if self.drift is not None else p
        # Non-finite input rows (flagged without a score) and finite input whose features are
        # not finite: float32 overflow of an input far outside the training range, or a faulty
        # engine — the two cannot be told apart here. Either way the row is flagged (never
        # served as in-distribution: bad input must not bypass the guard through
        # on_error="open") and the second kind is counted as a guard failure.
        if finite is not None:
            score[~finite] = np.inf
            p[~finite] = pooled[~finite] = 0.0
        # (not features.sum(): inf + -inf would raise numpy's RuntimeWarning in the host's
        # process, an error under -W error)
        if not np.isfinite(features).all():
            overflow = ~np.isfinite(features).all(axis=1)
            if finite is not None:
                overflow &= finite
            if overflow.any():
                score[overflow] = np.inf
                p[overflow] = pooled[overflow] = 0.0
                if self.metrics is not None:
                    self.metrics.observe_failure("output_nonfinite")
                log.warning("guard %r: non-finite features for %d finite input rows; flagged "
                            "OOD", self.name, int(overflow.sum()))
        is_ood = p <= self.alpha if q is None else batch_decisions(score, p, q)
        if self.drift is not None:  # reads the p-values; the row's result is already made
            self.drift.update(pooled)
        t2 = time.perf_counter()
        if self.metrics is not None:
            self.metrics.observe_check(
                score, p, int(is_ood.sum()), engine_s=t1 - tv, scoring_s=t2 - t1, total_s=t2 - t0
            )
        return CheckResult(score, p, is_ood, features, self.feature_names, self.alpha,
                           self.threshold, rule, q)

    def _check_parity(self, strict: bool) -> ParityReport | None:
        """Run the bundle's reference inputs through this guard's own engine, on the provider
        it actually uses, and compare with the exporter's features (see
        :mod:`oodguard.bundle.reference`)."""
        data = self.bundle.files.get(REFERENCE_FILE)
        if data is None:
            return None
        ref = parse_reference(data, self.input_spec, len(self.feature_names))
        try:
            got = check_features(self.engine.run(ref.inputs), len(ref.inputs),
                                 len(self.feature_names))
        except Exception as err:
            raise BundleError(f"bundle {self.bundle.path}: the engine failed on the bundle's "
                              f"reference inputs on {self.providers[0]} "
                              f"({type(err).__name__}: {err})") from err
        report = compare(got, ref, self.feature_names)
        if self.metrics is not None:
            self.metrics.observe_parity(report.ok, report.max_ratio, self.providers[0])
        if not report.ok:
            msg = (f"bundle {self.bundle.path}: on {self.providers[0]} the guard's features "
                   f"differ from those the exporter computed: {report.describe()}")
            if strict:
                raise BundleError(msg + "; scores here would not be the scores validated at "
                                  "export. Re-export on this execution provider, or load with "
                                  "strict=False to serve anyway (a warning, and "
                                  "oodguard_parity_ok 0 in the metrics)")
            log.warning("%s; serving anyway (strict=False)", msg)
        return report

    def _features(self, x32: np.ndarray, timeout: float | None) -> np.ndarray:
        """The engine's features for finite rows, checked; any fault is a GuardFailure."""
        n, nf = len(x32), len(self.feature_names)
        try:
            if timeout is None:
                features = self.engine.run(x32)
            else:
                features = self._timed.run(self.engine, x32, timeout)
            features = check_features(features, n, nf)
        except GuardFailure:
            raise
        except Exception as err:  # the engine's (onnxruntime's) own exception types
            raise GuardFailure(
                f"guard {self.name!r}: the engine failed on a batch of {n} rows "
                f"({type(err).__name__}: {err})", reason="engine_error",
            ) from err
        return features

    def wrap(
        self,
        predict: Callable[[Any], P],
        *,
        on_ood: str = "flag",
        fallback: Callable[[Any], Any] | None = None,
        on_error: str = "open",
        fdr: float | None = None,
        timeout_s: float | None = _DEFAULT,
        group_by: str | None = None,
    ) -> GuardedModel[P]:
        """Guard a model's inference; see :class:`GuardedModel` for the policies.

        ``fdr`` and ``timeout_s`` are passed to every :meth:`check`. ``group_by="prediction"``
        checks each row against the calibration of the class the model predicts for it (a
        bundle calibrated with ``calibrate(..., groups=y)``; see :class:`GuardedModel`).
        """
        if group_by == "prediction" and self.scorer.groups is None:
            raise InvalidParameterError(
                "The 'group_by' parameter of Guard.wrap needs a bundle calibrated per group "
                "(calibrate(..., groups=labels)); this one has one calibration for all rows.",
                parameter="group_by")
        timeout = self.timeout_s if timeout_s is _DEFAULT else check_timeout(timeout_s)
        return GuardedModel(self, predict, on_ood=on_ood, fallback=fallback, on_error=on_error,
                            fdr=check_fdr(fdr), timeout_s=timeout, group_by=group_by)

    def close(self) -> None:
        """Stop the guard's threads (the engine's and the timed checks'); it stays usable."""
        self._timed.close()
        self.engine.close()


def _drift_settings(drift: Any) -> DriftSettings:
    if isinstance(drift, DriftSettings):
        return drift
    check_parameter(bool(not isinstance(drift, bool)
                         and isinstance(drift, (int, float, np.floating)) and 0.0 < drift < 1.0),
                    "drift", "None, a float in (0, 1) (the false-alarm probability) or a "
                    "DriftSettings", drift, owner="Guard")
    return DriftSettings(false_alarm=float(drift))


def _rows(x: Any, sample_rank: int) -> int:
    """How many inputs a refused batch held: its first axis when its rank is right, else 1
    (a wrong-rank array has no trustworthy batch axis)."""
    shape = getattr(x, "shape", None)
    if shape is not None and len(shape) == sample_rank + 1:
        return max(int(shape[0]), 1)
    return 1

