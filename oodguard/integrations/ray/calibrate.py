"""Calibration from a Ray dataset: features on the cluster, the (small) fit on the driver.

:func:`calibrate_dataset` is :func:`oodguard.calibration.calibrate` with ``x_val`` replaced by
a ``ray.data.Dataset``: the features of every row are computed by actors
(:func:`~oodguard.integrations.ray.data.collect_features`'s path) and only they — ``(n, F)``
float32, a few dozen bytes a row — come back, together with the inputs of the *fit* part
(``fit_fraction`` of the rows), which the driver needs for the synthetic outliers that choose
the features and for the far-input sanity check. From there the code is the in-memory
calibration's own (``fit_and_write``), so the same rows in the same order give the same
``calibration.json`` (up to the manifest's creation time).

Too many rows even for that: ``max_rows`` calibrates on a seeded uniform sample of that many
rows (``Dataset.random_sample`` is not exact in size; the sample is drawn by row position
instead). The conformal guarantee then holds as it always does, for the rows actually used:
with ``n_cal`` calibration rows exchangeable with future in-distribution inputs, ``p ≤ alpha``
has a false-positive rate of at most ``alpha``; ``alpha < 1/(n_cal + 1)`` is refused. A sample
of rows drawn uniformly from an exchangeable dataset is itself exchangeable with it, so
nothing is lost but ``alpha``'s floor and the fit's precision.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from oodguard.bundle import MODEL_FILE, InputSpec
from oodguard.calibration.calibrate import (
    DEFAULT_COMBINE,
    CalibrationReport,
    bundle_target,
    check_validation_size,
    fit_and_write,
    split_indices,
)
from oodguard.engine import Engine
from oodguard.errors import CalibrationError
from oodguard.integrations.ray.data import DEFAULT_BATCH_SIZE, feature_batches
from oodguard.integrations.tensors import tensor_column
from oodguard.progress import progress_bar
from oodguard.validation import validate_batch

__all__ = ["calibrate_dataset"]

log = logging.getLogger(__name__)


def _sample(ds: Any, n: int, max_rows: int | None, seed: int) -> tuple[Any, int]:
    """``ds`` itself, or a seeded uniform sample of ``max_rows`` of its rows (in the
    dataset's order) when it holds more."""
    if max_rows is None or n <= max_rows:
        return ds, n
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int or None. Got {max_rows!r}")
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
    with_pos = ds.zip(_positions(n))
    return with_pos.filter(_Chosen(chosen)).drop_columns([_POSITION]), max_rows


_POSITION = "_oodguard_position"  # a name no user column has


class _Chosen:
    """A row filter: keep the rows whose position (zipped in as ``_POSITION``) is chosen."""

    def __init__(self, chosen: np.ndarray) -> None:
        self.chosen = frozenset(chosen.tolist())

    def __call__(self, row: dict[str, Any]) -> bool:
        return int(row[_POSITION]) in self.chosen


def _positions(n: int) -> Any:
    import ray.data

    return ray.data.range(n).rename_columns({"id": _POSITION})


def calibrate_dataset(
    bundle: str | os.PathLike[str],
    ds: Any,
    *,
    column: str = "data",
    alpha: float = 0.05,
    fit_fraction: float = 0.4,
    select: str = "auto",
    x_ood: np.ndarray | None = None,
    combine: str = DEFAULT_COMBINE,
    use: Sequence[str] | None = None,
    minor_tail: float | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    seed: int = 0,
    max_rows: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int = 1,
    scale: float | None = None,
    reshape: bool = False,
    num_cpus: float = 1.0,
    engine_options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> CalibrationReport:
    """Calibrate a bundle on the in-distribution rows of a Ray dataset.

    Parameters
    ----------
    bundle, alpha, fit_fraction, select, x_ood, combine, use, minor_tail, out, overwrite,
    seed, progress : as in :func:`oodguard.calibration.calibrate` (``x_ood`` is a small
        in-memory array, used only for the selection)
    ds : ray.data.Dataset whose ``column`` holds in-distribution validation inputs; the split
        into fit and calibration parts is by row position in the dataset's order
    max_rows : calibrate on a seeded uniform sample of at most this many rows (see the
        module's notes on the guarantee); default every row
    batch_size, concurrency, scale, reshape, num_cpus, engine_options : how the features are
        computed (see :func:`~oodguard.integrations.ray.score_dataset`)

    Returns
    -------
    CalibrationReport — what :func:`~oodguard.calibration.calibrate` returns

    Raises
    ------
    CalibrationError, BundleExistsError
        As :func:`~oodguard.calibration.calibrate`: before any row is read for a size or
        destination it refuses.
    """
    if select not in ("auto", "all"):
        raise ValueError(f"select must be 'auto' or 'all'. Got {select!r}")
    source, target, in_place = bundle_target(bundle, out, overwrite)
    ds, n = _sample(ds, ds.count(), max_rows, seed)
    use, few = check_validation_size(n, source.manifest.feature_names, use, alpha, fit_fraction)
    fit_idx, _ = split_indices(n, fit_fraction, seed)
    slot = np.full(n, -1, dtype=np.intp)  # row position ▶ its place in x_fit, or -1
    slot[fit_idx] = np.arange(len(fit_idx))
    bar = progress_bar(5, "calibration", log, progress=progress, unit="stage")
    bar.set_description_str("calibration: features (ray)")
    log.info("computing features for %d validation rows on the cluster", n)
    spec = source.manifest.input
    x_fit = np.empty((len(fit_idx), *spec.shape), dtype=np.float32)
    features = np.empty((n, len(source.manifest.feature_names)), dtype=np.float32)
    start = 0
    for batch in feature_batches(ds, source, column=column, batch_size=batch_size,
                                 concurrency=concurrency, keep_input=True, scale=scale,
                                 reshape=reshape, num_cpus=num_cpus,
                                 engine_options=engine_options):
        f = batch["features"]
        stop = start + len(f)
        if stop > n:
            raise CalibrationError(f"the dataset gave more than the {n} rows it counted; "
                                   "calibrate on a dataset that does not change while read")
        features[start:stop] = f
        mine = slot[start:stop] >= 0
        if mine.any():
            # only the fit rows: the actor already validated the whole batch
            x_fit[slot[start:stop][mine]] = _inputs(batch[column][mine], spec, scale=scale,
                                                    reshape=reshape, column=column)
        start = stop
    if start != n:
        raise CalibrationError(f"the dataset gave {start} rows; it counted {n}. Calibrate on "
                               "a dataset that does not change while read")
    engine = Engine(source.files[MODEL_FILE], source.manifest, providers="cpu")
    return fit_and_write(
        source, target, in_place, features, x_fit, engine=engine, bar=bar, few=few,
        alpha=alpha, fit_fraction=fit_fraction, select=select, x_ood=x_ood, combine=combine,
        use=use, minor_tail=minor_tail, seed=seed, overwrite=overwrite)


def _inputs(col: Any, spec: InputSpec, *, scale: float | None, reshape: bool, column: str
            ) -> np.ndarray:
    x32, _ = validate_batch(tensor_column(col, spec, column=column, scale=scale,
                                          reshape=reshape), spec, nonfinite="raise")
    return x32
