"""Data: the embedded digits default and loaders for users' own data.

Nothing is downloaded. The default is scikit-learn's bundled digits (8×8, 1 797 images, scaled
to [0, 1]): digits 0–4 in-distribution, 5–9 near-OOD; far-OOD sets are uniform noise, inverted
digits and 8×8 patches of scikit-learn's bundled sample images. Loaders read ``.npy``/``.npz``
files, MNIST-style IDX files (optionally gzipped) and folders of images.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DigitsData",
    "image_files",
    "load_array",
    "load_digits_data",
    "load_idx",
    "load_image_folder",
    "load_images",
    "npz_key",
    "sample_image_patches",
]

_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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


def image_files(path: str | os.PathLike[str]) -> list[Path]:
    """The image files of a folder, sorted by name: the row order of
    :func:`load_image_folder`."""
    return sorted(f for f in Path(path).iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)


def load_image_folder(
    path: str | os.PathLike[str], *, size: tuple[int, int] | None = None, grayscale: bool = True
) -> np.ndarray:
    """Images of a folder (sorted by name) as float32 in [0, 1]: ``(N, H, W)`` grayscale or
    ``(N, H, W, 3)``. Images of other sizes are resized to ``size`` (H, W) when given, else
    refused."""
    files = image_files(path)
    if not files:
        raise ValueError(f"{path} holds no images ({', '.join(sorted(_IMAGE_SUFFIXES))})")
    return load_images(files, size=size, grayscale=grayscale, where=str(path))


def load_images(
    files: list[Path], *, size: tuple[int, int] | None = None, grayscale: bool = True,
    where: str = "the images",
) -> np.ndarray:
    """:func:`load_image_folder` for a list of image files (e.g. a slice of a folder's
    :func:`image_files`, read a part at a time)."""
    from PIL import Image

    out = []
    for f in files:
        with Image.open(f) as src:
            im = src.convert("L" if grayscale else "RGB")
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        out.append(np.asarray(im, dtype=np.float32) / 255.0)
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise ValueError(f"{where} holds images of several sizes {sorted(shapes)}; pass "
                         "size=(H, W)")
    return np.stack(out)


def load_array(path: str | os.PathLike[str], *, key: str | None = None) -> np.ndarray:
    """Load ``.npy``, ``.npz`` (``key`` or its only array), IDX (``-idx*`` / ``.idx*``, also
    ``.gz``) or an image folder. Pickled object arrays are refused."""
    p = Path(path)
    if p.is_dir():
        return load_image_folder(p)
    name = p.name.lower()
    if name.endswith(".npy"):
        return np.load(p, allow_pickle=False)
    if name.endswith(".npz"):
        with np.load(p, allow_pickle=False) as z:
            return z[npz_key(p, list(z.keys()), key)]
    if "idx" in name:
        return load_idx(p)
    raise ValueError(f"cannot tell the format of {p}: use .npy, .npz, an IDX file or a folder")


def npz_key(path: Path, keys: list[str], key: str | None, *, how: str = "key=") -> str:
    """The member of an ``.npz`` (holding ``keys``) to read: ``key``, or its only array."""
    if key is None:
        if len(keys) != 1:
            raise ValueError(f"{path} holds arrays {keys}; pass {how} to pick one")
        key = keys[0]
    if key not in keys:
        raise ValueError(f"{path} has no array {key!r}; it holds {keys}")
    return key


def sample_image_patches(n: int, *, size: int = 8, crop: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` grayscale ``size×size`` patches in [0, 1] from scikit-learn's bundled sample
    images: random ``crop×crop`` crops averaged down to ``size×size``."""
    from sklearn.datasets import load_sample_images

    images = [im.astype(np.float32).mean(axis=2) / 255.0 for im in load_sample_images().images]
    rng = np.random.default_rng(seed)
    k = crop // size
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        im = images[i % len(images)]
        r = rng.integers(0, im.shape[0] - crop)
        c = rng.integers(0, im.shape[1] - crop)
        out[i] = im[r : r + crop, c : c + crop].reshape(size, k, size, k).mean(axis=(1, 3))
    return out


@dataclass(frozen=True, eq=False)
class DigitsData:
    """The demo's data, flattened to 64 features in [0, 1] (float32)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    ood: dict[str, tuple[str, np.ndarray]]  # name -> (kind "near"/"far", inputs)


def load_digits_data(
    *, seed: int = 0, train: float = 0.4, val: float = 0.35, n_far: int = 400
) -> DigitsData:
    """Digits 0–4 split into train / validation / test (the rest); OOD sets beside them."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    rng = np.random.default_rng(seed)
    ind = rng.permutation(np.flatnonzero(y <= 4))
    n_tr, n_va = int(len(ind) * train), int(len(ind) * val)
    test = x[ind[n_tr + n_va :]]
    near = x[y >= 5]
    far_inv = 1.0 - x[rng.choice(np.flatnonzero(y <= 4), n_far, replace=False)]
    noise = rng.uniform(0.0, 1.0, size=(n_far, 64)).astype(np.float32)
    patches = sample_image_patches(n_far, seed=seed).reshape(n_far, 64)
    return DigitsData(
        train=x[ind[:n_tr]],
        val=x[ind[n_tr : n_tr + n_va]],
        test=test,
        ood={
            "digits_5_9": ("near", near),
            "uniform_noise": ("far", noise),
            "inverted_digits": ("far", far_inv.astype(np.float32)),
            "image_patches": ("far", patches),
        },
    )
