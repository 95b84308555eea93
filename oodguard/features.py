"""The trajectory features: their names (API) and their formulas.

A sample ``x`` is encoded to ``z0 = E(x)`` and the latent map ``f(z) = E(D(z))`` is iterated
``T`` times, ``z_{t+1} = f(z_t)``. With step norms ``s_t = ‖z_{t+1} − z_t‖`` for
``t = 0 … T−1`` and an attractor bank ``A [K, d]`` the features are, in this order:

====================== ======================================================================
name                   formula
====================== ======================================================================
recon_error            ``‖x − D(z0)‖² / dim(x)`` — the classic reconstruction baseline
first_step             ``s_0 = ‖z1 − z0‖`` — how far the code is from being a fixed point
last_step              ``s_{T−1} = ‖zT − zT−1‖``
convergence_rate       least-squares slope of ``log(s_t + eps)`` over ``t`` (negative: converging)
steps_to_converge      first ``t`` with ``s_t ≤ tol``; ``T`` where that never happens
path_length            ``Σ_t s_t``
displacement           ``‖zT − z0‖``
attractor_distance     ``min_a ‖zT − a‖`` — terminal distance to the nearest attractor
mean_attractor_distance ``mean_{t=0..T} min_a ‖z_t − a‖`` — the score of Fumero et al. (2026)
latent_knn             ``‖z0 − b_(k)‖``: distance to the ``k``-th nearest training code of a
                       bank ``B0`` (≤ 4096 training codes; ``k = 5`` by default)
latent_mahalanobis     ``sqrt((z0 − μ0)ᵀ Σ0⁻¹ (z0 − μ0))``, ``μ0``/``Σ0`` the training codes'
                       mean and Ledoit–Wolf shrunk covariance
terminal_knn           ``‖zT − b_(k)‖`` over the bank ``BT`` of the bank codes' terminal points
terminal_mahalanobis   as ``latent_mahalanobis`` at ``zT``, under the terminal points' ``μT, ΣT``
====================== ======================================================================

The last four are the classic latent baselines (kNN and Mahalanobis distance of the code),
computed inside the same graph so that calibration can weigh them against the trajectory
features; how the reference sets are fitted is documented in :mod:`oodguard.export.baselines`.

Features are raw measurements, not scores: their direction (larger or smaller for OOD data)
depends on the autoencoder. The calibrated score built on them is what is "higher = more OOD".
"""

from __future__ import annotations

__all__ = ["FEATURE_NAMES", "NONNEGATIVE_FEATURES", "FEATURE_FORMULAS"]

FEATURE_FORMULAS: dict[str, str] = {
    "recon_error": "‖x − D(z0)‖² / dim(x)",
    "first_step": "‖z1 − z0‖",
    "last_step": "‖zT − zT−1‖",
    "convergence_rate": "least-squares slope of log(‖z_{t+1} − z_t‖ + eps) over t",
    "steps_to_converge": "first t with ‖z_{t+1} − z_t‖ ≤ tol (T where never)",
    "path_length": "Σ_t ‖z_{t+1} − z_t‖",
    "displacement": "‖zT − z0‖",
    "attractor_distance": "min_a ‖zT − a‖",
    "mean_attractor_distance": "mean_t min_a ‖z_t − a‖ over t = 0..T",
    "latent_knn": "‖z0 − b_(k)‖, k-th nearest of a bank of training codes",
    "latent_mahalanobis": "sqrt((z0 − μ0)ᵀ Σ0⁻¹ (z0 − μ0)), Ledoit–Wolf Σ0 of training codes",
    "terminal_knn": "‖zT − b_(k)‖, k-th nearest of the bank codes' terminal points",
    "terminal_mahalanobis": "sqrt((zT − μT)ᵀ ΣT⁻¹ (zT − μT)), Ledoit–Wolf ΣT of terminal points",
}

FEATURE_NAMES: tuple[str, ...] = tuple(FEATURE_FORMULAS)

# Features that are norms or squared norms; the calibrator may take their logarithm.
NONNEGATIVE_FEATURES: frozenset[str] = frozenset(FEATURE_NAMES) - {
    "convergence_rate",
    "steps_to_converge",
}
