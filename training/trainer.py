"""Training an autoencoder for ``oodguard.fit``: the data's shape picks the model, its range
the output and preprocessing, its size the recipe (:func:`fit_autoencoder`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from oodguard._version import __version__
from oodguard.errors import InvalidInputError, check_parameter
from oodguard.export import Standardize
from oodguard.training.models import ARCHITECTURES, build_autoencoder, choose_arch, latent_size
from oodguard.training.recipe import Recipe, train

__all__ = ["MAX_DISCOVERY_CODES", "default_recipe", "fit_autoencoder", "input_array"]

# Attractor discovery iterates at most this many training codes (a seeded subsample): it
# bounds the export's time on large sets (50 000 rows) without changing what it finds.
MAX_DISCOVERY_CODES = 4096
# Rows of training data passed through a (slow) epoch per architecture: the epoch cap is
# this divided by the rows, so that the time budget holds (docs/fit.md has the measurement).
_ROW_BUDGET = {"mlp": 5_000_000, "conv1d": 2_000_000, "conv2d": 1_000_000}


def default_recipe(n: int, arch: str) -> Recipe:
    """The recipe for ``n`` training rows: batch 32 below 4 000 rows, 128 below 16 000, else
    256; at most ``row budget / n`` epochs (between 10 and 200), early stopping after 10."""
    batch = 32 if n < 4000 else 128 if n < 16000 else 256
    epochs = int(min(200, max(10, _ROW_BUDGET[arch] // max(n, 1))))
    return Recipe(max_epochs=epochs, batch_size=batch)


def input_array(x: Any, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``x`` as a float32 batch ``(N, ...)`` with finite values (and samples of ``shape``
    when given); an :class:`InvalidInputError` naming ``name`` otherwise."""
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInputError(f"{name} must hold real numbers; got dtype {arr.dtype}",
                                reason="dtype")
    if arr.ndim < 2 or len(arr) == 0:
        raise InvalidInputError(f"{name} must be a non-empty batch (N, ...) of samples; got "
                                f"shape {arr.shape}", reason="rank")
    if shape is not None and arr.shape[1:] != shape:
        raise InvalidInputError(f"{name} holds samples of shape {arr.shape[1:]}, x_train "
                                f"{shape}; both must hold samples of one shape",
                                reason="shape")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} holds NaN or infinity; drop or repair those rows "
                                "first", reason="non_finite")
    return arr


def fit_autoencoder(
    x: np.ndarray, *, arch: str = "auto", latent: int | None = None,
    recipe: Recipe | None = None, seed: int = 0, progress: bool | None = None,
) -> tuple[torch.nn.Module, Standardize | None, dict[str, Any]]:
    """Train an autoencoder on ``x [N, ...]`` (float32): ``(model, preprocess, record)``.

    Inputs within [0, 1] train a sigmoid-output model on the values as they are; any other
    range is standardised per value (``preprocess``, a :class:`Standardize` that goes into the
    graph) and trains a linear-output model. ``record`` is what the manifest keeps."""
    shape = tuple(x.shape[1:])
    if arch == "auto":
        arch = choose_arch(shape)
    check_parameter(arch in ARCHITECTURES, "arch", f"'auto' or one of {ARCHITECTURES}", arch,
                    owner="oodguard.fit")
    dim = int(np.prod(shape))
    if latent is None:
        latent = latent_size(dim)
    check_parameter(isinstance(latent, int) and not isinstance(latent, bool) and latent >= 1,
                    "latent", "an int >= 1 (or None for the rule)", latent, owner="oodguard.fit")
    unit = bool(x.min() >= 0.0 and x.max() <= 1.0)
    pre: Standardize | None = None
    x_model = x
    if not unit:
        mean = x.mean(axis=0, dtype=np.float64)
        std = x.std(axis=0, dtype=np.float64)
        std = np.where(std > 1e-8 * max(float(np.abs(mean).max()), 1.0), std, 1.0)
        pre = Standardize(mean.astype(np.float32), std.astype(np.float32))
        x_model = ((x - pre.mean.numpy()) / pre.std.numpy()).astype(np.float32)
    recipe = recipe or default_recipe(len(x), arch)
    torch.manual_seed(seed)
    model = build_autoencoder(shape, arch=arch, latent=latent,
                              output="sigmoid" if unit else "linear")
    model, rec = train(model, x_model, recipe, seed=seed, progress=progress)
    record = {"by": f"oodguard.fit {__version__}", "arch": arch, "model": type(model).__name__,
              "latent": latent, "output": "sigmoid" if unit else "linear",
              "preprocess": "none" if pre is None else "standardize", "seed": seed,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "recipe": recipe.to_dict(), "result": rec.to_dict()}
    return model, pre, record
