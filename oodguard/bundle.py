"""The bundle: a directory holding ``model.onnx``, ``calibration.json`` and ``manifest.json``.

The manifest is the contract between the offline stages and the runtime: the schema version,
the versions that produced the bundle, the input signature, the feature names, the step count
``T``, the attractor count and the sha256 of every other file. This module is pure Python (no
onnxruntime): it is shared by the exporter, the calibrator and the runtime.

**Reading is total.** Every malformed or hostile bundle is a ``BundleError`` saying what is
wrong and how to fix it. The directory is opened once; each file is opened relative to that
descriptor without following links, ``fstat``-ed, and read only if it is a regular file, at
most its size cap (:mod:`oodguard._fsio`): links (to ``/dev/zero``, out of the bundle), FIFOs,
devices and directories are refused. JSON is parsed with bounded depth and number length and
without NaN/Infinity (:mod:`oodguard._safejson`); every manifest field is type- and range-
checked; calibration numbers are checked by :meth:`oodguard.scoring.Scorer.from_dict`.

**Writing is atomic and deletes only what it accounts for.** :func:`write_bundle` builds the
new bundle in a sibling ``.NAME.tmp-XXXX`` (files and directory fsync-ed), then renames it to
a free path (``RENAME_NOREPLACE``), or — with ``overwrite=True`` over a bundle — *exchanges*
the two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``): the path never stops
naming a complete bundle. The previous bundle, now at the temporary name, is removed only if
it holds exactly ``manifest.json`` and the files its manifest lists; else it is kept there and
a warning says where. A file, a link or a directory holding anything a bundle does not have is
refused whatever ``overwrite`` says (``BundleExistsError``); an empty directory is replaced. A
failure or a kill before the exchange leaves the previous bundle untouched (at worst a
``.NAME.tmp-XXXX`` directory beside it).

A reader's files all come from the one directory it opened: the old bundle or the new, never
a mix. If the writer removes the old directory under a reader, the reader finds a file gone,
sees that the path names another directory, and reads again (:data:`READ_ATTEMPTS` in all).
Without ``renameat2`` (not Linux, or a file system that refuses it) the swap falls back to two
renames, restoring the old bundle if the second fails; between them the path is missing for a
moment. Only the exchange is atomic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from oodguard import _fsio
from oodguard._safejson import get, int_in, load_object, str_map
from oodguard._version import __version__
from oodguard.errors import BundleError, BundleExistsError, NotCalibratedError

__all__ = [
    "BUNDLE_FILES",
    "CALIBRATION_FILE",
    "EXTRA_FILES",
    "INSPECTION_DATA_FILE",
    "INSPECTION_MODEL_FILE",
    "REFERENCE_FILE",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "READ_ATTEMPTS",
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

log = logging.getLogger(__name__)

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
REFERENCE_FILE = "reference.npz"  # the export's reference inputs and features (parity at load)
EXTRA_FILES = frozenset({INSPECTION_MODEL_FILE, INSPECTION_DATA_FILE, REFERENCE_FILE})
_ALL_FILES = BUNDLE_FILES | EXTRA_FILES
READ_ATTEMPTS = 3

# Size caps, checked on the opened file before it is read: a corrupted or hostile bundle must
# not make the loader allocate without bound (the safetensors lesson).
_MAX_BYTES = {
    MANIFEST_FILE: 1 << 20,
    CALIBRATION_FILE: 64 << 20,
    MODEL_FILE: 2 << 30,
    INSPECTION_MODEL_FILE: 2 << 30,
    INSPECTION_DATA_FILE: 2 << 30,
    REFERENCE_FILE: 1 << 30,
}
_DTYPES = ("float32",)
_MAX_RANK = 8
_MAX_SAMPLE_VALUES = 1 << 28  # values in one sample: 1 GiB of float32
_MAX_STEPS = 10_000
_MAX_COUNT = 1_000_000  # attractors, latent dimensions
_MAX_FEATURES = 1024
_FIX_MANIFEST = "re-export the bundle with oodguard.export"
_FIX_CALIBRATION = "re-run oodguard.calibration.calibrate on the bundle"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """The graph's input: its name, the shape of one sample (no batch axis) and its dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"InputSpec.name must be a non-empty string. Got {self.name!r}")
        if (
            not isinstance(self.shape, tuple)
            or not 1 <= len(self.shape) <= _MAX_RANK
            or any(not _is_int(d) or d <= 0 for d in self.shape)
        ):
            raise ValueError(
                f"InputSpec.shape must be a non-empty tuple of positive ints (at most "
                f"{_MAX_RANK} axes). Got {self.shape!r}"
            )
        if math.prod(self.shape) > _MAX_SAMPLE_VALUES:
            raise ValueError(
                f"InputSpec.shape {self.shape} has {math.prod(self.shape)} values per sample, "
                f"over the {_MAX_SAMPLE_VALUES} limit"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"InputSpec.dtype must be one of {_DTYPES}. Got {self.dtype!r}")

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
        if not _is_int(self.steps) or not 1 <= self.steps <= _MAX_STEPS:
            raise ValueError(
                f"Manifest.steps must be an int in [1, {_MAX_STEPS}]. Got {self.steps}"
            )
        if (
            not self.feature_names
            or len(self.feature_names) > _MAX_FEATURES
            or any(not isinstance(n, str) or not n for n in self.feature_names)
            or len(set(self.feature_names)) != len(self.feature_names)
        ):
            raise ValueError(
                f"Manifest.feature_names must be unique non-empty strings (1 to {_MAX_FEATURES})."
                f" Got {self.feature_names!r:.200}"
            )
        if not math.isfinite(self.convergence_tol) or self.convergence_tol < 0:
            raise ValueError(
                f"Manifest.convergence_tol must be finite and >= 0. Got {self.convergence_tol}"
            )

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
            raise BundleError(f"manifest.json is malformed: {err}; {_FIX_MANIFEST}") from err


@dataclass(frozen=True)
class Bundle:
    """A bundle read from disk and verified: the manifest and the raw bytes of each file
    (the optional :data:`EXTRA_FILES` excepted: :func:`read_extras` reads those)."""

    path: Path
    manifest: Manifest
    files: Mapping[str, bytes]
    # calibration.json as parsed by read_bundle (None: not parsed yet, or not calibrated)
    calibration: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def calibrated(self) -> bool:
        return CALIBRATION_FILE in self.files

    def sha256(self, name: str = MODEL_FILE) -> str:
        return self.manifest.files[name]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_calibration(bundle: Bundle) -> dict[str, Any]:
    """The ``calibration.json`` document of a bundle, parsed within the bounds of
    :func:`oodguard._safejson.load_object` (its numbers are checked by ``Scorer.from_dict``).

    Raises
    ------
    NotCalibratedError
        The bundle has no ``calibration.json``.
    BundleError
        It is not a bounded, finite JSON object.
    """
    if CALIBRATION_FILE not in bundle.files:
        raise NotCalibratedError(
            f"bundle {bundle.path} has no {CALIBRATION_FILE}; calibrate it first on "
            f"in-distribution validation inputs: oodguard calibrate {bundle.path} VAL.npy "
            "(in Python: oodguard.calibration.calibrate(bundle, x_validation))"
        )
    if bundle.calibration is not None:
        return dict(bundle.calibration)
    return load_object(bundle.files[CALIBRATION_FILE], CALIBRATION_FILE, _FIX_CALIBRATION)


class _Stale(Exception):
    """The directory being read was replaced and removed under the reader: read again."""


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read a bundle directory and verify its schema version and every file's sha256.

    Raises
    ------
    BundleError
        The directory or a file is missing or not a regular file, a file is over its size
        cap, a hash differs (the file was changed after the bundle was written), a JSON
        document or a manifest field is malformed, or the schema is newer than this oodguard
        understands.
    """
    root = Path(path)
    for _ in range(READ_ATTEMPTS):
        dir_fd = _fsio.open_dir(root)
        try:
            return _read_once(root, dir_fd)
        except _Stale:
            continue
        finally:
            os.close(dir_fd)
    raise BundleError(
        f"bundle {root} was replaced {READ_ATTEMPTS} times while it was being read; retry"
    )


def _read_file(root: Path, dir_fd: int, name: str) -> bytes:
    try:
        return _fsio.read_regular(dir_fd, root, name, _MAX_BYTES[name])
    except _fsio.FileMissing as err:
        here = os.fstat(dir_fd)
        try:
            now = os.stat(root)
            moved = (now.st_dev, now.st_ino) != (here.st_dev, here.st_ino)
        except OSError:
            moved = True
        if moved or here.st_nlink == 0:
            raise _Stale from err  # a writer swapped a new bundle in and removed this one
        if name not in (MANIFEST_FILE, MODEL_FILE):  # listed in the manifest, yet missing
            raise NotCalibratedError(
                f"{root / MANIFEST_FILE} lists {name}, but {root} holds no {name}: it was "
                "deleted or not copied along. Copy the whole bundle directory again (the "
                "manifest's hashes cover every file it lists), or export and calibrate anew"
            ) from err
        raise BundleError(
            f"{root} holds no {name}; a bundle needs {MANIFEST_FILE} and {MODEL_FILE} "
            "(export one with oodguard.export.export_bundle)"
        ) from err


def _checked(root: Path, name: str, data: bytes, digest: str) -> bytes:
    actual = _sha256(data)
    if actual != digest:
        raise BundleError(
            f"{root / name} has sha256 {actual[:12]}…, but the manifest records "
            f"{digest[:12]!r}…: the file was changed or corrupted after the bundle was "
            "written; re-export or re-calibrate the bundle instead of editing it"
        )
    return data


def read_extras(bundle: Bundle) -> dict[str, bytes]:
    """The optional files (:data:`EXTRA_FILES`) the bundle's manifest lists, read now and
    checked against the manifest's sha256; ``{}`` for a bundle without them (exported by an
    older oodguard). The runtime never calls this.

    Raises
    ------
    BundleError
        A listed file is missing, not a regular file, over its size cap, or its hash differs
        from the manifest's (also when the bundle was replaced since ``bundle`` was read).
    """
    names = sorted(n for n in bundle.manifest.files if n in EXTRA_FILES)
    if not names:
        return {}
    root = bundle.path
    dir_fd = _fsio.open_dir(root)
    try:
        out = {}
        for name in names:
            try:
                data = _fsio.read_regular(dir_fd, root, name, _MAX_BYTES[name])
            except _fsio.FileMissing as err:
                raise BundleError(
                    f"{root / MANIFEST_FILE} lists {name}, but {root} holds no {name}: copy "
                    "the whole bundle directory again, or re-export it"
                ) from err
            out[name] = _checked(root, name, data, bundle.manifest.files[name])
        return out
    finally:
        os.close(dir_fd)


def _read_once(root: Path, dir_fd: int) -> Bundle:
    where = root / MANIFEST_FILE
    doc = load_object(_read_file(root, dir_fd, MANIFEST_FILE), str(where), _FIX_MANIFEST)
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{where} has no integer schema_version; {_FIX_MANIFEST}")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"bundle {root} has schema version {version}, newer than the {SCHEMA_VERSION} this "
            f"oodguard {__version__} reads; upgrade oodguard (pip install -U oodguard)"
        )
    if version < 1:
        raise BundleError(f"bundle {root} has invalid schema version {version}; {_FIX_MANIFEST}")
    manifest = Manifest.from_dict(doc)
    if MODEL_FILE not in manifest.files:
        raise BundleError(f"{where} lists no {MODEL_FILE}; {_FIX_MANIFEST}")
    files: dict[str, bytes] = {}
    for name, digest in manifest.files.items():
        if name not in _ALL_FILES or name == MANIFEST_FILE:
            raise BundleError(f"{where} lists an unexpected file {name!r}; {_FIX_MANIFEST}")
        if name in EXTRA_FILES:
            continue  # read and checked on request only (read_extras)
        files[name] = _checked(root, name, _read_file(root, dir_fd, name), digest)
    bundle = Bundle(path=root, manifest=manifest, files=files)
    if not bundle.calibrated:
        return bundle
    # Parsed once, here: a syntactically hostile calibration.json fails at read already, and
    # the guard reuses the document (load_calibration).
    return Bundle(path=root, manifest=manifest, files=files, calibration=load_calibration(bundle))


def check_destination(path: str | os.PathLike[str], *, overwrite: bool) -> str:
    """Check that :func:`write_bundle` may write to ``path``, without writing anything.

    Returns ``"absent"``, ``"empty"`` (an empty directory) or ``"full"`` (a bundle, only with
    ``overwrite``). Callers with expensive work to do first (calibration) call it up front.

    Raises
    ------
    BundleExistsError
        A bundle is there and ``overwrite`` is False, or something that is not a bundle is
        there (a file, a link, a directory holding other files), whatever ``overwrite`` says.
    """
    root = Path(path)
    state = _fsio.existing_state(root, _ALL_FILES, "bundle")
    if state == "full" and not overwrite:
        raise BundleExistsError(
            f"{root} exists and holds a bundle; pass overwrite=True (CLI: --overwrite) to "
            "replace it"
        )
    return state


def write_bundle(
    path: str | os.PathLike[str],
    manifest: Manifest,
    files: Mapping[str, bytes],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``files`` and a manifest that records their hashes, atomically, to ``path``.

    See the module docstring for the protocol. Returns the bundle path.

    Raises
    ------
    BundleExistsError
        ``path`` holds a bundle and ``overwrite`` is False, or holds something that is not a
        bundle (a file, a link, a directory with other files) — refused even with
        ``overwrite=True``. Nothing is written or deleted.
    BundleError
        ``files`` are not bundle files (:data:`BUNDLE_FILES`, :data:`EXTRA_FILES`), or the
        manifest does not serialise to a valid one.
    """
    root = Path(path)
    if MODEL_FILE not in files:
        raise BundleError(f"a bundle needs {MODEL_FILE}; got files {sorted(files)}")
    unknown = set(files) - {MODEL_FILE, CALIBRATION_FILE, *EXTRA_FILES}
    if unknown:
        raise BundleError(f"unexpected bundle files {sorted(unknown)}")
    state = check_destination(root, overwrite=overwrite)
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
    try:
        text = json.dumps(final.to_dict(), indent=2, allow_nan=False) + "\n"
    except ValueError as err:
        raise BundleError(f"the manifest holds a non-finite number ({err})") from err
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fsio.new_dir(root.parent, f".{root.name}.tmp-")
    try:
        payload = {**files, MANIFEST_FILE: text.encode()}
        for name, data in payload.items():
            with open(tmp / name, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        _fsio.fsync_dir(tmp)
        if state == "absent":
            try:
                _fsio.rename_noreplace(tmp, root)
            except FileExistsError as err:
                raise BundleExistsError(
                    f"{root} appeared while the bundle was being written; nothing was replaced"
                ) from err
            replaced = False
        else:
            _fsio.swap_dirs(tmp, root)
            replaced = True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # only the files written above: tmp is ours
        raise
    _fsio.fsync_dir(root.parent)
    if replaced:  # tmp now names the previous bundle (or the empty directory that was there)
        _fsio.discard_replaced(tmp, root, _listed_files)
    return root


def _listed_files(dir_fd: int) -> set[str]:
    """``manifest.json`` and the files the manifest in the open directory lists."""
    raw = _fsio.read_regular(dir_fd, Path("."), MANIFEST_FILE, _MAX_BYTES[MANIFEST_FILE])
    listed = set(get(load_object(raw, MANIFEST_FILE, ""), "files", dict))
    if not listed <= _ALL_FILES:
        raise ValueError(f"the manifest lists files a bundle does not have: {sorted(listed)}")
    return listed | {MANIFEST_FILE}
