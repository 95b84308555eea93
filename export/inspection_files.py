"""The bundle's optional inspection files, made at export (read by
:func:`oodguard.inspect.load_inspection`; format in :mod:`oodguard.inspect.bundle_files`).

The report is made from the export's own attractor discovery (:attr:`AttractorReport.discovery`):
discovery runs once per export, so ``inspection.npz`` holds exactly the manifest's attractors.
The graph is :func:`oodguard.export.graphs.inspection_model`, built from the same traced
encoder and decoder as ``model.onnx``; it is run once here at two batch sizes before it is
written, so a graph that ``oodguard inspect`` could not run is never stored.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from oodguard.bundle import INSPECTION_DATA_FILE, INSPECTION_MODEL_FILE
from oodguard.export.attractors import AttractorReport
from oodguard.inspect.bundle_files import MAX_STORED_CODES
from oodguard.inspect.latent_map import OnnxMap, TorchMap
from oodguard.inspect.report import report_from_discovery

__all__ = ["FITTED_NOISE", "inspection_files"]

log = logging.getLogger(__name__)

# How the exporter draws its data-free codes (see discover_attractors), for the report.
FITTED_NOISE = "Gaussian (training codes' mean and per-axis s.d.)"


def inspection_files(
    encoder: Any, decoder: Any, x_train: np.ndarray, x_raw: np.ndarray,
    attractors: AttractorReport, graph: bytes, *, steps: int, seed: int = 0,
) -> dict[str, bytes]:
    """``{inspection.onnx, inspection.npz}``, or ``{}`` with a warning when they cannot be
    made (the graph does not run, the map cannot be measured): the bundle is complete without
    them.

    Parameters
    ----------
    encoder, decoder : torch.nn.Module
        Frozen, eval-mode modules (as :func:`oodguard.export.as_encoder_decoder` gives).
    x_train : ndarray of float32, shape (N, *model_shape)
        The training inputs in model space (after the preprocessing), as discovery saw them.
    x_raw : ndarray of float32, shape (N, *input_shape)
        The same inputs as the bundle takes them (the inspection graph's ``x``).
    attractors : AttractorReport
        The export's discovery (with its ``discovery`` run).
    graph : bytes
        The inspection graph (:func:`oodguard.export.graphs.inspection_model`).
    steps : int
        The bundle's ``T`` (the report's horizon).
    """
    try:
        found = attractors.discovery
        if found is None:
            raise ValueError("the attractor report carries no discovery run")
        x = np.ascontiguousarray(x_train, dtype=np.float32)
        d = int(attractors.attractors.shape[1])
        latent = TorchMap(encoder, decoder, input_shape=tuple(x.shape[1:]), latent_dim=d)
        report = report_from_discovery(
            latent, found, x_train=x, scale=attractors.scale, horizon=steps, seed=seed,
            noise=FITTED_NOISE, max_stored_codes=MAX_STORED_CODES)
        _smoke_test(graph, x_raw, report.codes, d)
    except Exception as err:  # noqa: BLE001 - the bundle does not need these files
        log.warning("the inspection files could not be made (%s: %s); the bundle is written "
                    "without them (oodguard inspect will say so)", type(err).__name__, err)
        return {}
    return {INSPECTION_MODEL_FILE: graph, INSPECTION_DATA_FILE: report.to_npz()}


def _smoke_test(graph: bytes, x_raw: np.ndarray, codes: np.ndarray, d: int) -> None:
    """Run the inspection graph at batch sizes 1 and 3 (it must not have kept the tracing's)."""
    latent = OnnxMap(graph, input_shape=tuple(x_raw.shape[1:]), latent_dim=d)
    for n in (1, 3):
        z = latent.encode(np.resize(x_raw, (n, *x_raw.shape[1:])))
        stepped = latent.step(np.resize(codes, (n, d)))
        if z.shape != (n, d) or stepped.shape != (n, d):
            raise ValueError(f"the inspection graph gives codes {z.shape} and steps "
                             f"{stepped.shape} for {n} rows; expected ({n}, {d})")
