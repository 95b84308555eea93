"""Load-time checks of calibration.json (oodguard.bundle.calibration_doc via
Scorer.from_dict): every number out of its domain is a BundleError naming the field, on a real
calibrated bundle."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from oodguard import Guard
from oodguard.bundle import CALIBRATION_FILE, MANIFEST_FILE, load_calibration, read_bundle
from oodguard.errors import BundleError
from oodguard.scoring import Scorer


@pytest.fixture(scope="module")
def doc(bundle) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return load_calibration(read_bundle(bundle))


@pytest.fixture(scope="module")
def names(bundle) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    return read_bundle(bundle).manifest.feature_names


def _with_calibration(bundle: Path, tmp: Path, text: str) -> Path:
    """A copy of the bundle with calibration.json replaced and its hash recomputed."""
    out = tmp / "b"
    shutil.copytree(bundle, out)
    (out / CALIBRATION_FILE).write_text(text)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    manifest["files"][CALIBRATION_FILE] = hashlib.sha256(text.encode()).hexdigest()
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    return out


def test_post_scale_1e308_is_refused_by_the_guard(bundle, doc, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The issue's case: with post_scale = 1e308 every z is about 0 and nothing is ever
    flagged; the bundle loaded before. Now it is refused at load, with the reason."""
    bad = copy.deepcopy(doc)
    bad["post_scale"] = [1e308] * len(bad["post_scale"])
    path = _with_calibration(bundle, tmp_path, json.dumps(bad))
    with pytest.raises(BundleError, match=r"post_scale\[0\] = 1e\+308 is outside its domain "
                                          r"\[1e-09, 1e\+09\]: the file was corrupted or edited"):
        Guard.load(path, registry=None)


def test_alpha_below_one_over_n_plus_one_is_refused(bundle, doc, tmp_path) -> None:  # type: ignore[no-untyped-def]
    n = len(doc["calibration_scores"])
    bad = {**doc, "alpha": 0.5 / (n + 1)}
    path = _with_calibration(bundle, tmp_path, json.dumps(bad))
    with pytest.raises(BundleError, match=rf"alpha must lie in \[1/\(n\+1\), 1\) .* n={n} .* "
                                          "no input could ever be flagged"):
        Guard.load(path, registry=None)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a": ' + "9" * 5000 + "}",
                                  '{"alpha": Infinity}', '{"alpha": NaN}', "[]", "nul"])
def test_hostile_calibration_text(bundle, tmp_path, text: str) -> None:  # type: ignore[no-untyped-def]
    path = _with_calibration(bundle, tmp_path, text)
    with pytest.raises(BundleError, match="calibration.json .*re-run oodguard.calibration"):
        Guard.load(path, registry=None)


def _set(key: str, value: Any) -> Any:
    return lambda d: d.update({key: value})


def _first(key: str, value: Any) -> Any:
    return lambda d: d[key].__setitem__(0, value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_first("post_scale", 0.0), r"post_scale\[0\] = 0.0 is outside its domain"),
        (_first("pre_scale", -1.0), r"pre_scale\[0\] = -1.0 is outside its domain"),
        (_first("pre_scale", 1e31), r"pre_scale\[0\] = 1e\+31 is outside"),
        (_first("lambdas", 1e4), r"lambdas\[0\] = 10000.0 is outside"),
        (_first("pre_center", 1e300), r"pre_center\[0\] = 1e\+300 is outside"),
        (_first("post_center", "0"), "post_center must be an array of numbers"),
        (_first("post_center", True), "post_center must be an array of numbers"),
        (_set("log_offset", [-1.0] * 64), "log_offset must have"),
        (_first("direction", 0.5), "direction values must be -1, 0 or 1"),
        (lambda d: d.update(used_features=d["used_features"][:1] * 2), "must be unique"),
        (_set("used_features", ["nope"]), r"unknown features \['nope'\]"),
        (_set("used_features", []), "used_features is empty"),
        (_set("used_features", "recon_error"), "used_features must be an array"),
        (lambda d: d["calibration_scores"].reverse(), "sorted ascending"),
        (_set("calibration_scores", []), "calibration_scores must be a non-empty list"),
        (_first("calibration_scores", None), "calibration_scores must be an array of numbers"),
        (_set("alpha", 1.0), r"alpha must lie in \[1/\(n\+1\), 1\)"),
        (_set("alpha", True), "alpha must be a number"),
        (lambda d: d.update(threshold=d["threshold"] + 1.0), "threshold .* does not match"),
        (_set("schema_version", "1"), "schema_version must be a positive integer"),
        (_set("info", [1]), "info must be a JSON object"),
        (_set("combine", "mahalanobis"), "needs the 'mahalanobis' block"),
        (_set("feature_names", [1, 2]), "feature_names must be an array of strings"),
        (lambda d: d.pop("pre_scale"), "field 'pre_scale' is missing"),
    ],
)
def test_calibration_numbers_out_of_domain(doc, names, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    bad = copy.deepcopy(doc)
    edit(bad)
    with pytest.raises(BundleError, match=message) as info:
        Scorer.from_dict(bad, names)
    assert str(info.value).startswith("calibration.json is malformed")
    assert "re-run oodguard.calibration.calibrate" in str(info.value)


def test_log_offset_domain(doc, names) -> None:  # type: ignore[no-untyped-def]
    """Where a logarithm is taken the offset must be positive and finite; null means none."""
    bad = copy.deepcopy(doc)
    k = next((i for i, v in enumerate(bad["log_offset"]) if v is not None), None)
    assert k is not None  # the fixture logs at least one non-negative feature
    bad["log_offset"][k] = 0.0
    with pytest.raises(BundleError, match=rf"log_offset\[{k}\] = 0.0 is outside its domain \(0"):
        Scorer.from_dict(bad, names)


def test_fitted_calibration_round_trips_exactly(doc, names) -> None:  # type: ignore[no-untyped-def]
    """The checks accept what calibrate writes, and rebuild the same scorer."""
    s = Scorer.from_dict(doc, names)
    again = Scorer.from_dict(json.loads(json.dumps(s.to_dict())), names)
    f = np.random.default_rng(0).normal(size=(50, len(names)))
    np.testing.assert_array_equal(s.score(f), again.score(f))
