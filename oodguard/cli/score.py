"""``oodguard score``: score a large input file into a results file, a chunk at a time, on this
machine or through a Ray cluster (``--ray``).

Locally, memory is bounded by one chunk (``--batch-size`` rows of a memory-mapped ``.npy`` or
an image folder; one row group of a parquet file; an ``.npz`` member is read whole). With
``--ray`` the chunks are read by Ray tasks and scored by actors (one guard each, see
:mod:`oodguard.integrations.ray`); the driver only writes. Both give the same file: one row per
input, in the input's order, with its global index, source file and row in it, and the same
scores as ``oodguard check`` (the guard is batch-invariant).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from oodguard.cli.base import alpha_arg, command, count_arg, optional
from oodguard.cli.chunks import Chunk, plan_chunks, read_chunk
from oodguard.cli.inputs import add_input_args, check_scale
from oodguard.cli.sinks import Sink, output_format

__all__: list[str] = []

log = logging.getLogger("oodguard.score")


def _score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a calibrated bundle directory")
    p.add_argument("input", type=Path,
                   help=".npy (read memory-mapped), .npz, .parquet file or a folder of images")
    p.add_argument("--output", "-o", type=Path, required=True, metavar="FILE",
                   help="results file: .jsonl (JSON lines) or .parquet, by extension")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="score on a Ray cluster: 'auto' (the one this machine belongs to) or "
                        "its address (host:6379, ray://host:10001); the input must be at the "
                        "same path on its nodes")
    p.add_argument("--concurrency", type=count_arg, default=2,
                   help="with --ray: scoring actors, one guard each")
    p.add_argument("--batch-size", type=count_arg, default=4096,
                   help="rows per chunk read and per guard call")
    add_input_args(p, positional=False)  # --key, --scale, --reshape as in oodguard check
    p.add_argument("--column", help="input column of a parquet file with several columns")
    p.add_argument("--alpha", type=alpha_arg,
                   help="target false-positive rate of the verdict (default: the calibrated "
                        "one)")
    p.add_argument("--providers", default="cpu",
                   help="ONNX Runtime execution providers: cpu, cuda or auto")


def _local(chunks: list[Chunk], bundle: Any, a: argparse.Namespace
           ) -> Iterator[dict[str, np.ndarray]]:
    from oodguard.guard import Guard
    from oodguard.integrations.tensors import tensor_column

    guard = Guard(bundle, providers=a.providers, registry=None, alpha=a.alpha)
    for chunk in chunks:
        raw, index, sources, rows = read_chunk(chunk)
        x = tensor_column(raw, guard.input_spec, column=chunk.path, scale=a.scale,
                          reshape=a.reshape)
        for s in range(0, len(x), a.batch_size):  # a parquet row group may be larger
            e = s + a.batch_size
            r = guard.check(x[s:e])
            yield {"index": index[s:e], "source": np.asarray(sources[s:e], dtype=object),
                   "row": rows[s:e], "score": r.score, "p_value": r.p_value,
                   "is_ood": r.is_ood}


def _on_ray(chunks: list[Chunk], bundle: Any, a: argparse.Namespace
            ) -> Iterator[dict[str, np.ndarray]]:
    ray = optional("ray", "score --ray", "ray")
    files = optional("oodguard.integrations.ray.files", "score --ray", "ray")
    if not ray.is_initialized():
        ray.init(address=a.ray, log_to_driver=False, configure_logging=False)
    options = {"providers": a.providers, "alpha": a.alpha}
    yield from files.score_chunks(chunks, bundle, batch_size=a.batch_size,
                                  concurrency=a.concurrency, scale=a.scale, reshape=a.reshape,
                                  guard_options=options)


@command("score", _score_args)
def _score(a: argparse.Namespace) -> int:
    """Score a large input into a .jsonl or .parquet file, chunk by chunk, locally or on Ray."""
    from oodguard.cli.runtime import calibrated_bundle
    from oodguard.errors import OODGuardError
    from oodguard.progress import progress_bar

    fmt = output_format(a.output, overwrite=a.overwrite)
    check_scale(a.input, a.scale)
    bundle = calibrated_bundle(a.bundle, "score")
    chunks = plan_chunks(a.input, rows=a.batch_size, key=a.key, column=a.column)
    total = sum(map(len, chunks))
    batches = _on_ray(chunks, bundle, a) if a.ray else _local(chunks, bundle, a)
    n_ood = 0
    with progress_bar(total, "score", log, unit="row") as bar, Sink(a.output, fmt) as sink:
        for b in batches:
            sink.write(b["index"], b["source"], b["row"], b["score"], b["p_value"],
                       b["is_ood"])
            n_ood += int(np.sum(b["is_ood"]))
            bar.update(len(b["index"]))
        if sink.rows != total:  # never a silently short file
            raise OODGuardError(f"scored {sink.rows} rows of {total}; {a.output} not written")
    where = f"on Ray ({a.ray})" if a.ray else "locally"
    print(f"wrote {total} results to {a.output} ({n_ood} OOD), scored {where}",
          file=sys.stderr)
    return 0
