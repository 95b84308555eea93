"""``oodguard.fit``: a guard when there is no autoencoder yet.

Train an autoencoder for the data's shape (:mod:`oodguard.training.models`) with the recipe of
:mod:`oodguard.training.recipe`, export it (:func:`oodguard.export.export_bundle`), calibrate
it on the validation rows (:func:`oodguard.calibration.calibrate`) and load the guard. With
``model=`` and ``layer=`` the bundle's graph takes a classifier's input and adds the
classifier's own scores to the autoencoder's features (:mod:`oodguard.training.embedding`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from oodguard.bundle.store import check_destination
from oodguard.calibration import calibrate
from oodguard.calibration.calibrate import DEFAULT_FIT_FRACTION, check_sizes
from oodguard.calibration.selection import required_baselines
from oodguard.errors import check_parameter
from oodguard.export import export_bundle
from oodguard.features import FEATURE_NAMES
from oodguard.guard import Guard
from oodguard.training.embedding import (
    CLASSIFIER_FEATURES,
    check_autoencoder_on,
    export_embedding_guard,
)
from oodguard.training.recipe import Recipe
from oodguard.training.trainer import MAX_DISCOVERY_CODES, fit_autoencoder, input_array

__all__ = ["fit"]

log = logging.getLogger(__name__)


def fit(
    x_train: Any, x_val: Any, *, out: str | os.PathLike[str],
    model: torch.nn.Module | None = None, layer: str | None = None,
    autoencoder_on: str = "input", arch: str = "auto", latent: int | None = None,
    recipe: Recipe | None = None,
    steps: int = 32, alpha: float = 0.05, minor_tail: float | None = None, seed: int = 0,
    overwrite: bool = False,
    progress: bool | None = None, threads: int | None = None,
    **guard_kwargs: Any,
) -> Guard:
    """Train an autoencoder on ``x_train``, export and calibrate it on ``x_val`` into the
    bundle ``out``, and return the loaded :class:`~oodguard.Guard`.

    Parameters
    ----------
    x_train : array (N, *shape)
        In-distribution training inputs; vectors ``(d,)``, sequences ``(C, L)`` or images
        ``(C, H, W)`` (see :func:`oodguard.training.models.choose_arch`). A tenth of them (at
        most 5 000) is held out for early stopping.
    x_val : array (n, *shape)
        In-distribution inputs not in ``x_train``: the calibration's (see
        :func:`oodguard.calibration.calibrate`; untouched by training).
    out : the bundle directory to write; an existing bundle is replaced only with
        ``overwrite=True``, anything else there is refused (``BundleExistsError``) before
        training.
    model, layer : a torch classifier and the name of its feature layer (as
        ``model.named_modules()`` gives it): the graph takes the model's own input and adds
        the classifier's maximum softmax probability and energy (candidates) and its
        class-conditional Mahalanobis distance on that layer (kept, with ``recon_error``);
        see :mod:`oodguard.training.embedding`. Both or neither.
    autoencoder_on : with ``model=``: ``"input"`` (default) — the autoencoder learns the
        classifier's inputs; ``"layer"`` — it learns the layer's embeddings (for inputs an
        autoencoder cannot learn well or cheaply). docs/fit.md has what each gave.
    arch : "auto", "mlp", "conv1d" or "conv2d".
    latent : bottleneck size; default :func:`oodguard.training.models.latent_size`.
    recipe : :class:`~oodguard.training.Recipe`; default :func:`default_recipe`.
    steps, alpha, seed : the export's ``T``, the calibration's α, the seed of everything.
    minor_tail : the calibration's share of each two-sided test given to its minor tail
        (default ``DEFAULT_MINOR_TAIL``, see :func:`oodguard.calibration.calibrate`).
    threads : torch threads while training (default: torch's setting).
    guard_kwargs : passed to :meth:`Guard.load` (``registry=``, ``providers=``...).

    The manifest records how the model was trained (``manifest.dynamics["training"]``).
    Scores: higher = more OOD.
    """
    t0 = time.perf_counter()
    check_parameter((model is None) == (layer is None), "layer",
                    "given together with model= (a classifier and its feature layer's name)",
                    layer, owner="oodguard.fit")
    check_autoencoder_on(autoencoder_on)
    check_parameter(threads is None or (isinstance(threads, int) and threads >= 1), "threads",
                    "None or an int >= 1", threads, owner="oodguard.fit")
    check_destination(out, overwrite=overwrite)
    xt = input_array(x_train, "x_train")
    xv = input_array(x_val, "x_val", tuple(xt.shape[1:]))
    # The calibration's size rule, before minutes of training rather than after: the fewest
    # rows it accepts are those that calibrate the classic baselines alone (with fewer rows
    # than every feature needs it falls back to them, and says so).
    names = (*FEATURE_NAMES, *(CLASSIFIER_FEATURES if model is not None else ()))
    check_sizes(len(xv), len(required_baselines(names)), alpha, DEFAULT_FIT_FRACTION)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="oodguard-fit-") as tmp:
            staging = Path(tmp) / "bundle"
            if model is not None:
                export_embedding_guard(staging, model, str(layer), xt,
                                       autoencoder_on=autoencoder_on, arch=arch, latent=latent,
                                       recipe=recipe, steps=steps, seed=seed, progress=progress)
            else:
                ae, pre, record = fit_autoencoder(xt, arch=arch, latent=latent, recipe=recipe,
                                                  seed=seed, progress=progress)
                export_bundle(staging, model=ae, x_train=xt, preprocess=pre, steps=steps,
                              seed=seed, progress=progress, training=record,
                              max_codes=MAX_DISCOVERY_CODES)
            calibrate(staging, xv, alpha=alpha, minor_tail=minor_tail, out=out,
                      overwrite=overwrite, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(previous)
    log.info("oodguard.fit wrote %s in %.1fs", out, time.perf_counter() - t0)
    return Guard.load(out, **guard_kwargs)

