"""Reading the commands' input files: ``.npy``, ``.npz``, IDX files and image folders.

Arrays reach the guard as they are in the file: a sample shape that differs from the bundle's
is refused as :meth:`oodguard.Guard.check` refuses it, unless ``--reshape`` asks for a
row-major reshape. Each row keeps where it came from (file, row; the image's file name in a
folder) so results can name it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oodguard.cli.base import positive_arg
from oodguard.errors import InvalidInputError
from oodguard.io import image_files, load_array

__all__ = ["Inputs", "add_input_args", "check_scale", "load_inputs"]



@dataclass(frozen=True, eq=False)
class Inputs:
    """``x`` and, per row, its source file and the row in that file (None for images)."""

    x: Any
    sources: list[str]
    rows: list[int | None]


def add_input_args(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """``inputs`` (when ``positional``), ``--key``, ``--scale`` and ``--reshape``."""
    if positional:
        p.add_argument("inputs", type=Path,
                       help=".npy or .npz file, IDX file (MNIST format, also .gz) or a folder "
                            "of images")
    p.add_argument("--key", help="array name inside an .npz holding several arrays")
    p.add_argument("--scale", type=positive_arg, default=None,
                   help="divide the values by this, as in training (e.g. 255 for uint8 "
                        "arrays); integer data is refused without it. Not for image folders: "
                        "they are read in [0, 1] already")
    p.add_argument("--reshape", action="store_true",
                   help="reshape each sample row-major to the bundle's input shape when the "
                        "sizes agree (e.g. 8x8 images for a (64,) bundle); without it the "
                        "sample shape must match, as in Guard.check")


def check_scale(path: Path, scale: float | None) -> None:
    """Refuse ``--scale`` on a folder of images (ValueError): the image loader already divides
    by 255, and a second division made every image near black — a guard flags every one."""
    if scale is not None and path.is_dir():
        raise ValueError(
            f"--scale does not apply to a folder of images: {path} is read as pixel/255 in "
            f"[0, 1] already; drop --scale {scale:g}"
        )


def _read(path: Path, key: str | None) -> tuple[Any, list[str], list[int | None]]:
    x = load_array(path, key=key, how="--key")
    if path.is_dir():
        names = [str(f) for f in image_files(path)]
        return x, names, [None] * len(names)
    return x, [str(path)] * len(x), list(range(len(x)))


def load_inputs(path: Path, a: argparse.Namespace, shape: tuple[int, ...] | None) -> Inputs:
    """Read ``path``; divide by ``--scale``; with ``--reshape``, reshape each sample to
    ``shape`` (``None``: samples keep their shape, as ``oodguard fit`` reads its training
    data). Integer data without ``--scale`` reaches the guard's dtype check, which refuses
    it on purpose: the autoencoder was trained on scaled floats."""
    check_scale(path, a.scale)
    x, sources, rows = _read(path, getattr(a, "key", None))
    if x.ndim == 0:
        raise InvalidInputError(f"{path} holds a scalar, not a batch of samples of shape "
                                f"{shape}", reason="rank")
    if a.scale is not None:
        x = np.asarray(x, dtype=np.float32) / np.float32(a.scale)
    if shape is None:
        return Inputs(x, sources, rows)
    if x.shape[1:] != shape and int(np.prod(x.shape[1:])) == int(np.prod(shape)):
        if not a.reshape:
            raise InvalidInputError(
                f"{path} holds samples of shape {x.shape[1:]}, the bundle takes {shape}; "
                f"Guard.check refuses such arrays. If each sample holds the same "
                f"{int(np.prod(shape))} values in another layout, pass --reshape to reshape "
                f"them row-major to {shape}",
                reason="shape",
            )
        x = x.reshape(len(x), *shape)
    return Inputs(x, sources, rows)
