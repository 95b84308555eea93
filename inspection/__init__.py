"""Offline analysis of the latent map (torch side): what the attractors of ``f = E∘D`` say
about a model.

- :func:`inspect_map` ▶ :class:`InspectionReport`: attractor count and basin sizes, how many
  trajectories converged and how fast, contraction ratios at training codes, and the
  memorization coefficient (Fumero et al., ICLR 2026: ``max_x cos(D(z*), x)`` of each decoded
  attractor over the training samples; see ``docs/inspect.md``);
- :func:`compare_dictionaries`: attractors from Gaussian codes as a data-free dictionary,
  against a random orthogonal basis and PCA, with orthogonal matching pursuit;
- :class:`AttractorMonitor`: the same statistics from the user's training loop, over epochs;
- :func:`load_inspection`: a bundle's inspection files (``oodguard inspect BUNDLE``);
- :func:`iterate` and :func:`discover` (:mod:`oodguard.inspect.iteration`): the one iteration
  of the latent map and the one attractor discovery, shared with the exporter (which imports
  this package; this package never imports the exporter, and needs no torch to read a bundle).

>>> from oodguard.inspect import TorchMap, inspect_map                 # doctest: +SKIP
>>> report = inspect_map(TorchMap.from_model(model, x_train), x_train=x_train)
>>> print(report.summary())
"""

from oodguard.inspect.bundle_files import MAX_STORED_CODES, load_inspection
from oodguard.inspect.dictionary import (
    DictionaryComparison,
    attractor_dictionary,
    compare_dictionaries,
    omp_mse,
    pca_basis,
    random_orthogonal_basis,
)
from oodguard.inspect.iteration import (
    Basins,
    Discovery,
    Iteration,
    discover,
    find_basins,
    iterate,
    merge_points,
    trajectory,
)
from oodguard.inspect.latent_map import LatentMap, OnnxMap, TorchMap
from oodguard.inspect.measures import Memorization, contraction_ratios, memorization_coefficient
from oodguard.inspect.monitor import AttractorMonitor, MonitorRecord
from oodguard.inspect.output import write_all_or_nothing
from oodguard.inspect.report import InspectionReport, inspect_map, report_from_discovery

__all__ = [
    "AttractorMonitor",
    "Basins",
    "DictionaryComparison",
    "Discovery",
    "InspectionReport",
    "Iteration",
    "LatentMap",
    "MAX_STORED_CODES",
    "Memorization",
    "MonitorRecord",
    "OnnxMap",
    "TorchMap",
    "attractor_dictionary",
    "compare_dictionaries",
    "contraction_ratios",
    "find_basins",
    "inspect_map",
    "discover",
    "iterate",
    "load_inspection",
    "memorization_coefficient",
    "merge_points",
    "omp_mse",
    "pca_basis",
    "random_orthogonal_basis",
    "report_from_discovery",
    "trajectory",
    "write_all_or_nothing",
]
