"""The guard as a service, for any transport: validate ▶ check (coalesced or alone) ▶ result.

:class:`InferenceService` takes a decoded batch and its parameters and returns the guard's
:class:`~oodguard.guard.CheckResult`; it knows nothing of HTTP. The HTTP app
(:mod:`oodguard.serve.app`) decodes a request, makes this one call and encodes the answer; the
Ray Serve deployment (:mod:`oodguard.integrations.ray.serve`) builds the same app around its
own batcher, so both serve through the same :meth:`InferenceService.infer`.

What it counts, so that ``/metrics`` agrees with what clients receive:

* a refused request: its carried rows (at least 1, at most ``max_request_rows``) in
  ``oodguard_inputs_refused_total`` — by the guard's reason token;
* a checked request: the guard's own ``check`` records its rows and verdicts (for a request
  with ``fdr``, the Benjamini–Hochberg verdicts it returns; see :mod:`oodguard.serve.batching`);
* a failure: ``GuardFailure`` is counted by the guard; anything else (a bug) is counted here as
  kind ``internal`` and raised as a ``GuardFailure``.
"""

from __future__ import annotations

import logging

import numpy as np

from oodguard.errors import GuardFailure, InvalidInputError
from oodguard.guard import Guard
from oodguard.results import CheckResult
from oodguard.serve.batching import BatchRunner
from oodguard.serve.reload import LiveGuard
from oodguard.validation import validate_batch

__all__ = ["InferenceService"]

log = logging.getLogger(__name__)


class InferenceService:
    """A guard behind a batcher, with refusal and failure accounting.

    Parameters
    ----------
    guard : the guard whose ``check`` scores every batch (its metrics, if any, are the
        service's)
    batcher : what coalesces validated requests into guard calls
        (:class:`~oodguard.serve.batching.Batcher`, or Ray Serve's)
    max_request_rows : the most rows one refusal may count (the most one request may hold)
    """

    def __init__(self, guard: Guard | LiveGuard, batcher: BatchRunner, *,
                 max_request_rows: int) -> None:
        if not isinstance(max_request_rows, int) or max_request_rows < 1:
            raise ValueError(f"max_request_rows must be a positive int. Got {max_request_rows!r}")
        self.guard, self.batcher, self.max_request_rows = guard, batcher, max_request_rows
        if guard.metrics is not None:
            guard.metrics.init_http()  # refusal and drop series at 0 before the first request

    async def start(self) -> None:
        """Start the batcher (in the serving event loop)."""
        await self.batcher.start()

    async def stop(self) -> None:
        """Finish what is queued, then stop the batcher."""
        await self.batcher.stop()

    async def infer(self, x: np.ndarray, *, fdr: float | None = None) -> CheckResult:
        """Check one request's batch.

        Parameters
        ----------
        x : ndarray of float32, shape (N, *input_shape), as decoded from the request
        fdr : decide ``is_ood`` by Benjamini–Hochberg at this level over these rows only
            (None: ``p_value <= alpha`` row by row); checked by the caller
            (:func:`oodguard.validation.check_fdr`)

        Returns
        -------
        CheckResult
            This request's rows: scores (higher = more OOD), p-values, verdicts, features.

        Raises
        ------
        InvalidInputError
            ``x`` does not fit the bundle (counted as refused, by its rows).
        GuardFailure
            The guard failed (counted; ``reason`` is the failure kind).
        """
        try:  # per request, so that one bad request never fails a coalesced batch
            validate_batch(x, self.guard.input_spec, nonfinite=self.guard.nonfinite)
        except InvalidInputError as err:
            self.refused(err.reason, len(x))
            raise
        try:
            return await self.batcher.submit(x, fdr=fdr)
        except GuardFailure:  # guard.check counted it
            log.exception("guard failed on a batch")
            raise
        except Exception as err:
            # "internal" is a label whose series exists from the start (an exception's class
            # name would start a new series at 1, and its first event would never alert); the
            # log names the exception.
            log.exception("guard failed on a batch")
            if self.guard.metrics is not None:
                self.guard.metrics.observe_failure("internal")
            raise GuardFailure(f"guard {self.guard.name!r}: internal error "
                               f"({type(err).__name__})", reason="internal") from err

    def refused(self, reason: str, rows: int) -> None:
        """Count a refused request: ``rows`` it carried, at least 1, at most
        ``max_request_rows``; ``reason`` is a fixed token."""
        if self.guard.metrics is not None:
            self.guard.metrics.observe_refused(reason, max(1, min(rows, self.max_request_rows)))

    def dropped(self, reason: str) -> None:
        """Count a request ended before its inputs were read; ``reason`` is a fixed token."""
        if self.guard.metrics is not None:
            self.guard.metrics.observe_dropped(reason)
