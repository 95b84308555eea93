"""``oodguard score``'s inputs, a part at a time: ``.npy`` (memory-mapped), ``.npz``, image
folders and parquet files are cut into chunks that are read on their own — by the command
itself, or by Ray tasks on any node that sees the same path.

A chunk is plain data (JSON-serialisable), so it can travel to a Ray task; :func:`read_chunk`
gives its raw values (as stored: dtype and sample shape unchanged) and, per row, the global
index, the source file and the row in that file (``-1`` for an image, which is its own file).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oodguard.io import (
    check_magic,
    image_files,
    load_images,
    npz_key,
    parquet_column,
    read_row_group,
)

__all__ = ["Chunk", "plan_chunks", "read_chunk"]


@dataclass(frozen=True)
class Chunk:
    """Rows ``start:stop`` of ``path`` (``kind`` npy, npz, parquet; for parquet a row
    group, ``start`` its first row), or the image ``files`` of a folder; ``index`` is the
    global index of its first row."""

    kind: str
    path: str
    index: int
    start: int = 0
    stop: int = 0
    key: str | None = None
    column: str | None = None
    group: int = -1
    files: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.files) if self.kind == "images" else self.stop - self.start

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Chunk:
        d = json.loads(text)
        return cls(**{**d, "files": tuple(d["files"])})


def _ranges(kind: str, path: Path, n: int, rows: int, **kw: Any) -> list[Chunk]:
    return [Chunk(kind, str(path), start, start, min(start + rows, n), **kw)
            for start in range(0, n, rows)]


def _npz_key(path: Path, key: str | None) -> tuple[str, int]:
    with np.load(path, allow_pickle=False) as z:
        key = npz_key(path, list(z.keys()), key, how="--key")
        return key, len(z[key])


def plan_chunks(path: Path, *, rows: int, key: str | None = None, column: str | None = None
                ) -> list[Chunk]:
    """The chunks of an input (``rows`` rows each; a parquet file's row groups as stored).

    Raises
    ------
    FileNotFoundError, ValueError
        No such input; not a file of a kind read here (the message lists them); an ``.npz``
        without ``--key`` holding several arrays; a parquet file without ``--column`` holding
        several columns; an empty folder.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    check_magic(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        files = [str(f) for f in image_files(path)]
        if not files:
            raise ValueError(f"{path} holds no images")
        return [Chunk("images", str(path), i, files=tuple(files[i:i + rows]))
                for i in range(0, len(files), rows)]
    if suffix == ".npy":
        n = len(np.load(path, mmap_mode="r", allow_pickle=False))
        return _ranges("npy", path, n, rows)
    if suffix == ".npz":
        key, n = _npz_key(path, key)
        # One chunk: a member is compressed as a whole, so every slice of it would read and
        # inflate all of it again; the chunk is scored in --batch-size slices all the same.
        return _ranges("npz", path, n, max(n, 1), key=key)
    if suffix in (".parquet", ".pq"):
        column, sizes = parquet_column(path, column, how="--column")
        starts = np.cumsum([0, *sizes]).tolist()
        return [Chunk("parquet", str(path), starts[g], starts[g], starts[g + 1],
                      column=column, group=g) for g in range(len(sizes)) if sizes[g]]
    raise ValueError(f"cannot read {path}: oodguard score reads .npy, .npz, .parquet files and "
                     "folders of images")


def read_chunk(chunk: Chunk) -> tuple[Any, np.ndarray, list[str], np.ndarray]:
    """``(x, index, sources, rows)`` of a chunk: the raw values, shape (n, ...); the global
    indices (int64); each row's source file; its row in that file (int64, -1 for images)."""
    n = len(chunk)
    index = np.arange(chunk.index, chunk.index + n, dtype=np.int64)
    rows = np.arange(chunk.start, chunk.start + n, dtype=np.int64)
    sources = [chunk.path] * n
    if chunk.kind == "npy":
        x: Any = np.array(np.load(chunk.path, mmap_mode="r", allow_pickle=False)
                          [chunk.start:chunk.stop])
    elif chunk.kind == "npz":
        with np.load(chunk.path, allow_pickle=False) as z:
            x = z[chunk.key][chunk.start:chunk.stop]
    elif chunk.kind == "parquet":
        x = read_row_group(chunk.path, chunk.group, chunk.column)
    elif chunk.kind == "images":
        x = load_images([Path(f) for f in chunk.files], where=chunk.path)
        sources, rows = list(chunk.files), np.full(n, -1, dtype=np.int64)
    else:
        raise ValueError(f"unknown chunk kind {chunk.kind!r}")
    return x, index, sources, rows
