"""The bundle's optional inspection files: written by the exporter
(:mod:`oodguard.export.inspection_files`), read here for ``oodguard inspect``.

- ``inspection.onnx``: one small graph ``(x, z) ▶ (E(x), D(z), E(D(z)))`` with dynamic batch
  axes, so the latent map can be iterated, decoded and fed new data from the bundle alone (no
  torch model); ``x`` is a raw input, as ``model.onnx`` takes it;
- ``inspection.npz``: the export-time :class:`~oodguard.inspect.InspectionReport`, made from
  the exporter's own attractor discovery (so it counts the manifest's attractors) on the
  training data the exporter was given (its memorization coefficient needs those samples,
  which the bundle does not keep), with ``format_version``.

Both are listed and hashed in ``manifest.json`` (:data:`oodguard.bundle.EXTRA_FILES`); the
runtime never reads them. The training codes stored with the report (at most
``MAX_STORED_CODES``) decode to approximations of training samples: a bundle with inspection
files says more about its training data than one without.
"""

from __future__ import annotations

import logging
from typing import Any

from oodguard.bundle import (
    INSPECTION_DATA_FILE,
    INSPECTION_MODEL_FILE,
    Bundle,
    read_bundle,
    read_extras,
)
from oodguard.errors import BundleError
from oodguard.inspect.latent_map import OnnxMap
from oodguard.inspect.report import InspectionReport

__all__ = ["MAX_STORED_CODES", "load_inspection"]

log = logging.getLogger(__name__)

MAX_STORED_CODES = 512
_REEXPORT = (
    "re-export the bundle with this oodguard (oodguard.export.export_bundle writes the "
    "inspection files), or pass the model's training data and use "
    "oodguard.inspect.inspect_map on the torch model"
)


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
