"""The bundle: a directory holding ``model.onnx``, ``calibration.json`` and ``manifest.json``.

The manifest is the contract between the offline stages and the runtime. It records the
schema version, the versions that produced the bundle, the input signature, the feature names,
the step count ``T``, the attractor count and the sha256 of every other file. Loading checks all
of it before anything is run, and bundles are written atomically: a reader sees the old bundle
or the new one, never half of either.

This module is pure Python (no onnxruntime): it is shared by the exporter, the calibrator and
the runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from oodguard._version import __version__
from oodguard.errors import BundleError

__all__ = [
    "CALIBRATION_FILE",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "SCHEMA_VERSION",
    "Bundle",
    "InputSpec",
    "Manifest",
    "read_bundle",
    "write_bundle",
]

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
CALIBRATION_FILE = "calibration.json"
MANIFEST_FILE = "manifest.json"

# Size caps, checked before a file is parsed: a corrupted or hostile bundle must not make the
# loader allocate without bound (the safetensors lesson).
_MAX_BYTES = {
    MANIFEST_FILE: 1 << 20,
    CALIBRATION_FILE: 64 << 20,
    MODEL_FILE: 2 << 30,
}
_DTYPES = ("float32",)


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """The graph's input: its name, the shape of one sample (no batch axis) and its dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("InputSpec.name must be a non-empty string")
        if not self.shape or any(not isinstance(d, int) or d <= 0 for d in self.shape):
            raise ValueError(
                f"InputSpec.shape must be a non-empty tuple of positive ints. Got {self.shape!r}"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"InputSpec.dtype must be one of {_DTYPES}. Got {self.dtype!r}")

    @property
    def size(self) -> int:
        """Number of values in one sample, ``prod(shape)``."""
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What ``manifest.json`` holds. ``files`` maps each file name to its sha256 (hex)."""

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
        if self.steps < 1:
            raise ValueError(f"Manifest.steps must be >= 1. Got {self.steps}")
        if not self.feature_names or len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(
                f"Manifest.feature_names must be unique and non-empty. Got {self.feature_names!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input"]["shape"] = list(self.input.shape)
        d["feature_names"] = list(self.feature_names)
        d["files"] = dict(self.files)
        d["versions"] = dict(self.versions)
        d["parity"] = dict(self.parity)
        if self.dynamics:  # optional: a manifest written without it round-trips unchanged
            d["dynamics"] = dict(self.dynamics)
        else:
            del d["dynamics"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        try:
            inp = d["input"]
            return cls(
                schema_version=int(d["schema_version"]),
                oodguard_version=str(d.get("oodguard_version", "")),
                created=str(d.get("created", "")),
                input=InputSpec(
                    name=str(inp["name"]),
                    shape=tuple(int(s) for s in inp["shape"]),
                    dtype=str(inp["dtype"]),
                ),
                output_name=str(d["output_name"]),
                feature_names=tuple(str(n) for n in d["feature_names"]),
                steps=int(d["steps"]),
                attractor_count=int(d["attractor_count"]),
                latent_dim=int(d["latent_dim"]),
                convergence_tol=float(d["convergence_tol"]),
                parity=dict(d.get("parity", {})),
                dynamics=dict(d.get("dynamics", {})),
                versions={str(k): str(v) for k, v in d.get("versions", {}).items()},
                files={str(k): str(v) for k, v in d["files"].items()},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(
                f"manifest.json is malformed ({type(err).__name__}: {err}); "
                "re-export the bundle with oodguard.export"
            ) from err


@dataclass(frozen=True)
class Bundle:
    """A bundle read from disk and verified: the manifest and the raw bytes of each file."""

    path: Path
    manifest: Manifest
    files: Mapping[str, bytes]

    @property
    def calibrated(self) -> bool:
        return CALIBRATION_FILE in self.files

    def sha256(self, name: str = MODEL_FILE) -> str:
        return self.manifest.files[name]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_capped(path: Path, name: str) -> bytes:
    cap = _MAX_BYTES.get(name, 64 << 20)
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise BundleError(
            f"{path.parent} holds no {name}; a bundle needs {MANIFEST_FILE} and {MODEL_FILE} "
            "(export one with oodguard.export.export_bundle)"
        ) from err
    if size > cap:
        raise BundleError(f"{path} is {size} bytes, over the {cap}-byte limit for {name}")
    return path.read_bytes()


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read a bundle directory and verify its schema version and every file's sha256.

    Raises
    ------
    BundleError
        The directory or a file is missing, a hash differs (the file was changed after the
        bundle was written), the manifest is malformed, or the schema is newer than this
        oodguard understands.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle {root} is not a directory; pass the folder export_bundle wrote")
    raw = _read_capped(root / MANIFEST_FILE, MANIFEST_FILE)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{root / MANIFEST_FILE} is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise BundleError(f"{root / MANIFEST_FILE} must hold a JSON object")
    version = doc.get("schema_version")
    if not isinstance(version, int):
        raise BundleError(f"{root / MANIFEST_FILE} has no integer schema_version")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"bundle {root} has schema version {version}, newer than the {SCHEMA_VERSION} this "
            f"oodguard {__version__} reads; upgrade oodguard (pip install -U oodguard)"
        )
    if version < 1:
        raise BundleError(f"bundle {root} has invalid schema version {version}")
    manifest = Manifest.from_dict(doc)
    if MODEL_FILE not in manifest.files:
        raise BundleError(f"{root / MANIFEST_FILE} lists no {MODEL_FILE}")
    files: dict[str, bytes] = {}
    for name, digest in manifest.files.items():
        if name not in _MAX_BYTES or name == MANIFEST_FILE:
            raise BundleError(f"{root / MANIFEST_FILE} lists an unexpected file {name!r}")
        data = _read_capped(root / name, name)
        actual = _sha256(data)
        if actual != digest:
            raise BundleError(
                f"{root / name} has sha256 {actual[:12]}…, but the manifest records "
                f"{digest[:12]}…: the file was changed or corrupted after the bundle was written; "
                "re-export or re-calibrate the bundle instead of editing it"
            )
        files[name] = data
    return Bundle(path=root, manifest=manifest, files=files)


def write_bundle(
    path: str | os.PathLike[str],
    manifest: Manifest,
    files: Mapping[str, bytes],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``files`` and a manifest that records their hashes, atomically, to ``path``.

    The bundle is assembled in a temporary sibling directory, flushed to disk, then renamed
    into place; an existing bundle at ``path`` is replaced only with ``overwrite=True``.
    Returns the bundle path.
    """
    root = Path(path)
    if MODEL_FILE not in files:
        raise BundleError(f"a bundle needs {MODEL_FILE}; got files {sorted(files)}")
    unknown = set(files) - {MODEL_FILE, CALIBRATION_FILE}
    if unknown:
        raise BundleError(f"unexpected bundle files {sorted(unknown)}")
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists; pass overwrite=True to replace the bundle")
    digests = {name: _sha256(data) for name, data in sorted(files.items())}
    final = Manifest.from_dict(
        {
            **manifest.to_dict(),
            "files": digests,
            "schema_version": SCHEMA_VERSION,
            "oodguard_version": __version__,
            "created": manifest.created
            or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        payload = dict(files)
        payload[MANIFEST_FILE] = (json.dumps(final.to_dict(), indent=2) + "\n").encode()
        for name, data in payload.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if root.exists():
            old = root.parent / f".{root.name}.old-{os.getpid()}"
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
