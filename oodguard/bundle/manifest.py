"""``manifest.json``: the contract between the offline stages and the runtime.

The schema version, the versions that produced the bundle, the input signature, the feature
names, the step count ``T``, the attractor count and the sha256 of every other file. Every
field is type- and range-checked when read (:meth:`Manifest.from_dict`); pure Python.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from oodguard._version import __version__
from oodguard.bundle.safejson import get, int_in, str_map
from oodguard.errors import BundleError, check_parameter

__all__ = [
    "ALL_FILES",
    "BUNDLE_FILES",
    "CALIBRATION_FILE",
    "EXTRA_FILES",
    "FIX_CALIBRATION",
    "FIX_MANIFEST",
    "INSPECTION_DATA_FILE",
    "INSPECTION_MODEL_FILE",
    "MANIFEST_FILE",
    "MAX_BYTES",
    "MODEL_FILE",
    "REFERENCE_FILE",
    "SCHEMA_VERSION",
    "InputSpec",
    "Manifest",
]

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
CALIBRATION_FILE = "calibration.json"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILES = frozenset({MODEL_FILE, CALIBRATION_FILE, MANIFEST_FILE})
# Optional files for offline tools (``oodguard inspect``): listed and hashed in the manifest like
# the others, but read only on request (read_extras), so the runtime never pays for them. Their
# format version lives inside them (the inspection arrays carry ``format_version``).
INSPECTION_MODEL_FILE = "inspection.onnx"
INSPECTION_DATA_FILE = "inspection.npz"
EXTRA_FILES = frozenset({INSPECTION_MODEL_FILE, INSPECTION_DATA_FILE})
# Reference inputs and the features the exporter computed for them: read at load (when listed)
# so the guard can check its own execution provider against them (oodguard.bundle.reference).
REFERENCE_FILE = "reference.npz"
ALL_FILES = BUNDLE_FILES | EXTRA_FILES | {REFERENCE_FILE}

# Size caps, checked on the opened file before it is read: a corrupted or hostile bundle must
# not make the loader allocate without bound (the safetensors lesson).
MAX_BYTES = {
    MANIFEST_FILE: 1 << 20,
    CALIBRATION_FILE: 64 << 20,
    MODEL_FILE: 2 << 30,
    INSPECTION_MODEL_FILE: 2 << 30,
    INSPECTION_DATA_FILE: 2 << 30,
    REFERENCE_FILE: 64 << 20,
}
_DTYPES = ("float32",)
_MAX_RANK = 8
_MAX_SAMPLE_VALUES = 1 << 28  # values in one sample: 1 GiB of float32
_MAX_STEPS = 10_000
_MAX_COUNT = 1_000_000  # attractors, latent dimensions
_MAX_FEATURES = 1024
FIX_MANIFEST = "re-export the bundle with oodguard.export"
FIX_CALIBRATION = "re-run oodguard.calibration.calibrate on the bundle"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """The graph's input: its name, the shape of one sample (no batch axis) and its dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_parameter(isinstance(self.name, str) and bool(self.name), "name",
                        "a non-empty string", self.name, owner="InputSpec")
        check_parameter(
            isinstance(self.shape, tuple) and 1 <= len(self.shape) <= _MAX_RANK
            and all(_is_int(d) and d > 0 for d in self.shape), "shape",
            f"a non-empty tuple of positive ints (at most {_MAX_RANK} axes)", self.shape,
            owner="InputSpec")
        check_parameter(math.prod(self.shape) <= _MAX_SAMPLE_VALUES, "shape",
                        f"at most {_MAX_SAMPLE_VALUES} values per sample (not over the limit)",
                        self.shape,
                        owner="InputSpec")
        check_parameter(self.dtype in _DTYPES, "dtype", f"one of {_DTYPES}", self.dtype,
                        owner="InputSpec")

    @property
    def size(self) -> int:
        """Number of values in one sample, ``prod(shape)``."""
        return math.prod(self.shape)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What ``manifest.json`` holds. ``files`` maps each file name to its sha256 (hex).

    ``dynamics`` is the exporter's record of the latent map's contraction and stability (a
    JSON object; empty when not recorded).
    """

    input: InputSpec
    output_name: str
    feature_names: tuple[str, ...]
    steps: int
    attractor_count: int
    latent_dim: int
    convergence_tol: float
    parity: Mapping[str, Any] = field(default_factory=dict)
    dynamics: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    oodguard_version: str = __version__
    created: str = ""

    def __post_init__(self) -> None:
        check_parameter(_is_int(self.steps) and 1 <= self.steps <= _MAX_STEPS, "steps",
                        f"an int in [1, {_MAX_STEPS}]", self.steps, owner="Manifest")
        names = self.feature_names
        check_parameter(
            bool(names) and len(names) <= _MAX_FEATURES
            and all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names),
            "feature_names", f"unique non-empty strings (1 to {_MAX_FEATURES})", names,
            owner="Manifest")
        check_parameter(math.isfinite(self.convergence_tol) and self.convergence_tol >= 0,
                        "convergence_tol", "finite and >= 0", self.convergence_tol,
                        owner="Manifest")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input"]["shape"] = list(self.input.shape)
        d["feature_names"] = list(self.feature_names)
        d["files"] = dict(self.files)
        d["versions"] = dict(self.versions)
        d["parity"] = dict(self.parity)
        d["dynamics"] = dict(self.dynamics)
        if not d["dynamics"]:
            del d["dynamics"]  # schema-1 manifests without it stay byte-identical (golden test)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """Build from the ``manifest.json`` document, checking every field's type and range.

        Raises
        ------
        BundleError
            A field is missing, unknown, of the wrong type or out of range (the message names
            it).
        """
        try:
            if not isinstance(d, Mapping):
                raise TypeError(f"expected an object, got {type(d).__name__}")
            unknown = sorted(set(d) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(f"unknown fields {unknown}")
            inp = get(d, "input", dict)
            names = get(d, "feature_names", list)
            return cls(
                schema_version=int_in(d, "schema_version", 1, SCHEMA_VERSION),
                oodguard_version=get(d, "oodguard_version", str, ""),
                created=get(d, "created", str, ""),
                input=InputSpec(
                    name=get(inp, "name", str),
                    shape=tuple(get(inp, "shape", list)),
                    dtype=get(inp, "dtype", str),
                ),
                output_name=get(d, "output_name", str),
                feature_names=tuple(names),
                steps=int_in(d, "steps", 1, _MAX_STEPS),
                attractor_count=int_in(d, "attractor_count", 0, _MAX_COUNT),
                latent_dim=int_in(d, "latent_dim", 1, _MAX_COUNT),
                convergence_tol=float(get(d, "convergence_tol", (int, float))),
                parity=dict(get(d, "parity", dict, {})),
                dynamics=dict(get(d, "dynamics", dict, {})),
                versions=str_map(d, "versions", {}),
                files=str_map(d, "files"),
            )
        except (TypeError, ValueError, OverflowError) as err:
            raise BundleError(f"manifest.json is malformed: {err}; {FIX_MANIFEST}") from err

