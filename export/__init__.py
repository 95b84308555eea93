"""Offline stage 1 (torch, onnx): attractor discovery, the fused trajectory graph, ONNX export
with a parity check against torch, and the bundle.

>>> from oodguard.export import export_bundle                       # doctest: +SKIP
>>> report = export_bundle("bundle/", encoder=enc, decoder=dec, x_train=x_train, steps=32)
"""

from oodguard.export.attractors import AttractorReport, discover_attractors
from oodguard.export.autoencoder import as_encoder_decoder
from oodguard.export.exporter import ExportReport, export_bundle
from oodguard.export.parity import ParityReport, check_parity
from oodguard.export.trajectory import TrajectoryFeatures

__all__ = [
    "AttractorReport",
    "ExportReport",
    "ParityReport",
    "TrajectoryFeatures",
    "as_encoder_decoder",
    "check_parity",
    "discover_attractors",
    "export_bundle",
]
