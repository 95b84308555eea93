"""Offline stage 1 (torch, onnx): attractor discovery, the latent baselines' reference sets, the
fused trajectory graph, ONNX export with a parity check against torch, the dynamics record, and
the bundle.

>>> from oodguard.export import export_bundle                       # doctest: +SKIP
>>> report = export_bundle("bundle/", encoder=enc, decoder=dec, x_train=x_train, steps=32)
"""

from oodguard.export.adapters import pyod_autoencoder, vit_mae
from oodguard.export.attractors import AttractorReport, discover_attractors
from oodguard.export.autoencoder import Autoencoder, EncoderDecoder, as_encoder_decoder
from oodguard.export.baselines import LatentBaselines, fit_latent_baselines
from oodguard.export.exporter import ExportReport, export_bundle
from oodguard.export.model_errors import (
    LatentOutputError,
    ModelSplitError,
    NotComposableError,
    NotDeterministicError,
    ReconstructionShapeError,
    UnsupportedDtypeError,
)
from oodguard.export.parity import ParityReport, check_parity, check_same_trajectory
from oodguard.export.preprocess import Standardize
from oodguard.export.probe import prepare_autoencoder
from oodguard.export.trajectory import TrajectoryFeatures

__all__ = [
    "AttractorReport",
    "Autoencoder",
    "EncoderDecoder",
    "ExportReport",
    "LatentBaselines",
    "LatentOutputError",
    "ModelSplitError",
    "NotComposableError",
    "NotDeterministicError",
    "ParityReport",
    "ReconstructionShapeError",
    "Standardize",
    "TrajectoryFeatures",
    "UnsupportedDtypeError",
    "as_encoder_decoder",
    "check_parity",
    "check_same_trajectory",
    "discover_attractors",
    "export_bundle",
    "fit_latent_baselines",
    "prepare_autoencoder",
    "pyod_autoencoder",
    "vit_mae",
]
