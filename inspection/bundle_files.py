"""The bundle's optional inspection files: written by the exporter, read by ``oodguard inspect``.

- ``inspection.onnx``: one small graph ``(x, z) ▶ (E(x), D(z), E(D(z)))``, so the latent map
  can be iterated, decoded and fed new data from the bundle alone (no torch model);
- ``inspection.npz``: the export-time :class:`~oodguard.inspect.InspectionReport`, measured on
  the training data the exporter was given (its memorization coefficient needs those samples,
  which the bundle does not keep), with ``format_version``.

Both are listed and hashed in ``manifest.json`` (:data:`oodguard.bundle.EXTRA_FILES`); the
runtime never reads them. The training codes stored with the report (at most
``MAX_STORED_CODES``) decode to approximations of training samples: a bundle with inspection
files says more about its training data than one without.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from typing import Any

import numpy as np

from oodguard.bundle import (
    INSPECTION_DATA_FILE,
    INSPECTION_MODEL_FILE,
    Bundle,
    read_bundle,
    read_extras,
)
from oodguard.errors import BundleError
from oodguard.inspect.latent_map import (
    INSPECTION_INPUTS,
    INSPECTION_OUTPUTS,
    OnnxMap,
    TorchMap,
)
from oodguard.inspect.report import InspectionReport, inspect_map

__all__ = ["MAX_STORED_CODES", "inspection_files", "load_inspection"]

log = logging.getLogger(__name__)

MAX_STORED_CODES = 512
_REEXPORT = (
    "re-export the bundle with this oodguard (oodguard.export.export_bundle writes the "
    "inspection files), or pass the model's training data and use "
    "oodguard.inspect.inspect_map on the torch model"
)


def _graph(encoder: Any, decoder: Any, x: Any, z: Any) -> bytes:
    """Export ``(x, z) ▶ (E(x), D(z), E(D(z)))`` with dynamic batch axes.

    The TorchScript exporter is tried first (a fraction of a second for small models, where the
    dynamo exporter takes seconds); the dynamo exporter where it fails or is gone.
    """
    import torch
    from torch import nn

    class Inspection(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.decoder = encoder, decoder

        def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
            decoded = self.decoder(z)
            return self.encoder(x), decoded, self.encoder(decoded)

    module = Inspection().eval()
    inputs, outputs = list(INSPECTION_INPUTS), list(INSPECTION_OUTPUTS)
    with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
          tempfile.TemporaryDirectory() as tmp):
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, INSPECTION_MODEL_FILE)
        try:
            torch.onnx.export(module, (x, z), path, dynamo=False, input_names=inputs,
                              output_names=outputs,
                              dynamic_axes={"x": {0: "n"}, "z": {0: "m"}, "codes": {0: "n"},
                                            "decoded": {0: "m"}, "stepped": {0: "m"}})
        except Exception as err:  # noqa: BLE001 - fall back to the other exporter
            log.debug("TorchScript export of the inspection graph failed (%s); trying dynamo",
                      err)
            torch.onnx.export(
                module, (x, z), path, dynamo=True, external_data=False, input_names=inputs,
                output_names=outputs,
                dynamic_shapes={"x": {0: torch.export.Dim("n", min=1)},
                                "z": {0: torch.export.Dim("m", min=1)}})
        with open(path, "rb") as fh:
            return fh.read()


def inspection_files(encoder: Any, decoder: Any, x_train: np.ndarray, *, steps: int,
                     seed: int = 0) -> dict[str, bytes]:
    """The inspection files for a bundle (the exporter's one call), or ``{}`` with a warning
    when they cannot be made (the graph does not export, the map cannot be measured): the
    bundle is complete without them.

    Parameters
    ----------
    encoder, decoder : torch.nn.Module
        Frozen, eval-mode modules (as :func:`oodguard.export.as_encoder_decoder` gives).
    x_train : ndarray of float32, shape (N, *input_shape)
    steps : int
        The bundle's ``T`` (the report's horizon).
    """
    import torch

    x = np.ascontiguousarray(x_train, dtype=np.float32)
    try:
        latent = TorchMap.from_model((encoder, decoder), x)
        report = inspect_map(latent, x_train=x, horizon=steps, max_codes=MAX_STORED_CODES,
                             seed=seed)
        graph = _graph(encoder, decoder, torch.from_numpy(x[:2]),
                       torch.from_numpy(report.codes[:3]))
    except Exception as err:  # noqa: BLE001 - the bundle does not need these files
        log.warning("the inspection files could not be made (%s: %s); the bundle is written "
                    "without them (oodguard inspect will say so)", type(err).__name__, err)
        return {}
    return {INSPECTION_MODEL_FILE: graph, INSPECTION_DATA_FILE: report.to_npz()}


def load_inspection(bundle: Bundle | str | Any) -> tuple[Bundle, OnnxMap, InspectionReport]:
    """The bundle, its latent map (``inspection.onnx``) and its export-time report.

    Raises
    ------
    BundleError
        The bundle has no inspection files (exported before they existed, or the inspection
        graph could not be exported): the message names what is missing and how to re-export; or a
        file is corrupted (hash, format).
    """
    b = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
    extras = read_extras(b)
    missing = [n for n in (INSPECTION_MODEL_FILE, INSPECTION_DATA_FILE) if n not in extras]
    if missing:
        raise BundleError(
            f"bundle {b.path} has no {' and no '.join(missing)}: it was exported without the "
            f"inspection files (by an older oodguard, or its graph failed to export); {_REEXPORT}"
        )
    try:
        report = InspectionReport.from_npz(extras[INSPECTION_DATA_FILE])
        latent = OnnxMap(extras[INSPECTION_MODEL_FILE], input_shape=b.manifest.input.shape,
                         latent_dim=b.manifest.latent_dim)
    except ValueError as err:
        raise BundleError(f"bundle {b.path}: {err}; {_REEXPORT}") from err
    except Exception as err:  # onnxruntime's own errors (a graph it cannot load)
        raise BundleError(f"bundle {b.path}: {INSPECTION_MODEL_FILE} cannot be loaded by "
                          f"ONNX Runtime ({type(err).__name__}: {err}); {_REEXPORT}") from err
    return b, latent, report
