"""``calibration.json``: its writer (:func:`calibration_document`) and its reader
(:func:`scorer_fields`), side by side, with the schema's constants.

The reader checks every number's type and domain. :meth:`oodguard.scoring.Scorer.from_dict`
builds the runtime scorer through :func:`scorer_fields`, so a bundle whose calibration
numbers are out of their domain is refused at load, with the field named, instead of scoring
wrongly forever: ``post_scale = 1e308`` maps every input to z ≈ 0 (nothing is flagged), an
alpha below ``1/(n+1)`` can never be reached, unsorted calibration scores break the p-value
search. The domains are wide — a fitted scorer
lies far inside them — and are checked here only: the scoring hot path trusts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from oodguard.decisions import score_threshold
from oodguard.errors import BundleError
from oodguard.groups import GroupCalibration

__all__ = [
    "CALIBRATION_SCHEMA_VERSION",
    "COMBINE_METHODS",
    "MAHALANOBIS_COMBINATIONS",
    "P_COMBINATIONS",
    "calibration_document",
    "scorer_fields",
]

# Version 2 adds ``lower_weight`` (unequal tails of the two-sided tests), version 3 ``groups``
# (per-group calibration scores, oodguard.groups); a document is written with the lowest
# version that holds it, so bundles that use neither stay readable by older runtimes.
CALIBRATION_SCHEMA_VERSION = 3
COMBINE_METHODS = ("max", "mahalanobis", "max_mahalanobis", "fisher", "cauchy")
P_COMBINATIONS = ("fisher", "cauchy")
MAHALANOBIS_COMBINATIONS = ("mahalanobis", "max_mahalanobis")

_INF = float("inf")
_SCALE_RANGE = (1e-30, 1e30)  # pre_scale: robust spread of a raw or logged feature
_POST_SCALE_RANGE = (1e-9, 1e9)  # post_scale: spread after standardising and Yeo-Johnson
_CENTER_BOUND = 1e30
_LAMBDA_BOUND = 1e3
_MAHA_BOUND = 1e12
_TAIL_WEIGHT_RANGE = (1e-6, 1.0 - 1e-6)  # lower_weight: a tail's share of a two-sided test


def _vec(d: Mapping[str, Any], key: str, n: int, lo: float = -_INF, hi: float = _INF) -> np.ndarray:
    """``d[key]`` as float64 ``[n]``: a JSON array of ``n`` finite numbers in ``[lo, hi]``;
    ValueError naming the field otherwise."""
    v = d[key]
    if not isinstance(v, list) or any(
        isinstance(x, bool) or not isinstance(x, (int, float)) for x in v
    ):
        raise ValueError(f"{key} must be an array of numbers, got {str(v)[:60]}")
    a = np.asarray(v, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{key} must have {n} values, got shape {a.shape}")
    bad = ~np.isfinite(a) | (a < lo) | (a > hi)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{key}[{k}] = {float(a[k])!r} is outside its domain [{lo:g}, {hi:g}]: the file "
            "was corrupted or edited"
        )
    return a


def scorer_fields(d: Mapping[str, Any], feature_names: Sequence[str]) -> dict[str, Any]:
    """The keyword arguments of :class:`~oodguard.scoring.Scorer` from a ``calibration.json``
    document, every field checked (see the module docstring).

    Raises
    ------
    BundleError
        A newer schema, or features that are not the bundle's.
    KeyError, TypeError, ValueError
        A field is missing, of the wrong type or out of its domain (wrapped by the caller).
    """
    if not isinstance(d, Mapping):
        raise TypeError(f"calibration must be a JSON object, got {type(d).__name__}")
    version = d["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"schema_version must be a positive integer, got {version!r:.40}")
    if version > CALIBRATION_SCHEMA_VERSION:
        raise BundleError(
            f"calibration.json has schema version {version}, newer than the "
            f"{CALIBRATION_SCHEMA_VERSION} this oodguard reads; upgrade oodguard"
        )
    names_raw = d["feature_names"]
    if not isinstance(names_raw, list) or not all(isinstance(n, str) for n in names_raw):
        raise TypeError("feature_names must be an array of strings")
    names = tuple(names_raw)
    if names != tuple(feature_names):
        raise BundleError(
            f"calibration.json was fitted on features {names}, but model.onnx computes "
            f"{tuple(feature_names)}: the calibration belongs to another model; "
            "re-run calibration on this bundle"
        )
    used_names = d["used_features"]
    if not isinstance(used_names, list) or not all(isinstance(n, str) for n in used_names):
        raise TypeError("used_features must be an array of feature names")
    if len(set(used_names)) != len(used_names):
        raise ValueError(f"used_features must be unique, got {used_names}")
    unknown = [n for n in used_names if n not in names]
    if unknown:
        raise ValueError(f"used_features names unknown features {unknown[:5]}")
    used = np.asarray([names.index(n) for n in used_names], dtype=np.intp)
    u = len(used)
    if u == 0:
        raise ValueError("used_features is empty")
    combine = d["combine"]
    if combine not in COMBINE_METHODS:
        raise ValueError(f"combine must be one of {COMBINE_METHODS}, got {combine!r:.40}")
    maha = d.get("mahalanobis")
    loc = prec = None
    if combine in MAHALANOBIS_COMBINATIONS:
        if not isinstance(maha, Mapping) or not maha:
            raise ValueError(f"combine={combine!r} needs the 'mahalanobis' block")
        loc = _vec(maha, "location", u, -_MAHA_BOUND, _MAHA_BOUND)
        rows = maha["precision"]
        if not isinstance(rows, list) or len(rows) != u:
            raise ValueError(f"mahalanobis.precision must be {u}x{u}")
        prec = np.stack([_vec({"precision": r}, "precision", u, -_MAHA_BOUND, _MAHA_BOUND)
                         for r in rows])
        if not (np.diag(prec) > 0).all():
            raise ValueError("mahalanobis.precision must have a positive diagonal")
    direction = _vec(d, "direction", u)
    if not np.isin(direction, (-1.0, 0.0, 1.0)).all():
        raise ValueError(f"direction values must be -1, 0 or 1, got {direction}")
    lower_weight = None
    if "lower_weight" in d:  # schema 2: unequal tails of the two-sided tests
        if version < 2:
            raise ValueError("lower_weight needs schema_version 2")
        lower_weight = _vec(d, "lower_weight", u, *_TAIL_WEIGHT_RANGE)
        if ((direction != 0) & (lower_weight != 0.5)).any():
            raise ValueError("lower_weight must be 0.5 for one-sided features (direction ±1)")
        if (lower_weight != 0.5).any() and combine not in P_COMBINATIONS:
            raise ValueError(
                f"unequal tails (lower_weight) need combine 'fisher' or 'cauchy', got {combine!r}"
            )
    raw_cal = d["calibration_scores"]
    if not isinstance(raw_cal, list) or not raw_cal:
        raise ValueError("calibration_scores must be a non-empty list of finite numbers")
    cal = _vec(d, "calibration_scores", len(raw_cal))
    if (np.diff(cal) < 0).any():
        raise ValueError("calibration_scores must be sorted ascending, as calibrate writes them")
    n = len(cal)
    alpha = d["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number, got {alpha!r:.40}")
    alpha = float(alpha)
    if not 1.0 / (n + 1) <= alpha < 1.0:
        raise ValueError(
            f"alpha must lie in [1/(n+1), 1) = [{1 / (n + 1):.4g}, 1) for the n={n} "
            f"calibration scores, got {alpha}: below 1/(n+1) no input could ever be flagged"
        )
    threshold = d["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number, got {threshold!r:.40}")
    if float(threshold) != score_threshold(cal, alpha):
        raise ValueError(
            f"threshold {threshold} does not match calibration_scores and alpha "
            f"({score_threshold(cal, alpha)})"
        )
    offsets_raw = d["log_offset"]
    if not isinstance(offsets_raw, list):
        raise TypeError("log_offset must be an array of numbers or nulls")
    if len(offsets_raw) != u:
        raise ValueError(f"log_offset must have {u} values, got {len(offsets_raw)}")
    for k, v in enumerate(offsets_raw):
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if v is not None and not (number and 0.0 < v <= _SCALE_RANGE[1]):
            raise ValueError(
                f"log_offset[{k}] = {v!r:.40} is outside its domain (0, {_SCALE_RANGE[1]:g}] "
                "(null where no logarithm is taken): the file was corrupted or edited"
            )
    offsets = np.asarray([np.nan if v is None else v for v in offsets_raw], dtype=np.float64)
    info = d.get("info", {})
    if not isinstance(info, Mapping):
        raise TypeError(f"info must be a JSON object, got {type(info).__name__}")
    groups = None
    if "groups" in d:  # schema 3: per-group (Mondrian) calibration scores
        if version < 3:
            raise ValueError("groups needs schema_version 3")
        groups = _groups(d["groups"], alpha)
    return dict(
        feature_names=names,
        used=used,
        log_offset=offsets,
        pre_center=_vec(d, "pre_center", u, -_CENTER_BOUND, _CENTER_BOUND),
        pre_scale=_vec(d, "pre_scale", u, *_SCALE_RANGE),
        lambdas=_vec(d, "lambdas", u, -_LAMBDA_BOUND, _LAMBDA_BOUND),
        post_center=_vec(d, "post_center", u, -_CENTER_BOUND, _CENTER_BOUND),
        post_scale=_vec(d, "post_scale", u, *_POST_SCALE_RANGE),
        direction=direction,
        combine=combine,
        maha_location=loc,
        maha_precision=prec,
        calibration_scores=cal,
        alpha=alpha,
        threshold=float(threshold),
        info=dict(info),
        lower_weight=lower_weight,
        groups=groups,
    )


def _groups(doc: Any, alpha: float) -> GroupCalibration:
    """The ``groups`` block: distinct labels (all integers or all strings) and, per label, a
    non-empty sorted array of finite calibration scores, enough for ``alpha``."""
    if not isinstance(doc, Mapping):
        raise TypeError("groups must be a JSON object")
    labels, scores = doc["labels"], doc["calibration_scores"]
    if not isinstance(labels, list) or not labels:
        raise ValueError("groups.labels must be a non-empty array")
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in labels)
    if not (ints or all(isinstance(v, str) for v in labels)) or len(set(labels)) != len(labels):
        raise ValueError("groups.labels must be distinct and all integers or all strings")
    if not isinstance(scores, list) or len(scores) != len(labels):
        raise ValueError(f"groups.calibration_scores must hold {len(labels)} arrays")
    arrays = []
    for label, raw in zip(labels, scores, strict=True):
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"groups.calibration_scores of group {label!r} must be a "
                             "non-empty array")
        a = _vec({f"groups.calibration_scores[{label!r}]": raw},
                 f"groups.calibration_scores[{label!r}]", len(raw))
        if (np.diff(a) < 0).any():
            raise ValueError(f"groups.calibration_scores of group {label!r} must be sorted")
        arrays.append(a)
    out = GroupCalibration(labels, arrays)
    out.check_alpha(alpha, owner="calibration.json")
    return out



def calibration_document(s: Any) -> dict[str, Any]:
    """The ``calibration.json`` document of a :class:`oodguard.scoring.Scorer` ``s`` (typed
    ``Any``: this module does not import the scorer, which imports it): what
    :func:`scorer_fields` reads back.

    Written as schema version 1 unless unequal tails (``lower_weight``) need version 2 or
    per-group calibration (``groups``) version 3.
    """
    weighted = bool((s.tail_weights() != 0.5).any())
    d: dict[str, Any] = {
        "schema_version": 3 if s.groups is not None else 2 if weighted else 1,
        "feature_names": list(s.feature_names),
        "used_features": [s.feature_names[i] for i in s.used],
        "log_offset": [None if np.isnan(v) else float(v) for v in s.log_offset],
        "pre_center": s.pre_center.tolist(),
        "pre_scale": s.pre_scale.tolist(),
        "lambdas": s.lambdas.tolist(),
        "post_center": s.post_center.tolist(),
        "post_scale": s.post_scale.tolist(),
        "direction": s.direction.tolist(),
        "combine": s.combine,
        "mahalanobis": None,
        "calibration_scores": s.calibration_scores.tolist(),
        "alpha": s.alpha,
        "threshold": s.threshold,
        "info": dict(s.info),
    }
    if weighted:
        d["lower_weight"] = s.tail_weights().tolist()
    if s.groups is not None:
        d["groups"] = s.groups.to_doc()
    if s.maha_location is not None and s.maha_precision is not None:
        d["mahalanobis"] = {
            "location": s.maha_location.tolist(),
            "precision": s.maha_precision.tolist(),
        }
    return d
