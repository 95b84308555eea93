"""Offline analysis of the latent map (torch side): what the attractors of ``f = E∘D`` say
about a model.

- :func:`inspect_map` ▶ :class:`InspectionReport`: attractor count and basin sizes, how many
  trajectories converged and how fast, contraction ratios at training codes, and the
  memorization coefficient (Fumero et al., ICLR 2026: ``max_x cos(D(z*), x)`` of each decoded
  attractor over the training samples; see ``docs/inspect.md``);
- :func:`compare_dictionaries`: attractors from Gaussian codes as a data-free dictionary,
  against a random orthogonal basis and PCA, with orthogonal matching pursuit;
- :class:`AttractorMonitor`: the same statistics from the user's training loop, over epochs;
- :func:`load_inspection`: a bundle's inspection files (``oodguard inspect BUNDLE``).

>>> from oodguard.inspect import TorchMap, inspect_map                 # doctest: +SKIP
>>> report = inspect_map(TorchMap.from_model(model, x_train), x_train=x_train)
>>> print(report.summary())
"""

from oodguard.inspect.bundle_files import inspection_files, load_inspection
from oodguard.inspect.dictionary import (
    DictionaryComparison,
    attractor_dictionary,
    compare_dictionaries,
    omp_mse,
    pca_basis,
    random_orthogonal_basis,
)
from oodguard.inspect.dynamics import (
    Basins,
    Iteration,
    Memorization,
    contraction_ratios,
    find_basins,
    iterate,
    memorization_coefficient,
    trajectory,
)
from oodguard.inspect.latent_map import LatentMap, OnnxMap, TorchMap
from oodguard.inspect.monitor import AttractorMonitor, MonitorRecord
from oodguard.inspect.report import InspectionReport, inspect_map

__all__ = [
    "AttractorMonitor",
    "Basins",
    "DictionaryComparison",
    "InspectionReport",
    "Iteration",
    "LatentMap",
    "Memorization",
    "MonitorRecord",
    "OnnxMap",
    "TorchMap",
    "attractor_dictionary",
    "compare_dictionaries",
    "contraction_ratios",
    "find_basins",
    "inspect_map",
    "inspection_files",
    "iterate",
    "load_inspection",
    "memorization_coefficient",
    "omp_mse",
    "pca_basis",
    "random_orthogonal_basis",
    "trajectory",
]
