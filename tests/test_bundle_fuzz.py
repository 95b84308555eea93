"""Fuzzing the bundle loader: structure-aware mutations of manifest.json and calibration.json
and byte mutations of model.onnx, with the sha256 hashes recomputed so they pass.

The property: loading either raises ``BundleError`` (``NotCalibratedError`` is one), or gives
a guard that scores a fixed batch consistently — one score per row, the same scores when the
batch is cut into pieces, p-values in (0, 1], verdicts equal to ``p <= alpha``. Anything else
(an ``AttributeError``, ``OverflowError``, ``RecursionError``, a hang...) fails.

Built once per module from the session's tiny calibrated bundle; the JSON fuzzers run their
cases through everything ``Guard.load`` does before ONNX Runtime (read, verify, parse, check
the calibration numbers) and run the full ``Guard.load`` only for documents that pass those
checks; the model fuzzer always runs ``Guard.load``. ~2 400 cases, about 40 s on a loaded
2-core host.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oodguard import Guard
from oodguard.bundle import (
    CALIBRATION_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    REFERENCE_FILE,
    load_calibration,
    read_bundle,
)
from oodguard.errors import BundleError
from oodguard.scoring import Scorer


def _fuzz(n: int) -> settings:
    """Fixed-seed (derandomized) runs of ``n`` cases: the same cases in every CI run."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# Values that break naive loaders; RAW ones are spliced into the JSON text as they are.
LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from([0, -1, 1, 10**30, 1e308, -1e308, 5e-324, 0.5, "", "model.onnx"]),
)
VALUES = st.recursive(
    LEAF, lambda c: st.one_of(st.lists(c, max_size=4),
                              st.dictionaries(st.text(max_size=8), c, max_size=4)),
    max_leaves=8,
)
RAW = st.sampled_from([
    "9" * 5000, "-" + "9" * 400, "1e999", "-1e999", "NaN", "Infinity", "-Infinity",
    "[" * 3000 + "]" * 3000, '{"a":' * 3000 + "1" + "}" * 3000, "1" * 70 + ".5", "0." + "0" * 80,
    '"\\ud800"', "[" * 33 + "]" * 33,
])
_PLACEHOLDER = "\u2603raw\u2603"
_SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else ""
OUTCOMES: Counter[tuple[str, str]] = Counter()  # (fuzzer, "refused" | "loaded")


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return list(node)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


@st.composite
def mutated_text(draw: Any, doc: dict[str, Any]) -> str:
    """The document's JSON text after 1 to 3 structure-aware mutations."""
    doc = copy.deepcopy(doc)
    raw = None
    for _ in range(draw(st.integers(1, 3))):
        # A random walk from the root: top-level fields are hit evenly, not in proportion to
        # their size (calibration_scores holds hundreds of numbers).
        if not _children(doc):
            break
        parent, key = doc, draw(st.sampled_from(_children(doc)))
        while _children(parent[key]) and draw(st.booleans()):
            parent, key = parent[key], draw(st.sampled_from(_children(parent[key])))
        op = draw(st.sampled_from(["replace", "delete", "extra", "scale", "raw", "swap_type"]))
        if op == "delete":
            del parent[key]
        elif op == "extra" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(VALUES)
        elif op == "scale" and isinstance(parent[key], (int, float)):
            parent[key] = parent[key] * draw(st.sampled_from([0, -1, 1e300, 1e-300, 1e10, -3]))
        elif op == "scale" and isinstance(parent[key], list) and parent[key]:
            factor = draw(st.sampled_from([0, -1, 1e308, 1e-308, 1e12]))
            parent[key] = [v * factor if isinstance(v, (int, float)) else v for v in parent[key]]
        elif op == "raw" and raw is None:
            raw = draw(RAW)
            parent[key] = _PLACEHOLDER
        elif op == "swap_type":
            v = parent[key]
            parent[key] = [v] if not isinstance(v, list) else {"0": v}
        else:
            parent[key] = draw(VALUES)
    text = json.dumps(doc)  # NaN / Infinity floats are written as such: refused on load
    return text if raw is None else text.replace(json.dumps(_PLACEHOLDER), raw)


@pytest.fixture(scope="module")
def base(bundle) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    b = read_bundle(bundle)
    return {
        "manifest": json.loads((bundle / MANIFEST_FILE).read_text()),
        "calibration": load_calibration(b),
        "model": b.files[MODEL_FILE],
        "reference": b.files[REFERENCE_FILE],  # parity checked at load: a changed graph fails
        "names": b.manifest.feature_names,
        # in memory where there is a tmpfs: thousands of small writes, not a disk's worth
        "workdir": Path(tempfile.mkdtemp(prefix="oodguard-fuzz-", dir=_SHM if _SHM else None)),
        "written": {},
    }


@pytest.fixture(scope="module")
def batch(data) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate([data["test"][:5], data["noise"][:4]])


def _write(base: dict[str, Any], where: str, *, manifest: str | None = None,
           calibration: bytes | None = None, model: bytes | None = None,
           rehash: bool = True) -> Path:
    """The bundle directory ``where`` (one per fuzzer, rewritten for each case) holding the
    base files with some replaced; the manifest's hashes are recomputed for the files present
    (when it is still an object with a "files" object)."""
    path = base["workdir"] / where
    path.mkdir(exist_ok=True)
    files = {MODEL_FILE: base["model"] if model is None else model,
             CALIBRATION_FILE: (json.dumps(base["calibration"]).encode()
                                if calibration is None else calibration),
             REFERENCE_FILE: base["reference"]}
    for name, data in files.items():
        if base["written"].get((where, name)) != data:  # unchanged files are not rewritten
            (path / name).write_bytes(data)
            base["written"][where, name] = data
    text = json.dumps(base["manifest"]) if manifest is None else manifest
    if rehash:
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("files"), dict):
            for name in list(doc["files"]):
                if name in files:
                    doc["files"][name] = hashlib.sha256(files[name]).hexdigest()
            text = json.dumps(doc)  # only when the text was parseable: raw splices stay put
    (path / MANIFEST_FILE).write_text(text)
    return path


def _check_loaded(guard: Guard, batch: np.ndarray) -> None:
    whole = guard.check(batch)
    assert whole.score.shape == (len(batch),) and not np.isnan(whole.score).any()
    # p = 0 marks the rows flagged without a score (a mutated graph may give finite inputs
    # non-finite features: documented, flagged OOD, +inf score); every other p is conformal
    unscored = whole.p_value == 0
    assert np.isinf(whole.score[unscored]).all()
    assert ((whole.p_value[~unscored] > 0) & (whole.p_value[~unscored] <= 1)).all()
    np.testing.assert_array_equal(whole.is_ood, whole.p_value <= guard.alpha)
    pieces = np.concatenate([guard.check(batch[i:i + 2]).score for i in range(0, len(batch), 2)])
    np.testing.assert_allclose(pieces, whole.score, rtol=1e-5, atol=1e-6)


def _load(path: Path, batch: np.ndarray, *, prechecked: bool, fuzzer: str) -> None:
    """Load as the guard does; "refused" or "loaded" (then checked); anything else raises."""
    try:
        if prechecked:  # everything Guard.load does before it builds the ONNX Runtime session
            b = read_bundle(path)
            Scorer.from_dict(load_calibration(b), b.manifest.feature_names)
        guard = Guard.load(path, registry=None, providers="cpu", intra_op_threads=1)
    except BundleError:
        OUTCOMES[fuzzer, "refused"] += 1
        return
    _check_loaded(guard, batch)
    OUTCOMES[fuzzer, "loaded"] += 1


@_fuzz(800)
@given(st.data())
def test_fuzz_manifest(base, batch, data) -> None:  # type: ignore[no-untyped-def]
    text = data.draw(mutated_text(base["manifest"]))
    rehash = data.draw(st.sampled_from([True, True, True, False]))  # mostly: hashes pass
    path = _write(base, "manifest", manifest=text, rehash=rehash)
    _load(path, batch, prechecked=True, fuzzer="manifest")


@_fuzz(800)
@given(st.data())
def test_fuzz_calibration(base, batch, data) -> None:  # type: ignore[no-untyped-def]
    text = data.draw(mutated_text(base["calibration"]))
    path = _write(base, "calibration", calibration=text.encode())
    _load(path, batch, prechecked=True, fuzzer="calibration")


@_fuzz(400)
@given(st.data())
def test_fuzz_model_bytes(base, batch, data) -> None:  # type: ignore[no-untyped-def]
    model = bytearray(base["model"])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        i = data.draw(st.integers(0, len(model) - 1))
        if op == "flip":
            model[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            model[i] = data.draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
        elif op == "truncate":
            del model[i:]
        elif op == "insert":
            model[i:i] = data.draw(st.binary(min_size=1, max_size=16))
        elif len(model) > 1:
            del model[i:i + data.draw(st.integers(1, 64))]
        if not model:
            model = bytearray(b"\x00")
    _load(_write(base, "model", model=bytes(model)), batch, prechecked=False, fuzzer="model")


def test_fuzz_reached_both_outcomes(base) -> None:  # type: ignore[no-untyped-def]
    """Runs after the fuzzers (file order): each fuzzer must have produced bundles that load
    and bundles that are refused — a fuzzer whose cases all fail early tests little."""
    shutil.rmtree(base["workdir"], ignore_errors=True)
    print(dict(OUTCOMES))
    for fuzzer in ("manifest", "calibration", "model"):
        assert OUTCOMES[fuzzer, "refused"] > 0 and OUTCOMES[fuzzer, "loaded"] > 0, OUTCOMES
