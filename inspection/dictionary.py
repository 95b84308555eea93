"""The data-free attractor dictionary (Fumero et al., 2026, §5.1): codes drawn from
``N(0, I)`` are iterated under ``f = E∘D`` to their attractors and decoded; the decoded points
are the atoms of a dictionary that is built without any input data. Held-out samples are
sparse-coded on it with orthogonal matching pursuit (scikit-learn) and compared with a random
orthogonal basis and with PCA of the same size.

One difference from the paper, stated: the paper codes in the latent space of a 4096-dimensional
autoencoder and decodes the result; for the small autoencoders here (latent 2–32, where 5 % of
the atoms is less than one) the atoms are decoded first and the samples coded in input space,
so all three dictionaries are compared on the same inputs with the same number of atoms.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from oodguard.errors import parameter_error
from oodguard.inspect.iteration import find_basins, iterate
from oodguard.inspect.latent_map import LatentMap

__all__ = ["DictionaryComparison", "attractor_dictionary", "compare_dictionaries", "omp_mse",
           "pca_basis", "random_orthogonal_basis"]

DEFAULT_SPARSITIES = (0.05, 0.10, 0.25)


def attractor_dictionary(latent: LatentMap, n_atoms: int, *, rel_tol: float = 1e-3,
                         rel_merge_radius: float = 0.05, max_steps: int = 500,
                         seed: int = 0) -> tuple[np.ndarray, float, int]:
    """``(atoms [n_atoms, prod(input_shape)], fraction converged, distinct attractors)`` from
    ``N(0, I)`` codes.

    No data is used: the convergence tolerance and the merge radius that counts distinct
    attractors are relative to the median norm of ``f(z0)``. Every code gives an atom (the
    paper keeps duplicates too); trajectories that did not converge contribute their last
    point, diverged ones (NaN) are dropped, so fewer atoms may come back.
    """
    if n_atoms < 1:
        raise parameter_error("n_atoms", "an int >= 1", n_atoms)
    z0 = np.random.default_rng(seed).standard_normal((n_atoms, latent.latent_dim))
    z0 = z0.astype(np.float32)
    scale = float(np.median(np.linalg.norm(latent.step(z0), axis=1)))
    scale = max(scale, 1e-12)
    run = iterate(latent.step, z0, tol=rel_tol * scale, max_steps=max_steps)
    atoms = latent.decode(run.terminal[run.finite]).reshape(int(run.finite.sum()), -1)
    distinct = find_basins({"noise": run}, rel_merge_radius * scale).count
    return atoms.astype(np.float64), float(run.converged.mean()), distinct


def random_orthogonal_basis(dim: int, k: int, *, seed: int = 0) -> np.ndarray:
    """``k <= dim`` orthonormal rows in ``R^dim`` (QR of a Gaussian matrix)."""
    if not 1 <= k <= dim:
        raise parameter_error("k", f"an int in [1, dim={dim}]", k)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, k)))
    return np.ascontiguousarray(q.T)


def pca_basis(x_train: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` right singular vectors of the (uncentred) training matrix: the best
    ``k``-dimensional linear subspace for the raw samples, which the other dictionaries code
    without centring too."""
    x = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
    if not 1 <= k <= min(x.shape):
        raise parameter_error("k", f"an int in [1, {min(x.shape)}]", k)
    return np.linalg.svd(x, full_matrices=False)[2][:k]


def omp_mse(atoms: np.ndarray, x: np.ndarray, n_nonzero: int) -> float:
    """Mean squared error per value of ``x (n, dim)`` coded with at most ``n_nonzero`` atoms
    of ``atoms (k, dim)`` by orthogonal matching pursuit. Atoms are scaled to unit norm
    (zero atoms dropped); OMP stops early where the chosen atoms become linearly dependent
    (duplicate attractors), which costs the dictionary accuracy — as it should."""
    from sklearn.linear_model import orthogonal_mp

    a = np.asarray(atoms, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1)
    a = a[norms > 1e-12] / norms[norms > 1e-12, None]
    xs = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if len(a) == 0:
        return float((xs ** 2).mean())
    n_nonzero = max(1, min(int(n_nonzero), len(a), xs.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "linear dependence in the dictionary"
        coef = orthogonal_mp(a.T, xs.T, n_nonzero_coefs=n_nonzero)
    coef = np.asarray(coef).reshape(len(a), -1)
    return float(((coef.T @ a - xs) ** 2).mean())


@dataclass(frozen=True)
class DictionaryComparison:
    """OMP reconstruction MSE per dictionary and sparsity (fraction of the ``n_atoms``)."""

    n_atoms: int
    distinct_atoms: int
    converged: float
    sparsities: tuple[float, ...]
    mse: dict[str, tuple[float, ...]]

    def to_dict(self) -> dict[str, object]:
        return {"n_atoms": self.n_atoms, "distinct_atoms": self.distinct_atoms,
                "converged": self.converged, "sparsities": list(self.sparsities),
                "nonzero": [max(1, round(s * self.n_atoms)) for s in self.sparsities],
                "mse": {k: list(v) for k, v in self.mse.items()}}


def compare_dictionaries(latent: LatentMap, x_train: np.ndarray, x_test: np.ndarray, *,
                         n_atoms: int | None = None,
                         sparsities: tuple[float, ...] = DEFAULT_SPARSITIES,
                         seed: int = 0) -> DictionaryComparison:
    """The attractor dictionary vs a random orthogonal basis vs PCA (fitted on ``x_train``),
    all with ``n_atoms`` atoms (default: the input dimension), coding ``x_test``."""
    dim = int(np.prod(latent.input_shape))
    k = dim if n_atoms is None else int(n_atoms)
    atoms, converged, distinct = attractor_dictionary(latent, k, seed=seed)
    k_lin = min(k, dim, len(x_train))
    dictionaries = {"attractors": atoms,
                    "random_orthogonal": random_orthogonal_basis(dim, k_lin, seed=seed),
                    "pca": pca_basis(x_train, k_lin)}
    mse = {name: tuple(omp_mse(d, x_test, max(1, round(s * k))) for s in sparsities)
           for name, d in dictionaries.items()}
    return DictionaryComparison(k, distinct, converged, tuple(sparsities), mse)
