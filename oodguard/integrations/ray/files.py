"""``oodguard score --ray``: the input's chunks (see :mod:`oodguard.cli.chunks`) read by Ray
tasks, scored by :func:`~oodguard.integrations.ray.data.score_dataset`'s actors, and streamed
back to the driver in order for the output file.

The input path must be readable at the same path on every node that runs a task (a shared
file system, or the one machine of a local cluster); the bundle travels through Ray.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from oodguard.bundle import Bundle
from oodguard.cli.chunks import Chunk, read_chunk
from oodguard.integrations.ray.data import ordered, score_dataset

__all__ = ["score_chunks"]


def _load(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """A Ray task: the rows of the chunks in a batch of chunk descriptions."""
    parts = [read_chunk(Chunk.from_json(str(text))) for text in batch["chunk"]]
    xs = [np.asarray(p[0]) for p in parts]
    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    return {"index": np.concatenate([p[1] for p in parts]),
            "source": np.array([s for p in parts for s in p[2]], dtype=object),
            "row": np.concatenate([p[3] for p in parts]),
            "x": x}


def score_chunks(
    chunks: Sequence[Chunk], bundle: Bundle, *, batch_size: int, concurrency: int,
    scale: float | None, reshape: bool, guard_options: Mapping[str, Any],
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``index``, ``source``, ``row``, ``score``, ``p_value``, ``is_ood``, in the
    input's order."""
    import ray.data

    items = [{"chunk": c.to_json()} for c in chunks]
    loaded: Any = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 1000)))
    loaded = loaded.map_batches(_load, batch_size=1, batch_format="numpy")
    scored = score_dataset(loaded, bundle, column="x", batch_size=batch_size,
                           concurrency=concurrency, columns=("index", "source", "row"),
                           scale=scale, reshape=reshape, guard_options=guard_options)
    yield from ordered(scored).iter_batches(batch_size=None, batch_format="numpy")
