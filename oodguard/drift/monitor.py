"""The drift monitor: a conformal test martingale over a guard's per-row p-values.

Every checked row's conformal p-value ``p`` is replaced by its calibration-conditional value
``p̃`` (:func:`oodguard.drift.bound.conditional_p_values`, which holds for the calibration set
with probability ``≥ 1 − δ``); on rows exchangeable with the calibration data the ``p̃`` are
then i.i.d. and super-uniform, so each power martingale ``Π κ·p̃_i^(κ−1)`` (``κ`` in (0, 1]) is
a nonnegative supermartingale from 1, and so is their mixture ``M_t`` over the powers
:data:`KAPPAS` (equal weights). Ville's inequality bounds ``P(sup_t M_t ≥ 1/ε') ≤ ε'`` over the
whole unbounded stream: the total false-alarm probability is ``≤ δ + ε' = ε``, the split being
:attr:`DriftSettings.delta_share` (default ``δ = ε/5``, ``ε' = 4ε/5``). A power martingale
depends on the stream only through the row count ``t`` and ``s = Σ −log p̃``, so the monitor
keeps two numbers. docs/drift.md derives it.

By default (``statistic="restarting"``) the monitor also mixes in martingales started at
checkpoints every 128 rows (:mod:`oodguard.drift.restart`): still a test martingale (the same
ε), but a change after a long calm period no longer pays back what the calm cost the
martingale from row 0 (about 0.2 nats per row at n = 1 000).

Two change detectors of the same bets are offered beside it, whose guarantee is an *average
run length* to a false alarm, not a probability: per power ``κ`` (bet ``g = κ·p̃^(κ−1)``),
Shiryaev–Roberts ``R_t = (1 + R_{t−1})·g_t`` or CUSUM ``C_t = max(C_{t−1}, 1)·g_t``, averaged
over the powers and alarming at ``A = arl`` (``R_t − t`` is a supermartingale, so
``E[τ] ≥ A``; ``C_t ≤ R_t``). They cost O(len(KAPPAS)) per row. They forget a calm past: a
change does not pay back the evidence the martingale lost before it.

Cost: O(1) time and memory per row (a table lookup, two adds and a comparison; the table holds
``−log p̃`` for the ``n + 1`` possible p-values; the mixture is evaluated only when a cheap bound
says it may have crossed, and when read; the restarts add a checkpoint every 128 rows, at most
32 kept). Thread-safe (one lock); fork-safe (the child renews the lock and keeps the parent's
state, then watches its own traffic). A row's score is never touched: the monitor reads the
p-values after the check computed them.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from oodguard.drift.bound import conditional_p_values
from oodguard.drift.restart import CHECK, EVERY, RestartMixture, log_power_mixtures
from oodguard.errors import check_parameter

__all__ = ["KAPPAS", "STATISTICS", "DriftMonitor", "DriftSettings", "DriftState",
           "log_power_mixture"]

#: ``"martingale"`` (probability ε over an unbounded stream, the default) and the two
#: average-run-length detectors
STATISTICS = ("martingale", "shiryaev_roberts", "cusum", "restarting")
#: the statistics whose guarantee is a probability over an unbounded stream (``false_alarm``)
PROBABILITY_STATISTICS = ("martingale", "restarting")
_LN10 = math.log(10.0)


@dataclass(frozen=True, kw_only=True)
class DriftSettings:
    """How a guard watches its stream.

    Parameters
    ----------
    false_alarm : float in (0, 1)
        ε: for ``statistic="martingale"``, the probability of any false alarm over an
        unbounded stream of rows exchangeable with the calibration data.
    delta_share : float in (0, 1)
        Share of ε spent on the calibration-conditional bound: ``δ = delta_share·ε``, and the
        martingale alarms at ``1/ε'`` with ``ε' = ε − δ``.
    statistic : one of :data:`STATISTICS`
        ``"restarting"`` (default): the power-mixture martingale mixed over start times
        (:mod:`oodguard.drift.restart`), so a change after a long calm period does not pay
        back the calm; ``"martingale"``: the same from row 0 only (O(1) per row, slightly
        sooner on a change at the very start). Both keep ``false_alarm`` as a probability over
        an unbounded stream; ``"shiryaev_roberts"`` and ``"cusum"`` have an average run length
        instead (``arl``).
    arl : float > 1, optional
        For ``"shiryaev_roberts"`` and ``"cusum"`` (required there, refused otherwise): the
        alarm threshold ``A``, a lower bound on the mean number of rows to a false alarm.
    """

    false_alarm: float = 0.05
    delta_share: float = 0.2
    statistic: str = "restarting"
    arl: float | None = None

    def __post_init__(self) -> None:
        def unit(v: Any) -> bool:
            return bool(not isinstance(v, bool) and isinstance(v, (int, float, np.floating))
                        and 0.0 < v < 1.0)

        check_parameter(unit(self.false_alarm), "false_alarm", "a float in (0, 1)",
                        self.false_alarm, owner="DriftSettings")
        check_parameter(unit(self.delta_share), "delta_share", "a float in (0, 1)",
                        self.delta_share, owner="DriftSettings")
        check_parameter(self.statistic in STATISTICS, "statistic", f"one of {STATISTICS}",
                        self.statistic, owner="DriftSettings")
        needs = self.statistic not in PROBABILITY_STATISTICS
        ok_arl = (self.arl is None if not needs else
                  not isinstance(self.arl, bool) and isinstance(self.arl, (int, float))
                  and math.isfinite(self.arl) and self.arl > 1)
        check_parameter(ok_arl, "arl", "a float > 1 for statistic='shiryaev_roberts' or "
                        "'cusum', and None for 'martingale' or 'restarting'", self.arl,
                        owner="DriftSettings")

    @property
    def delta(self) -> float:
        """δ, the probability that the calibration set breaks the conditional bound."""
        return self.delta_share * self.false_alarm

    @property
    def threshold_log10(self) -> float:
        """log10 of the statistic's alarm threshold: ``1/ε'`` or ``A``."""
        if self.statistic in PROBABILITY_STATISTICS:
            return -math.log10(self.false_alarm - self.delta)
        return math.log10(float(self.arl or 0.0) or math.inf)  # arl is set (__post_init__)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftSettings:
        return cls(**d)


@dataclass(frozen=True)
class DriftState:
    """A consistent snapshot of a monitor (see :meth:`DriftMonitor.state`)."""

    evidence: float
    alarm: bool
    alarms: int
    rows: int
    rows_at_alarm: int | None
    threshold: float
    statistic: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (an evidence of −inf — SR or CUSUM before any row — is None)."""
        d = asdict(self)
        if not math.isfinite(self.evidence):
            d["evidence"] = None
        return d


_monitors: weakref.WeakSet[DriftMonitor] = weakref.WeakSet()

#: the powers ``κ = 1 − η`` of the mixture, ``η`` log-spaced from 1e-6 to 0.99 with equal
#: weights: powers near 1 keep the evidence lost on a calm stream to about the log of its length,
#: small powers bet hard on extreme rows
KAPPAS = 1.0 - np.logspace(-6.0, math.log10(0.99), 49)
_LOG_W = -math.log(len(KAPPAS))


def log_power_mixture(t: int, s: float) -> float:
    """``log M`` of the mixture martingale after ``t`` rows with ``s = Σ −log p̃``:
    ``M = mean_κ κ^t·exp((1 − κ)·s)`` (each power martingale ``Π κ·p̃^(κ−1)`` depends on the
    stream only through ``t`` and ``s``)."""
    return float(_log_mixtures(np.array([float(t)]), np.array([float(s)]))[0])


def _log_mixtures(t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """:func:`log_power_mixture` of each ``(t[i], s[i])`` (one code path for one row or many,
    so the alarm row does not depend on the batching)."""
    return log_power_mixtures(KAPPAS, t, s)


def _power_bound(t: float, s: float) -> float:
    """``sup_κ∈(0,1] log(κ^t·e^((1−κ)s))`` ≥ :func:`log_power_mixture`: ``s − t − t·log(s/t)``
    when ``s > t``, else 0 — a cheap test that the mixture cannot have crossed."""
    return s - t - t * math.log(s / t) if s > t > 0 else 0.0


class DriftMonitor:
    """Watches the stream of a guard's conformal p-values (see the module docstring).

    Parameters
    ----------
    calibration_size : int
        ``n``, the calibration scores behind the p-values (``p = (1 + #{cal ≥ s})/(n + 1)``).
    settings : DriftSettings or float
        A float is ``DriftSettings(false_alarm=...)``.

    Attributes
    ----------
    alarms : int
        Alarms raised since the monitor was made (a reset does not clear it).
    """

    def __init__(self, calibration_size: int, settings: DriftSettings | float = 0.05) -> None:
        if not isinstance(settings, DriftSettings):
            settings = DriftSettings(false_alarm=settings)
        self.settings = settings
        n = int(calibration_size)
        self.n = n
        # −log p̃ for each of the n + 1 conformal p-values, indexed by #{cal ≥ s}
        self._surprise = -np.log(conditional_p_values(n, settings.delta))
        self._surprise_list: list[float] = self._surprise.tolist()
        self._scale = float(n + 1)
        self._mode = STATISTICS.index(settings.statistic)
        self._restarts: RestartMixture | None = None
        self._limit = settings.threshold_log10 * _LN10  # natural log of the threshold
        self._lock = threading.Lock()
        self.alarms = 0
        self._reset_locked()
        _monitors.add(self)

    def _reset_locked(self) -> None:
        if self._mode == 3:
            self._restarts = RestartMixture(KAPPAS)
        self._t = 0  # rows since the reset
        self._s = 0.0  # Σ −log p̃ (martingale)
        self._logs = np.full(len(KAPPAS), -math.inf)  # per power: log R or log C (SR, CUSUM)
        self._alarm = False
        self._rows_at_alarm: int | None = None

    def reset(self) -> None:
        """Start again from the current row (after a recalibration, or once an alarm was
        handled); the count of alarms is kept."""
        with self._lock:
            self._reset_locked()

    def update(self, p_values: np.ndarray) -> None:
        """Bet on a batch of conformal p-values (float ``[N]``, in checking order; 0 — a row
        flagged without a score — bets as the smallest p-value)."""
        m = len(p_values)
        if m == 1 and self._mode == 3:
            j = int(float(p_values[0]) * self._scale + 0.5) - 1
            u = self._surprise_list[j if 0 <= j <= self.n else (0 if j < 0 else self.n)]
            with self._lock:
                self._step_restarting(u)
            return
        if m == 1 and self._mode == 0:
            j = int(float(p_values[0]) * self._scale + 0.5) - 1
            u = self._surprise_list[j if 0 <= j <= self.n else (0 if j < 0 else self.n)]
            with self._lock:
                t = self._t = self._t + 1
                s = self._s = self._s + u
                if (s > t and not self._alarm and _power_bound(t, s) >= self._limit
                        and log_power_mixture(t, s) >= self._limit):
                    self._raise(t)
            return
        if m == 0:
            return
        idx = np.rint(np.asarray(p_values, dtype=np.float64) * self._scale).astype(np.int64) - 1
        u = self._surprise[np.clip(idx, 0, self.n)]
        with self._lock:
            if self._mode == 0:
                self._update_martingale(u)
            elif self._mode == 3:
                self._update_restarting(u)
            else:
                self._update_detector(u)

    def _update_martingale(self, u: np.ndarray) -> None:
        # sequential sums: the same bits as one row at a time, whatever the batching
        path = np.cumsum(np.concatenate(([self._s], u)))[1:]
        t0 = self._t
        self._t += len(u)
        self._s = float(path[-1])
        if self._alarm:
            return
        ts = np.arange(t0 + 1, self._t + 1, dtype=np.float64)
        rows = np.flatnonzero(path > ts)  # the mixture can only have crossed where S > t
        if len(rows) == 0:
            return
        s, t = path[rows], ts[rows]
        rows = rows[s - t - t * np.log(s / t) >= self._limit]  # sup over the powers
        if len(rows) == 0:
            return
        crossed = np.flatnonzero(_log_mixtures(ts[rows], path[rows]) >= self._limit)
        if len(crossed):
            self._raise(t0 + int(rows[crossed[0]]) + 1)

    def _update_restarting(self, u: np.ndarray) -> None:
        """A batch of :meth:`_step_restarting`, vectorised between checkpoints: the same
        sequential sums, checkpoints and tests, so the same bits as one row at a time."""
        r = self._restarts
        if r is None:  # set for mode 3; narrows the type
            return
        path = np.cumsum(np.concatenate(([self._s], u)))[1:]
        ts = np.arange(self._t + 1, self._t + len(u) + 1)
        start = 0
        for c in np.flatnonzero(ts % EVERY == 0).tolist():
            self._test_segment(r, ts[start:c], path[start:c])  # before the checkpoint
            r.add(int(ts[c]), float(path[c]))  # row c itself is tested after it, as alone
            start = c
        self._test_segment(r, ts[start:], path[start:])
        self._t = int(ts[-1])
        self._s = float(path[-1])

    def _test_segment(self, r: RestartMixture, ts: np.ndarray, path: np.ndarray) -> None:
        """Test the rows of one segment (no checkpoint inside): the cheap bound every CHECK
        rows, then the mixture where it allows a crossing."""
        if self._alarm or len(ts) == 0:
            return
        rows = np.flatnonzero((ts % CHECK == 0) & ((path - ts) - r.d_min >= self._limit))
        for i in rows.tolist():
            t = int(ts[i])
            if r.log_value(t, float(path[i])) >= self._limit:
                self._raise(t)
                return

    def _step_restarting(self, u: float) -> None:
        """One row of the restarting mixture (:mod:`oodguard.drift.restart`), under the lock."""
        r = self._restarts
        if r is None:  # set for mode 3; narrows the type
            return
        t = self._t = self._t + 1
        s = self._s = self._s + u
        if t % EVERY == 0:
            r.add(t, s)
        if (not self._alarm and t % CHECK == 0 and (s - t) - r.d_min >= self._limit
                and r.log_value(t, s) >= self._limit):
            self._raise(t)

    def _update_detector(self, u: np.ndarray) -> None:
        """Shiryaev–Roberts or CUSUM, one per power, row by row."""
        log_k = np.log(KAPPAS)
        slope = 1.0 - KAPPAS
        logs = self._logs
        for ui in u.tolist():
            bet = log_k + slope * ui
            if self._mode == 1:  # log((1 + R)·g)
                logs = np.logaddexp(0.0, logs) + bet
            else:  # log(max(C, 1)·g)
                logs = np.maximum(logs, 0.0) + bet
            self._t += 1
            if not self._alarm and _log_mean_exp(logs) >= self._limit:
                self._raise(self._t)
        self._logs = logs

    def _raise(self, row: int) -> None:
        self._alarm = True
        self._rows_at_alarm = row
        self.alarms += 1

    def _evidence_locked(self) -> float:
        if self._mode == 0:
            return log_power_mixture(self._t, self._s) / _LN10
        if self._restarts is not None:
            return self._restarts.log_value(self._t, self._s) / _LN10
        return _log_mean_exp(self._logs) / _LN10

    @property
    def evidence(self) -> float:
        """log10 of the statistic now (the martingale starts at 0; SR and CUSUM at −inf)."""
        with self._lock:
            return self._evidence_locked()

    @property
    def alarm(self) -> bool:
        """The statistic crossed its threshold since the last :meth:`reset` (it stays set)."""
        return self._alarm

    @property
    def threshold(self) -> float:
        """log10 of the alarm threshold (``1/ε'`` for the martingale, ``A`` otherwise)."""
        return self._limit / _LN10

    def state(self) -> DriftState:
        """A consistent snapshot: evidence (log10), alarm, alarms, rows seen since the last
        reset, the row (1-based, since the reset) at which the alarm was raised, threshold."""
        with self._lock:
            return DriftState(self._evidence_locked(), self._alarm, self.alarms, self._t,
                              self._rows_at_alarm, self._limit / _LN10,
                              self.settings.statistic)

    def _renew_lock(self) -> None:
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        s = self.state()
        return (f"DriftMonitor(statistic={s.statistic!r}, evidence={s.evidence:.3g}, "
                f"threshold={s.threshold:.3g}, alarm={s.alarm}, rows={s.rows})")


def _log_mean_exp(logs: np.ndarray) -> float:
    top = float(logs.max())
    if top == -math.inf:
        return -math.inf
    return top + math.log(float(np.exp(logs - top).sum())) + _LOG_W


def _after_fork_in_child() -> None:
    # A lock another thread of the parent held at the fork would stay held in the child.
    for monitor in list(_monitors):
        monitor._renew_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
