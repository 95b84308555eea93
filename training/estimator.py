"""``oodguard.OODDetector``: :func:`oodguard.fit` in scikit-learn's and PyOD's conventions.

``fit(X)`` splits ``X`` (seeded) into training rows and calibration rows, trains, exports and
calibrates a bundle and keeps it in memory (``bundle_``; written to ``out`` too when given).
Then, as PyOD's detectors:

- ``decision_function(X)``: the calibrated score, higher = more abnormal;
- ``predict(X)``: 1 = outlier (score above ``threshold_``), 0 = inlier;
- ``threshold_``: the score threshold at the calibrated α (``alpha``; the conformal guarantee:
  at most α of in-distribution inputs flagged, on average over calibration sets);
- ``decision_scores_``, ``labels_``: the same on the rows ``fit`` saw;

and, as scikit-learn's outlier detectors, ``score_samples(X)`` = ``-decision_function(X)``
(higher = more normal) and ``fit_predict``. scikit-learn's own outlier-detector checks expect
``predict`` in {-1, 1} and ``decision_function`` higher = more normal; PyOD's convention (which
the issue asks for) is the opposite, so those checks do not apply (``tests/test_estimator.py``
lists each and why).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from oodguard.bundle import read_bundle
from oodguard.errors import check_parameter
from oodguard.guard import Guard
from oodguard.training.fit import fit
from oodguard.training.models import choose_arch
from oodguard.training.trainer import default_recipe

__all__ = ["OODDetector"]


class OODDetector(OutlierMixin, BaseEstimator):
    """An out-of-distribution detector trained on in-distribution rows only.

    Parameters
    ----------
    alpha : float
        Target false-positive rate of ``predict`` (the calibration's α).
    val_fraction : float
        Share of the rows ``fit`` gets that calibrate instead of training (seeded split).
    arch, latent : see :func:`oodguard.fit`.
    max_epochs : int or None
        Cap on training epochs (default: by the data's size; early stopping ends sooner).
    steps : int
        Latent steps ``T`` fused into the graph.
    seed : int
        Seeds the split, the training, the export and the calibration.
    out : path or None
        Also keep the bundle there (``overwrite`` replaces one); default only in memory.
    threads : torch threads while training.
    """

    def __init__(self, *, alpha: float = 0.05, val_fraction: float = 0.3, arch: str = "auto",
                 latent: int | None = None, max_epochs: int | None = None, steps: int = 32,
                 seed: int = 0, out: str | os.PathLike[str] | None = None,
                 overwrite: bool = False, threads: int | None = None) -> None:
        self.alpha = alpha
        self.val_fraction = val_fraction
        self.arch = arch
        self.latent = latent
        self.max_epochs = max_epochs
        self.steps = steps
        self.seed = seed
        self.out = out
        self.overwrite = overwrite
        self.threads = threads

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags

    def fit(self, X: Any, y: Any = None) -> OODDetector:
        """Train, export and calibrate on ``X [n, ...]`` (in-distribution; ``y`` ignored).
        Returns ``self``."""
        check_parameter(isinstance(self.val_fraction, float) and 0 < self.val_fraction < 1,
                        "val_fraction", "a float in (0, 1)", self.val_fraction,
                        owner="OODDetector")
        x = validate_data(self, X, allow_nd=True, dtype=[np.float32, np.float64])
        x = np.ascontiguousarray(x, dtype=np.float32)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(x))
        n_val = int(round(self.val_fraction * len(x)))
        val, train = order[:n_val], order[n_val:]
        recipe = None
        if self.max_epochs is not None:
            import dataclasses

            arch = self.arch if self.arch != "auto" else choose_arch(tuple(x.shape[1:]))
            recipe = dataclasses.replace(default_recipe(len(train), arch),
                                         max_epochs=self.max_epochs)
        with tempfile.TemporaryDirectory(prefix="oodguard-detector-") as tmp:
            out = self.out if self.out is not None else Path(tmp) / "bundle"
            fit(x[train], x[val], out=out, overwrite=self.overwrite, arch=self.arch,
                latent=self.latent, recipe=recipe, steps=self.steps, alpha=self.alpha,
                seed=self.seed, threads=self.threads, progress=False, registry=None)
            self.bundle_ = read_bundle(out)
        self._guard: Guard | None = None
        self.threshold_ = float(self.guard_.scorer.threshold)
        self.decision_scores_ = self.decision_function(x)
        self.labels_ = self.predict(x)
        return self

    @property
    def guard_(self) -> Guard:
        """The :class:`~oodguard.Guard` over the fitted bundle (no metrics registry)."""
        check_is_fitted(self, "bundle_")
        if getattr(self, "_guard", None) is None:
            self._guard = Guard(self.bundle_, registry=None)
        return self._guard  # type: ignore[return-value]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_guard"] = None  # an ONNX Runtime session: rebuilt from bundle_ on first use
        return state

    def _check(self, X: Any) -> Any:
        check_is_fitted(self, "bundle_")
        x = validate_data(self, X, allow_nd=True, reset=False, dtype=[np.float32, np.float64])
        return self.guard_.check(np.ascontiguousarray(x, dtype=np.float32))

    def decision_function(self, X: Any) -> np.ndarray:
        """The calibrated score of each row, float64 ``(n,)``: higher = more abnormal."""
        return np.asarray(self._check(X).score, dtype=np.float64)

    def score_samples(self, X: Any) -> np.ndarray:
        """``-decision_function(X)``: higher = more normal (scikit-learn's convention)."""
        return -self.decision_function(X)

    def predict(self, X: Any) -> np.ndarray:
        """1 = outlier, 0 = inlier (PyOD's convention), int: the guard's verdict (conformal
        p-value ≤ ``alpha``, i.e. score above ``threshold_``)."""
        return np.asarray(self._check(X).is_ood, dtype=int)

    def predict_pvalue(self, X: Any) -> np.ndarray:
        """The conformal p-value of each row (small = unlike the calibration rows)."""
        return np.asarray(self._check(X).p_value, dtype=np.float64)
