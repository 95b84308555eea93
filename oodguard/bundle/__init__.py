"""The bundle: a directory holding ``model.onnx``, ``calibration.json`` and ``manifest.json``.

- :mod:`~oodguard.bundle.manifest` — what ``manifest.json`` holds, checked field by field;
- :mod:`~oodguard.bundle.store` — reading (total, bounded) and writing (atomic) a bundle;
- :mod:`~oodguard.bundle.calibration_doc` — ``calibration.json``: its reader (every number's
  domain) and its writer, side by side;
- :mod:`~oodguard.bundle.fsio`, :mod:`~oodguard.bundle.safejson` — the file-system and JSON
  primitives they stand on.

Pure Python and numpy: shared by the exporter, the calibrator and the runtime.
"""

from oodguard.bundle.manifest import (
    BUNDLE_FILES,
    CALIBRATION_FILE,
    EXTRA_FILES,
    INSPECTION_DATA_FILE,
    INSPECTION_MODEL_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    SCHEMA_VERSION,
    InputSpec,
    Manifest,
)
from oodguard.bundle.store import (
    READ_ATTEMPTS,
    Bundle,
    check_destination,
    load_calibration,
    read_bundle,
    read_extras,
    write_bundle,
)

__all__ = [
    "BUNDLE_FILES",
    "CALIBRATION_FILE",
    "EXTRA_FILES",
    "INSPECTION_DATA_FILE",
    "INSPECTION_MODEL_FILE",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "READ_ATTEMPTS",
    "REFERENCE_FILE",
    "SCHEMA_VERSION",
    "Bundle",
    "InputSpec",
    "Manifest",
    "check_destination",
    "load_calibration",
    "read_bundle",
    "read_extras",
    "write_bundle",
]
