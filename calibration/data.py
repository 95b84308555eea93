"""Data: the embedded digits default, and the loaders for users' own data.

Nothing is downloaded. The default is scikit-learn's bundled digits (8×8, 1 797 images, scaled
to [0, 1]): digits 0–4 in-distribution, 5–9 near-OOD; far-OOD sets are uniform noise, inverted
digits and 8×8 patches of scikit-learn's bundled sample images. The loaders (``.npy``/``.npz``
files, MNIST-style IDX files, folders of images) are the runtime's :mod:`oodguard.io`,
re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oodguard.io import (
    image_files,
    load_array,
    load_idx,
    load_image_folder,
    load_images,
    npz_key,
)

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
