"""Offline stage 0 (torch): train an autoencoder when there is none — :func:`fit` trains,
exports and calibrates, on raw inputs or on a classifier's embeddings; :class:`OODDetector`
wraps that in scikit-learn's and PyOD's estimator conventions.

>>> guard = oodguard.fit(x_train, x_val, out="bundle/")             # doctest: +SKIP
"""

from oodguard.training.fit import fit
from oodguard.training.models import (
    ARCHITECTURES,
    MLPAE,
    Conv1dAE,
    ConvAE,
    build_autoencoder,
    choose_arch,
    latent_size,
)
from oodguard.training.recipe import Recipe, TrainingRecord, train
from oodguard.training.trainer import default_recipe, fit_autoencoder

__all__ = [
    "ARCHITECTURES",
    "MLPAE",
    "Conv1dAE",
    "ConvAE",
    "Recipe",
    "TrainingRecord",
    "build_autoencoder",
    "choose_arch",
    "default_recipe",
    "fit",
    "fit_autoencoder",
    "latent_size",
    "train",
]
