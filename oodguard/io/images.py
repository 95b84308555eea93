"""Folders of images as float32 arrays in [0, 1] (pixel / 255): needs Pillow, the ``images``
extra; without it, one line names the extra (:class:`~oodguard.errors.MissingDependencyError`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from oodguard.extras import optional

__all__ = ["IMAGE_SUFFIXES", "image_files", "load_image_folder", "load_images"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def image_files(path: str | os.PathLike[str]) -> list[Path]:
    """The image files of a folder, sorted by name: the row order of
    :func:`load_image_folder`."""
    return sorted(f for f in Path(path).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(
    path: str | os.PathLike[str], *, size: tuple[int, int] | None = None, grayscale: bool = True
) -> np.ndarray:
    """Images of a folder (sorted by name) as float32 in [0, 1]: ``(N, H, W)`` grayscale or
    ``(N, H, W, 3)``. Images of other sizes are resized to ``size`` (H, W) when given, else
    refused."""
    files = image_files(path)
    if not files:
        raise ValueError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return load_images(files, size=size, grayscale=grayscale, where=str(path))


def load_images(
    files: list[Path], *, size: tuple[int, int] | None = None, grayscale: bool = True,
    where: str = "the images",
) -> np.ndarray:
    """:func:`load_image_folder` for a list of image files (e.g. a slice of a folder's
    :func:`image_files`, read a part at a time)."""
    image = optional("PIL.Image", "reading a folder of images", "images")
    out = []
    for f in files:
        with image.open(f) as src:
            im = src.convert("L" if grayscale else "RGB")
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), image.Resampling.BILINEAR)
        out.append(np.asarray(im, dtype=np.float32) / 255.0)
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise ValueError(f"{where} holds images of several sizes {sorted(shapes)}; pass "
                         "size=(H, W)")
    return np.stack(out)
