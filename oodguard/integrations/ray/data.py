"""Batch scoring and features on Ray Data: one ONNX Runtime session per actor.

:func:`score_dataset` maps a ``ray.data.Dataset`` through the guard with an actor pool
(``map_batches`` of a callable class): each actor builds its :class:`~oodguard.Guard` once, from
the bundle the driver read and verified, and scores every batch it is given with it.
:func:`collect_features` does the same with the bare engine (an uncalibrated bundle is fine)
and brings the small ``(n, F)`` feature matrix back to the driver, in the dataset's order.

How actors get the bundle: the driver reads and verifies it (:func:`oodguard.read_bundle`);
its bytes travel with the actor constructor through Ray's object store, so worker nodes need
oodguard and onnxruntime installed, not the bundle's directory. A row's score does not depend
on the batch it came in (the guard is batch-invariant), so the results equal ``guard.check``
on the same rows bit for bit, whatever ``batch_size`` and ``concurrency``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from oodguard.bundle import MODEL_FILE, Bundle, read_bundle
from oodguard.engine import Engine
from oodguard.guard import Guard
from oodguard.integrations.ray.ray_adapter import with_own_context
from oodguard.integrations.tensors import tensor_column
from oodguard.validation import validate_batch

__all__ = ["OUTPUT_COLUMNS", "collect_features", "score_dataset"]

#: the columns :func:`score_dataset` adds (``features`` too when asked)
OUTPUT_COLUMNS = ("score", "p_value", "is_ood")
DEFAULT_BATCH_SIZE = 1024


def as_bundle(bundle: Bundle | str | os.PathLike[str]) -> Bundle:
    """A verified bundle: read from a path on the driver, or passed as read."""
    return bundle if isinstance(bundle, Bundle) else read_bundle(bundle)


class _Mapper:
    """The per-actor state of :func:`score_dataset` / :func:`collect_features`: one guard (or
    bare engine) built once in the constructor, called on every batch."""

    def __init__(self, bundle: Bundle, *, column: str, mode: str, keep: tuple[str, ...] | None,
                 drop_input: bool, scale: float | None, reshape: bool,
                 guard_options: Mapping[str, Any]) -> None:
        self.column, self.mode, self.keep, self.drop_input = column, mode, keep, drop_input
        self.scale, self.reshape = scale, reshape
        self.spec = bundle.manifest.input
        if mode == "features":
            self.engine = Engine(bundle.files[MODEL_FILE], bundle.manifest,
                                 **{"providers": "cpu", **guard_options})
        else:
            self.guard = Guard(bundle, registry=None, **guard_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = tensor_column(batch[self.column], self.spec, column=self.column, scale=self.scale,
                          reshape=self.reshape)
        names = batch.keys() if self.keep is None else self.keep
        out = {k: batch[k] for k in names if not (self.drop_input and k == self.column)}
        if self.mode == "features":
            x32, _ = validate_batch(x, self.spec, nonfinite="raise")
            out["features"] = self.engine.run(x32)
            return out
        r = self.guard.check(x)
        out.update(score=r.score, p_value=r.p_value, is_ood=r.is_ood)
        if self.mode == "score+features":
            out["features"] = r.features
        return out


def _check_column(ds: Any, column: str) -> None:
    schema = ds.schema(fetch_if_missing=False)  # known without running anything, or None
    names = None if schema is None else list(schema.names)
    if names is not None and column not in names:
        raise KeyError(f"the dataset has no column {column!r}; its columns are {names}. "
                       "Pass column= naming the input tensors")


def _compute(concurrency: int) -> Any:
    import ray.data

    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive int (actors). Got {concurrency!r}")
    return ray.data.ActorPoolStrategy(size=concurrency)


def score_dataset(
    ds: Any,
    bundle: Bundle | str | os.PathLike[str],
    *,
    column: str = "data",
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int = 1,
    columns: tuple[str, ...] | list[str] | None = None,
    features: bool = False,
    keep_input: bool = False,
    scale: float | None = None,
    reshape: bool = False,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    guard_options: Mapping[str, Any] | None = None,
) -> Any:
    """Score a ``ray.data.Dataset`` with the guard, one actor (and ONNX Runtime session) each.

    Parameters
    ----------
    ds : ray.data.Dataset with an input column (see
        :func:`~oodguard.integrations.tensors.tensor_column` for the forms read)
    bundle : a calibrated bundle (path, read on the driver, or a :class:`~oodguard.Bundle`)
    column : the input column (``"data"`` is what ``from_numpy`` / ``read_numpy`` make,
        ``"image"`` what ``read_images`` makes)
    batch_size : rows per guard call
    concurrency : actors, each with its own guard
    columns : the dataset's columns to carry to the output (row ids, labels, paths); default
        every column but the input (and the input too with ``keep_input``)
    features : add the ``features`` column, float32 shape (N, F)
    scale, reshape : see :func:`~oodguard.integrations.tensors.tensor_column`
    num_cpus, num_gpus : CPUs and GPUs reserved per actor (with ``num_gpus``, pass
        ``guard_options={"providers": "cuda"}``)
    guard_options : keywords for :class:`~oodguard.Guard` in each actor (``providers``,
        ``alpha``, ``intra_op_threads``, ...); metrics are off (``registry=None``)

    Returns
    -------
    ray.data.Dataset (lazy) with the carried columns and ``score`` (float64; higher = more
    OOD), ``p_value`` (float64) and ``is_ood`` (bool), row for row as ``guard.check``.

    Raises
    ------
    KeyError
        No column ``column``.
    ValueError
        ``concurrency`` or ``batch_size`` is not a positive int, or ``guard_options`` holds
        ``registry``.
    ray.exceptions.RayTaskError
        When the dataset executes, for a batch the guard refuses: its message holds the
        actor's :class:`~oodguard.InvalidInputError` (see
        :func:`~oodguard.integrations.tensors.tensor_column` and ``Guard.check``) with what
        was expected and what came; Ray Data does not keep the cause's type.
    """
    opts = dict(guard_options or {})
    if "registry" in opts:
        raise ValueError("guard_options must not set registry: actors score without metrics")
    mode = "score+features" if features else "score"
    return _map(ds, as_bundle(bundle), column=column, mode=mode, batch_size=batch_size,
                concurrency=concurrency, keep=None if columns is None else tuple(columns),
                drop_input=not keep_input, scale=scale, reshape=reshape, num_cpus=num_cpus,
                num_gpus=num_gpus, options=opts)


def _map(ds: Any, bundle: Bundle, *, column: str, mode: str, batch_size: int,
         concurrency: int, keep: tuple[str, ...] | None, drop_input: bool,
         scale: float | None, reshape: bool, num_cpus: float, options: dict[str, Any],
         num_gpus: float = 0.0) -> Any:
    _check_column(ds, column)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Got {batch_size!r}")
    return ds.map_batches(
        _Mapper,
        fn_constructor_args=(bundle,),
        fn_constructor_kwargs={"column": column, "mode": mode, "keep": keep,
                               "drop_input": drop_input, "scale": scale, "reshape": reshape,
                               "guard_options": options},
        batch_size=batch_size, batch_format="numpy", compute=_compute(concurrency),
        num_cpus=num_cpus, num_gpus=num_gpus or None, udf_modifying_row_count=False,
    )


def ordered(ds: Any) -> Any:
    """``ds`` executing in order: its rows come out in the order of its source
    (``preserve_order``), whatever the actors' timing. The caller's other datasets keep
    their context (see :mod:`.ray_adapter`)."""

    def preserve_order(ctx: Any) -> None:
        ctx.execution_options.preserve_order = True

    return with_own_context(ds, preserve_order)


def feature_batches(ds: Any, bundle: Bundle, *, column: str, batch_size: int,
                    concurrency: int, keep_input: bool, scale: float | None, reshape: bool,
                    num_cpus: float, engine_options: Mapping[str, Any] | None
                    ) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``features`` (and the input column with ``keep_input``) in the dataset's
    order, computed on the cluster."""
    mapped = _map(ds, bundle, column=column, mode="features", batch_size=batch_size,
                  concurrency=concurrency, keep=(column,) if keep_input else (),
                  drop_input=False, scale=scale, reshape=reshape, num_cpus=num_cpus,
                  options=dict(engine_options or {}))
    yield from ordered(mapped).iter_batches(batch_size=None, batch_format="numpy")


def collect_features(
    ds: Any,
    bundle: Bundle | str | os.PathLike[str],
    *,
    column: str = "data",
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int = 1,
    scale: float | None = None,
    reshape: bool = False,
    num_cpus: float = 1.0,
    engine_options: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """The trajectory features of every row, computed on the cluster, in the dataset's order.

    The bundle need not be calibrated. The rows go through the same validation as
    :func:`oodguard.calibration.calibrate` (non-finite rows refused), and the features equal
    ``Engine.run`` on the same rows in memory bit for bit.

    Returns
    -------
    ndarray of float32, shape (n, F), in the order ``ds.take_all()`` gives the rows
    """
    b = as_bundle(bundle)
    parts = [batch["features"] for batch in feature_batches(
        ds, b, column=column, batch_size=batch_size, concurrency=concurrency, keep_input=False,
        scale=scale, reshape=reshape, num_cpus=num_cpus, engine_options=engine_options)]
    n_features = len(b.manifest.feature_names)
    return np.concatenate(parts) if parts else np.empty((0, n_features), np.float32)
