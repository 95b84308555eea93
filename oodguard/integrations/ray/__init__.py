"""oodguard on Ray (extra ``ray``): batch scoring and calibration on Ray Data, serving on
Ray Serve.

>>> import ray, ray.data                                              # doctest: +SKIP
>>> from oodguard.integrations.ray import score_dataset
>>> ds = ray.data.read_parquet("s3://bucket/inputs/")
>>> scored = score_dataset(ds, "bundle/", column="x", concurrency=8, columns=["id"])
>>> scored.write_parquet("s3://bucket/scores/")

See :mod:`.data` (scoring, features), :mod:`.calibrate` (calibration from a dataset) and
:mod:`.serve` (the Ray Serve deployment).
"""

from __future__ import annotations

import importlib
from typing import Any

try:
    import ray  # noqa: F401
except ImportError as err:  # pragma: no cover - the message is the point
    from oodguard.errors import MissingDependencyError

    raise MissingDependencyError(
        f"oodguard.integrations.ray needs Ray ({err}); install it with: "
        "pip install 'oodguard[ray]'"
    ) from err

__all__ = [
    "OUTPUT_COLUMNS",
    "GuardReplica",
    "ServeBatcher",
    "calibrate_dataset",
    "collect_features",
    "guard_app",
    "score_dataset",
    "tensor_column",
]

# Imported on first use: an actor that unpickles the scoring class imports .data only, not
# Ray Serve (fastapi, pydantic) nor scikit-learn (.calibrate), which cost seconds per worker.
_WHERE = {
    "OUTPUT_COLUMNS": "data",
    "collect_features": "data",
    "score_dataset": "data",
    "calibrate_dataset": "calibrate",
    "GuardReplica": "serve",
    "ServeBatcher": "serve",
    "guard_app": "serve",
}


def __getattr__(name: str) -> Any:
    if name == "tensor_column":
        from oodguard.integrations.tensors import tensor_column

        return tensor_column
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
