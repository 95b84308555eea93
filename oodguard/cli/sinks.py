"""``oodguard score``'s output: JSON lines or parquet, written to a temporary file beside the
destination and moved into place only when every row is written (a reader never sees half a
file; a failed run leaves nothing). An existing file is replaced only with ``--overwrite``."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from oodguard.errors import MissingDependencyError

__all__ = ["Sink", "output_format"]

_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def output_format(path: Path, *, overwrite: bool) -> str:
    """The format named by the extension; refuses a folder, and an existing file without
    ``overwrite``, before any work is done."""
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"--output {path}: name the file .jsonl (JSON lines) or .parquet to "
                         "pick the format")
    if path.is_dir():
        raise IsADirectoryError(f"--output {path} is a folder; name a .jsonl or .parquet file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"--output {path} exists; pass --overwrite to replace it")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise MissingDependencyError(
                f"parquet output needs pyarrow ({err}): pip install pyarrow (the ray extra "
                "brings it), or write .jsonl") from err
    return fmt


class Sink:
    """Rows of results in order, to ``path`` in ``fmt``. Use as a context manager: the file
    appears at ``path`` when the block ends without an error, and not at all otherwise."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt, self.rows = path, fmt, 0
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                   dir=path.parent if str(path.parent) else ".")
        self._tmp = Path(tmp)
        self._fh: IO[str] | None = os.fdopen(fd, "w") if fmt == "jsonl" else None
        if fmt == "parquet":
            os.close(fd)
        self._writer: Any = None

    def write(self, index: np.ndarray, source: Any, row: np.ndarray, score: np.ndarray,
              p_value: np.ndarray, is_ood: np.ndarray) -> None:
        """One batch: global index, source file, row in it (-1: an image), the guard's
        score, p-value and verdict."""
        if self._fh is not None:
            for i, src, r, s, p, o in zip(index.tolist(), list(source), row.tolist(),
                                          score.tolist(), p_value.tolist(), is_ood.tolist(),
                                          strict=True):
                self._fh.write(json.dumps({
                    "index": i, "source": str(src), "row": None if r < 0 else r,
                    # JSON has no Infinity: a non-finite score (always OOD) is null
                    "score": s if math.isfinite(s) else None, "p_value": p,
                    "is_ood": bool(o)}, allow_nan=False) + "\n")
        else:
            self._write_parquet(index, source, row, score, p_value, is_ood)
        self.rows += len(index)

    def _write_parquet(self, index: np.ndarray, source: Any, row: np.ndarray,
                       score: np.ndarray, p_value: np.ndarray, is_ood: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            "index": pa.array(index, pa.int64()),
            "source": pa.array([str(s) for s in source], pa.string()),
            "row": pa.array(row, pa.int64(), mask=np.asarray(row) < 0),
            "score": pa.array(score, pa.float64()),  # +inf kept: parquet has IEEE doubles
            "p_value": pa.array(p_value, pa.float64()),
            "is_ood": pa.array(is_ood, pa.bool_()),
        })
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema)
        self._writer.write_table(table)

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._writer is None and self.fmt == "parquet" and exc_type is None:
            self._write_parquet(*(np.empty(0, t) for t in ("i8", "U1", "i8", "f8", "f8", "?")))
        if self._writer is not None:
            self._writer.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)  # ours: made by mkstemp above
