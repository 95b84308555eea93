"""Arrays from files, with numpy alone: ``.npy``, ``.npz``, MNIST-style IDX (plain or
``.gz``), and (through :mod:`oodguard.io.images`) folders of images.

A runtime-only install (``oodguard[cpu]``) reads all of these but image folders, which need
Pillow (the ``images`` extra); the message says so. Pickled object arrays are refused.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_magic", "load_array", "load_idx", "npz_key", "pick_member"]

_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# The first bytes of each numpy format, and how to write one.
_MAGIC = {".npy": (b"\x93NUMPY", "numpy.save(path, x)"),
          ".npz": (b"PK", "numpy.savez(path, x=x)")}


def check_magic(path: Path) -> None:
    """A ``.npy``/``.npz`` that is something else (a text file, a CSV) gets a ValueError
    saying so, not numpy's advice about pickles."""
    magic, how = _MAGIC.get(path.suffix.lower(), (b"", ""))
    if not magic or path.is_dir():
        return
    with open(path, "rb") as fh:
        head = fh.read(len(magic))
    if head != magic:
        raise ValueError(
            f"{path} is not a {path.suffix} file: it starts with {head!r}, not {magic!r}. "
            f"Write arrays with {how}; a text or CSV file needs numpy.loadtxt and numpy.save "
            "first"
        )


def load_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or ``.gz``.

    Raises ``ValueError`` naming the problem for a malformed file (bad magic, truncated data).
    """
    p = Path(path)
    raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{p} is not an IDX file (magic bytes {raw[:4]!r})")
    dtype = _IDX_DTYPES.get(raw[2])
    if dtype is None:
        raise ValueError(f"{p}: unknown IDX type code 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{p}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape)) if shape else 0
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{p}: IDX header promises shape {shape} ({count * dtype.itemsize} bytes) but the "
            f"file holds {len(raw) - header} bytes of data"
        )
    out = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return out.astype(dtype.newbyteorder("="))


def pick_member(path: object, names: list[str], name: str | None, *, how: str,
                what: str) -> str:
    """The member of a file holding ``names`` to read: ``name``, or its only member
    (ValueError otherwise, naming the members and the argument ``how`` that picks one);
    ``what`` is "array" (an ``.npz``) or "column" (a parquet file)."""
    if name is None:
        if len(names) != 1:
            raise ValueError(f"{path} holds {what}s {names}; pass {how} to pick one")
        name = names[0]
    if name not in names:
        raise ValueError(f"{path} has no {what} {name!r}; it holds {names}")
    return name


def npz_key(path: Path, keys: list[str], key: str | None, *, how: str = "key=") -> str:
    """The member of an ``.npz`` (holding ``keys``) to read: ``key``, or its only array."""
    return pick_member(path, keys, key, how=how, what="array")


def load_array(path: str | os.PathLike[str], *, key: str | None = None,
               how: str = "key=") -> np.ndarray:
    """Load ``.npy``, ``.npz`` (``key`` or its only array), IDX (``-idx*`` / ``.idx*``, also
    ``.gz``) or an image folder (float32 in [0, 1], see :mod:`oodguard.io.images`).

    Raises
    ------
    FileNotFoundError
        No such file or folder.
    ValueError
        Not a file of a kind read here, not what its suffix says, or an ``.npz`` holding
        several arrays without ``key`` (``how`` names the argument in the message).
    MissingDependencyError
        An image folder without Pillow installed.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_dir():
        from oodguard.io.images import load_image_folder

        return load_image_folder(p)
    check_magic(p)
    name = p.name.lower()
    if name.endswith(".npy"):
        return np.load(p, allow_pickle=False)
    if name.endswith(".npz"):
        with np.load(p, allow_pickle=False) as z:
            return z[npz_key(p, list(z.keys()), key, how=how)]
    if "idx" in name:
        return load_idx(p)
    raise ValueError(f"cannot tell the format of {p}: use .npy, .npz, an IDX file or a folder "
                     "of images")
