"""Restarts for the conformal test martingale that keep its probability guarantee.

A test martingale from row 0 pays for a calm past: on exchangeable rows each calibration-
conditional p-value costs about 0.2 nats (``E[−log p̃] < 1``), and a change after ``T`` calm rows
must first win that back. The fix that keeps Ville's inequality: a *mixture over start times*.
A power-mixture martingale started at row ``c`` (equal to 1 before it) is again a test
martingale, and so is any mixture ``½·M_{0→t} + ½·Σ_k π_k·M_{c_k→t}`` with ``Σ π_k ≤ 1``. The
starts are checkpoints every ``EVERY`` rows, the ``k``-th weighted
``π_k = 1/(Z·(k + 1)·log²(k + 1))`` (a change after ``k`` checkpoints costs about
``log k + 2·log log k`` nats, against about 0.2 nats per calm row without restarts). Only the
last ``KEEP`` checkpoints are kept: dropping a component only lowers the statistic, so an alarm
on what is kept still implies the full mixture crossed — Ville still applies.

Each start's power mixture depends only on ``(t − c, S_t − S_c)`` (:func:`log_power_mixtures`),
so a start costs two numbers. The alarm is tested every ``CHECK`` rows (a stopping time like any
other: an alarm there still means the mixture crossed, and the alarm comes at most ``CHECK − 1``
rows late), first with ``D_t − min_c D_c ≥ limit`` (``D = S − t``;
``log M_{c→t} ≤ (S_t − S_c) − (t − c)``), and the mixture itself only when that holds; it is
also evaluated when read.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

__all__ = ["CHECK", "EVERY", "KEEP", "WEIGHT_NORMALIZER", "RestartMixture", "log_power_mixtures"]

EVERY = 128  # rows between checkpoints
KEEP = 32  # checkpoints kept (the last KEEP · EVERY rows)
CHECK = 16  # the mixture is tested every CHECK rows (Ville holds at any stopping time)
# Σ_{k≥1} 1/((k+1)·ln²(k+1)) < 2.11 (the terms to 10^6, plus ∫ from 10^6 of dx/(x ln² x) =
# 1/ln(10^6) = 0.072); Z = 2.2 keeps Σ π_k ≤ 1
WEIGHT_NORMALIZER = 2.2


def log_power_mixtures(kappas: np.ndarray, t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``log mean_κ κ^t·exp((1 − κ)·s)`` for each ``(t[i], s[i])``."""
    terms = t[:, None] * np.log(kappas) + (1.0 - kappas) * s[:, None]
    top = terms.max(axis=1)
    return np.asarray(top + np.log(np.exp(terms - top[:, None]).sum(axis=1))
                      - math.log(len(kappas)))


def _log_weight(k: int) -> float:
    return -math.log(WEIGHT_NORMALIZER) - math.log(k + 1.0) - 2.0 * math.log(math.log(k + 1.0))


class RestartMixture:
    """The checkpoints of one monitor (not thread-safe: the monitor's lock guards it)."""

    def __init__(self, kappas: np.ndarray) -> None:
        self.kappas = kappas
        self.starts: deque[tuple[int, float, float]] = deque(maxlen=KEEP)  # (t, S, log π)
        self.count = 0
        self.d_min = 0.0  # min of D = S − t over row 0 and the kept checkpoints

    def add(self, t: int, s: float) -> None:
        """A checkpoint after row ``t`` (call when ``t % EVERY == 0``)."""
        self.count += 1
        self.starts.append((t, s, _log_weight(self.count)))
        self.d_min = min([0.0, *(sc - tc for tc, sc, _ in self.starts)])

    def log_value(self, t: int, s: float) -> float:
        """``log(½·M_{0→t} + ½·Σ_k π_k·M_{c_k→t})`` over the kept checkpoints."""
        ts = np.array([float(t), *(float(t - tc) for tc, _, _ in self.starts)])
        ss = np.array([s, *(s - sc for _, sc, _ in self.starts)])
        logw = np.array([0.0, *(lw for _, _, lw in self.starts)]) - math.log(2.0)
        ok = ts > 0  # a checkpoint at this very row has seen nothing yet: M = 1
        logs = np.where(ok, 0.0, 0.0)
        if ok.any():
            logs[ok] = log_power_mixtures(self.kappas, ts[ok], ss[ok])
        terms = logw + logs
        top = float(terms.max())
        return top + math.log(float(np.exp(terms - top).sum()))
