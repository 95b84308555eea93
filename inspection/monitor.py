"""Training dynamics: :class:`AttractorMonitor`, called from the user's own training loop.

>>> monitor = AttractorMonitor(model, x_probe)                     # doctest: +SKIP
>>> for epoch in range(epochs):                                     # doctest: +SKIP
...     train_one_epoch(model)
...     if epoch % 5 == 0:
...         monitor.update(epoch)
>>> monitor.plot("attractors_over_training.png")                   # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from oodguard.inspect.latent_map import TorchMap
from oodguard.inspect.report import inspect_map

__all__ = ["AttractorMonitor", "MonitorRecord"]


@dataclass(frozen=True)
class MonitorRecord:
    """One :meth:`AttractorMonitor.update`: the attractor count (all, from probe codes, from
    Gaussian codes), the memorization coefficient (mean over the probe attractors), the
    median local Lipschitz estimate at probe codes and the fraction of probe codes that
    converged."""

    epoch: int
    attractors: int
    attractors_train: int
    attractors_noise: int
    memorization: float
    lipschitz_median: float
    converged: float


class AttractorMonitor:
    """Record attractor statistics of a model while it trains.

    Parameters
    ----------
    model : torch.nn.Module with ``encode``/``decode``, or ``(encoder, decoder)``
        Switched to ``eval()`` during :meth:`update` and back to the mode it was in.
    x_probe : ndarray, shape (n, *input_shape)
        Training samples whose codes are iterated (keep it small: a few hundred); also the
        memorization coefficient's reference unless ``x_reference`` is given.
    n_noise, max_steps, rel_tol, rel_merge_radius, seed
        As in :func:`~oodguard.inspect.inspect_map` (fewer steps by default: a monitor must
        be cheap).
    """

    def __init__(self, model: Any, x_probe: np.ndarray, *, x_reference: np.ndarray | None = None,
                 n_noise: int = 128, max_steps: int = 200, rel_tol: float = 1e-3,
                 rel_merge_radius: float = 0.05, seed: int = 0) -> None:
        x = np.ascontiguousarray(x_probe, dtype=np.float32)
        if x.ndim < 2 or len(x) == 0:
            raise ValueError(f"x_probe must be a non-empty batch (n, ...); got {x.shape}")
        self.model = model
        self.x_probe = x
        self.x_reference = x if x_reference is None else np.asarray(x_reference, np.float32)
        self.options = {"n_noise": n_noise, "max_steps": max_steps, "rel_tol": rel_tol,
                        "rel_merge_radius": rel_merge_radius, "seed": seed}
        self.history: list[MonitorRecord] = []

    def _modules(self) -> list[Any]:
        return list(self.model) if isinstance(self.model, tuple) else [self.model]

    def update(self, epoch: int) -> MonitorRecord:
        """Measure now; append and return the record."""
        modules = self._modules()
        modes = [bool(getattr(m, "training", False)) for m in modules]
        for m in modules:
            m.eval()
        try:
            latent = TorchMap.from_model(self.model, self.x_probe)
            r = inspect_map(latent, codes=latent.encode(self.x_probe),
                            max_codes=len(self.x_probe), **self.options)
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)
        from oodguard.inspect.measures import memorization_coefficient

        train = r.train_attractors
        mem = (memorization_coefficient(r.decoded[train], self.x_reference).mean
               if train.any() else float("nan"))
        lip = r.lipschitz[np.isfinite(r.lipschitz)]
        record = MonitorRecord(
            epoch=int(epoch), attractors=r.attractor_count,
            attractors_train=int(train.sum()), attractors_noise=int((r.basin_noise > 0).sum()),
            memorization=mem, lipschitz_median=float(np.median(lip)) if len(lip) else np.nan,
            converged=r.scalars["converged_train"] / max(len(self.x_probe), 1))
        self.history.append(record)
        return record

    def to_dict(self) -> dict[str, Any]:
        """The history as columns (JSON-ready; NaN as None)."""
        cols: dict[str, list[Any]] = {k: [] for k in MonitorRecord.__dataclass_fields__}
        for rec in self.history:
            for k, v in asdict(rec).items():
                cols[k].append(None if isinstance(v, float) and not np.isfinite(v) else v)
        return cols

    def plot(self, path: str | os.PathLike[str]) -> str:
        """Attractor counts, memorization coefficient and Lipschitz median over epochs."""
        from oodguard.inspect.plots import plot_monitor

        return plot_monitor(self.to_dict(), path)
