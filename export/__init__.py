"""Offline stage 1 (torch, onnx): attractor discovery, the latent baselines' reference sets, the
fused trajectory graph, ONNX export with a parity check against torch, the dynamics record, and
the bundle.

>>> from oodguard.export import export_bundle                       # doctest: +SKIP
>>> report = export_bundle("bundle/", encoder=enc, decoder=dec, x_train=x_train, steps=32)
"""

from oodguard.export.attractors import AttractorReport, discover_attractors
from oodguard.export.autoencoder import as_encoder_decoder
from oodguard.export.baselines import LatentBaselines, fit_latent_baselines
from oodguard.export.exporter import ExportReport, export_bundle
from oodguard.export.parity import ParityReport, check_parity, check_same_trajectory
from oodguard.export.trajectory import TrajectoryFeatures

__all__ = [
    "AttractorReport",
    "ExportReport",
    "LatentBaselines",
    "ParityReport",
    "TrajectoryFeatures",
    "as_encoder_decoder",
    "check_parity",
    "check_same_trajectory",
    "discover_attractors",
    "export_bundle",
    "fit_latent_baselines",
]
