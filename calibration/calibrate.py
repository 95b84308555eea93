"""Calibration: in-distribution validation data ▶ features ▶ fitted scorer ▶ conformal
threshold ▶ ``calibration.json`` in the bundle.

Only in-distribution data is needed. It is split (shuffled, seeded) into a *fit* part, on which
the transform is fitted, and a *calibration* part, whose scores give conformal p-values
``p = (1 + #{cal ≥ s}) / (n + 1)``. Flagging ``p ≤ alpha`` then has a false-positive rate of at
most ``alpha`` on exchangeable in-distribution data, in finite samples — which is why
``alpha < 1/(n + 1)`` is refused: no input could ever be flagged.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from oodguard.bundle import (
    CALIBRATION_FILE,
    MODEL_FILE,
    Bundle,
    check_destination,
    read_bundle,
    read_extras,
    write_bundle,
)
from oodguard.calibration.checks import sanity_check, unstable_features
from oodguard.calibration.mondrian import check_groups, group_calibration
from oodguard.calibration.selection import (
    BASELINE_FEATURES,
    DEFAULT_PROXY_KINDS,
    make_proxies,
    required_baselines,
    select_features,
)
from oodguard.calibration.transform import FittedTransform, fit_transform
from oodguard.decisions import min_calibration_size
from oodguard.engine import Engine
from oodguard.errors import CalibrationError, parameter_error
from oodguard.progress import progress_bar
from oodguard.scoring import Scorer, score_threshold
from oodguard.validation import validate_batch

__all__ = [
    "DEFAULT_FIT_FRACTION",
    "CalibrationReport",
    "build_scorer",
    "bundle_target",
    "calibrate",
    "check_sizes",
    "fit_scorer",
    "required_samples",
    "split_indices",
]

log = logging.getLogger(__name__)

MIN_FIT_PER_FEATURE = 5
# Fisher's combination of the per-feature Gaussian tail p-values: in the calibration study
# (docs/calibration.md) it stayed within 0.02 AUROC of the best classic baseline on more
# (model, OOD set) pairs than the max (Tippett) combination, at a batch-1 cost close to it.
DEFAULT_COMBINE = "fisher"
# The share of the validation rows that fits the transform; the rest calibrates.
DEFAULT_FIT_FRACTION = 0.4
# The share of each two-sided test given to its minor tail when the combination takes p-values
# ("fisher", "cauchy"); the other combinations test both tails equally. Chosen on the 57-model
# detection suite (docs/calibration.md, issue 19): equal tails (0.5) inverted four pairs
# (textured images scored below in-distribution crops where reconstruction error alone
# reached 0.82); 0.25-0.35 inverted none and raised the mean AUROC; 0.3 is the middle of that
# plateau, and leaving any one data family out picks 0.3 or 0.35 (at most 0.0025 apart there).
DEFAULT_MINOR_TAIL = 0.3


def minor_tail_for(minor_tail: float | None, combine: str) -> float:
    """The minor-tail share a calibration uses: ``minor_tail``, or by default
    :data:`DEFAULT_MINOR_TAIL` for a p-value combination (``"fisher"``, ``"cauchy"``) and
    equal tails (0.5) for the others, which cannot weight tails."""
    if minor_tail is None:
        return DEFAULT_MINOR_TAIL if combine in ("fisher", "cauchy") else 0.5
    return minor_tail


def required_samples(alpha: float, n_features: int, fit_fraction: float) -> int:
    """Smallest validation set for ``alpha``: ``1/(n_cal + 1) ≤ alpha`` and enough fit data."""
    n_cal = min_calibration_size(alpha)
    n_fit = MIN_FIT_PER_FEATURE * (n_features + 1)
    return max(math.ceil(n_fit / fit_fraction), math.ceil(n_cal / (1.0 - fit_fraction)))


@dataclass(frozen=True, eq=False, repr=False)
class CalibrationReport:
    """What calibration produced. ``print(report)`` gives a short summary (:meth:`summary`);
    the details are the attributes. ``scorer`` is the runtime scorer (rebuilt from the JSON;
    its ``calibration_scores`` are every calibration score); ``details`` is the
    ``calibration.json`` ``info`` (sizes, selection and its reference AUROCs, sanity check);
    ``dropped`` maps left-out features to the reason; ``warnings`` are the calibration's
    warnings (also logged and in ``calibration.json`` ``info``): a selection without
    ``recon_error`` or with an inverted baseline, trivially far inputs not flagged (details in
    ``sanity``, see :mod:`oodguard.calibration.checks`)."""

    path: Path
    scorer: Scorer
    n_fit: int
    n_cal: int
    dropped: dict[str, str]
    warnings: tuple[str, ...] = ()
    sanity: Mapping[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.scorer.threshold

    @property
    def details(self) -> Mapping[str, Any]:
        """The calibration's record (``calibration.json`` ``info``)."""
        return self.scorer.info

    def summary(self) -> str:
        """About a dozen lines: what was chosen, the sizes, alpha, the threshold, warnings."""
        sc = self.scorer
        sign = {1.0: "+", -1.0: "-", 0.0: "two-sided"}
        used = ", ".join(f"{sc.feature_names[i]} ({sign.get(float(d), f'{d:g}')})"
                         for i, d in zip(sc.used, sc.direction, strict=True))
        sel = self.details.get("selection")
        lines = [
            f"calibrated bundle {self.path}",
            f"alpha {sc.alpha:g}: flag when p <= {sc.alpha:g}; threshold {sc.threshold:.4g} "
            f"(score above it is OOD)",
            f"validation rows: {self.n_fit} fit the scorer, {self.n_cal} calibrate the "
            f"p-values (smallest p = {1 / (self.n_cal + 1):.3g})",
            f"score: {sc.combine} over {len(sc.used)} of {len(sc.feature_names)} features",
            f"  {used}",
        ]
        if sel:
            ref = sel.get("reference")
            where = ("OOD validation inputs" if ref == "x_ood" else
                     f"synthetic outliers ({', '.join(ref)})" if isinstance(ref, list) else
                     "reference inputs")
            lines.append(f"selected on {where}: combined reference AUROC "
                         f"{sel.get('combined_reference_auroc', float('nan')):.3f}")
        if self.dropped:
            lines.append("left out: " + "; ".join(f"{k} ({v})" for k, v in
                                                   list(self.dropped.items())[:4])
                         + (f"; and {len(self.dropped) - 4} more" if len(self.dropped) > 4
                            else ""))
        if self.sanity:
            lines.append("far inputs flagged: " + ", ".join(
                f"{k} {v.get('flagged', '?')}/{v.get('n', '?')}" for k, v in self.sanity.items()
                if isinstance(v, Mapping)))
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append("details: .scorer (every calibration score), .details, .dropped, "
                     ".sanity, .warnings")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return (f"CalibrationReport(path={str(self.path)!r}, alpha={self.scorer.alpha:g}, "
                f"threshold={self.threshold:.4g}, n_fit={self.n_fit}, n_cal={self.n_cal}, "
                f"features={len(self.scorer.used)}, warnings={len(self.warnings)})")


def split_indices(n: int, fit_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle of ``range(n)`` into (fit, calibration) index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    n_fit = int(round(n * fit_fraction))
    return order[:n_fit], order[n_fit:]


def check_sizes(n: int, n_features: int, alpha: float, fit_fraction: float) -> None:
    """Refuse alpha outside (0, 1), alpha < 1/(n_cal+1), and too-small validation sets."""
    if not 0.0 < alpha < 1.0:
        raise CalibrationError(f"alpha must lie in (0, 1). Got {alpha}")
    if not 0.05 <= fit_fraction <= 0.95:
        raise CalibrationError(f"fit_fraction must lie in [0.05, 0.95]. Got {fit_fraction}")
    need = required_samples(alpha, n_features, fit_fraction)
    n_cal = n - int(round(n * fit_fraction))
    if alpha < 1.0 / (n_cal + 1):
        raise CalibrationError(
            f"alpha={alpha:g} is below 1/(n+1) = {1 / (n_cal + 1):.4g} for the {n_cal} "
            f"calibration samples: no input could ever be flagged. Pass at least {need} "
            f"in-distribution samples (fit_fraction={fit_fraction:g}) or raise alpha"
        )
    if n < need:
        raise CalibrationError(
            f"calibration needs at least {need} in-distribution samples for alpha={alpha:g} "
            f"and {n_features} features (fit_fraction={fit_fraction:g}); got {n}"
        )


def _fit_candidates(
    n: int, names: Sequence[str], use: Sequence[str] | None, alpha: float, fit_fraction: float,
) -> tuple[Sequence[str] | None, list[str]]:
    """``(use, warnings)``: with too few samples to fit every feature but enough for the classic
    baselines, calibrate on those alone (the selection keeps them anyway) and say so, instead of
    refusing a small validation set that can calibrate them (wine: 65 rows, 175 needed for 13
    features, 50 for the 3 baselines). An explicit ``use`` is left as it is."""
    if use is not None or n >= required_samples(alpha, len(names), fit_fraction):
        return use, []
    base = list(required_baselines(names))
    if not base or n < required_samples(alpha, len(base), fit_fraction):
        return use, []  # check_sizes refuses, naming the size every feature needs
    msg = (f"{n} in-distribution samples are too few to fit all {len(names)} features "
           f"({required_samples(alpha, len(names), fit_fraction)} needed at alpha={alpha:g}); "
           f"calibrated on the classic baselines {base} alone. Pass more samples to let the "
           "selection consider every feature")
    log.warning("calibration: %s", msg)
    return base, [msg]


def _finite(f: np.ndarray, what: str) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    bad = ~np.isfinite(f).all(axis=1)
    if bad.any():
        raise CalibrationError(
            f"{int(bad.sum())} of {len(f)} {what} give non-finite features: the model "
            "overflows on them; check the input scaling"
        )
    return f


def fit_scorer(
    fit_features: np.ndarray,
    cal_features: np.ndarray,
    feature_names: Sequence[str],
    *,
    alpha: float = 0.05,
    reference_features: np.ndarray | None = None,
    reference_groups: Sequence[np.ndarray] | None = None,
    combine: str = "max",
    use: Sequence[str] | None = None,
    exclude: Mapping[str, str] | None = None,
    required: Sequence[str] | None = None,
    keep_sign: Sequence[str] = BASELINE_FEATURES,
    two_sided_margin: float | None = 0.1,
    minor_tail: float | None = None,
    seed: int = 0,
) -> tuple[Scorer, dict[str, Any]]:
    """Fit a scorer on in-distribution features and calibrate it at ``alpha``.

    Parameters
    ----------
    fit_features : ndarray, shape (n_fit, F) — fits the transform (and the selection)
    cal_features : ndarray, shape (n_cal, F) — gives the conformal calibration scores; it is
        used for nothing else, so the guarantee holds for whatever was fitted and selected
    reference_features : ndarray, shape (m, F), optional
        Features of OOD or synthetic-outlier inputs: features and their directions are
        selected on them (see :mod:`oodguard.calibration.selection`). ``None``: every
        feature, two-sided.
    reference_groups : index arrays into ``reference_features``, one per kind of reference
        input (e.g. one per proxy kind); no kind may lose AUROC when a feature is added.
    exclude : feature name ▶ reason: left out of the candidates (e.g. numerically unstable
        features), reported in ``info["dropped_features"]``.
    required : features the selection always keeps when they are candidates (default
        :func:`~oodguard.calibration.selection.required_baselines`: the classic baselines
        ``recon_error``, ``latent_knn``, ``latent_mahalanobis``; in a guarded classifier's
        bundle ``recon_error`` and ``embedding_mahalanobis``).
    keep_sign : features never given direction −1 (two-sided instead; default the baselines).
    two_sided_margin : see :func:`~oodguard.calibration.selection.select_features`.
    minor_tail : the share of each two-sided test given to its minor tail (``combine``
        ``"fisher"`` or ``"cauchy"``; ``0.5``: equal tails; default
        :data:`DEFAULT_MINOR_TAIL` for those, 0.5 for the others). The major tail is the upper one
        for the ``keep_sign`` features (large distances are unusual by construction) and the
        reference set's direction for the others.

    Returns
    -------
    scorer : Scorer — exactly what the runtime rebuilds from ``calibration.json``
    info : dict — sizes, dropped features, the selection and its reference AUROCs, warnings
    """
    minor_tail = minor_tail_for(minor_tail, combine)
    if not 0.0 < minor_tail <= 0.5:
        raise parameter_error("minor_tail", "a float in (0, 0.5]", minor_tail)
    if minor_tail != 0.5 and combine not in ("fisher", "cauchy"):
        raise parameter_error("minor_tail", "0.5 unless combine is 'fisher' or 'cauchy'",
                              minor_tail)
    fit = _finite(fit_features, "fit samples")
    cal = _finite(cal_features, "calibration samples")
    if alpha < 1.0 / (len(cal) + 1):
        raise CalibrationError(
            f"alpha={alpha:g} is below 1/(n+1) = {1 / (len(cal) + 1):.4g} for {len(cal)} "
            "calibration samples: no input could ever be flagged"
        )
    names = list(feature_names)
    excluded = dict(exclude or {})
    candidates = [n for n in (names if use is None else use) if n not in excluded]
    if not candidates:
        raise CalibrationError(
            f"no candidate feature is left: {excluded} were excluded from {list(use or names)}; "
            "pass use= with features that are not excluded"
        )
    fitted = fit_transform(fit, feature_names, combine="max", use=candidates, seed=seed)
    info: dict[str, Any] = {"dropped_features": {**excluded, **fitted.dropped}}
    keep = np.arange(len(fitted.used))
    direction = np.zeros(len(fitted.used))
    upper_major = np.ones(len(fitted.used), dtype=bool)  # which tail a two-sided test favours
    warnings: list[str] = []
    if reference_features is not None:
        ref = np.asarray(reference_features, dtype=np.float64)
        ok = np.asarray(np.isfinite(ref).all(axis=1), dtype=bool)
        probe = build_scorer(fitted, keep, direction, names, "max", alpha)
        used_names = [names[j] for j in fitted.used]
        groups = _regroup(reference_groups, ok)
        z_fit, z_ref = probe.standardize(fit), probe.standardize(ref[ok])
        must = required_baselines(names) if required is None else required
        req = [used_names.index(n) for n in must if n in used_names]
        sel = select_features(
            z_fit, z_ref, groups=groups, required=req,
            keep_sign=[used_names.index(n) for n in keep_sign if n in used_names],
            two_sided_margin=two_sided_margin,
        )
        keep = np.asarray(sel.selected, dtype=np.intp)
        direction = sel.direction[keep]
        baseline = np.isin(np.asarray(used_names)[keep], list(keep_sign))
        upper_major = baseline | (sel.aurocs[keep] >= 0.5)
        info["selection"] = {
            "reference_auroc": {n: round(float(a), 4) for n, a in zip(used_names, sel.aurocs,
                                                                        strict=True)},
            "reference_auroc_by_group": [
                {n: round(float(a), 4) for n, a in zip(used_names, row, strict=True)}
                for row in sel.group_aurocs
            ],
            "selected": [used_names[k] for k in keep],
            "direction": direction.tolist(),
            "combined_reference_auroc": round(sel.combined_auroc, 4),
        }
        warnings += selection_warnings(
            used_names, sel.aurocs, [used_names[k] for k in keep], direction,
            dropped=info["dropped_features"],
        )
    if combine in ("mahalanobis", "max_mahalanobis"):
        # Refit with the Mahalanobis block on the selected features only.
        fitted = fit_transform(
            fit, feature_names, combine=combine, use=[names[fitted.used[k]] for k in keep],
            seed=seed,
        )
        keep = np.arange(len(keep))
    lower_weight = np.where(direction == 0, np.where(upper_major, minor_tail, 1.0 - minor_tail),
                            0.5)
    scorer = build_scorer(fitted, keep, direction, names, combine, alpha, lower_weight)
    cal_scores = np.sort(scorer.score(cal))
    if not np.isfinite(cal_scores).all():
        raise CalibrationError("calibration scores are not finite; the fit is degenerate")
    for w in warnings:
        log.warning("calibration: %s", w)
    doc = scorer.to_dict()
    info.update(n_fit=len(fit), n_cal=len(cal), seed=seed, warnings=warnings)
    doc.update(
        calibration_scores=cal_scores.tolist(),
        threshold=score_threshold(cal_scores, alpha),
        info=info,
    )
    # Round-trip through the plain-number document so the caller gets exactly what the
    # runtime will rebuild.
    return Scorer.from_dict(json.loads(json.dumps(doc)), feature_names), info


def selection_warnings(
    candidates: Sequence[str],
    aurocs: np.ndarray,
    selected: Sequence[str],
    direction: np.ndarray,
    *,
    dropped: Mapping[str, str],
) -> list[str]:
    """Warnings for a selection that leaves out ``recon_error`` or turns a classic baseline's
    usual direction (large = unusual) around, with the evidence (reference AUROCs of ``+z``)."""
    evidence = ", ".join(f"{n} {a:.3f}" for n, a in zip(candidates, aurocs, strict=True))
    out = []
    if "recon_error" not in selected:
        why = dropped.get("recon_error", "not selected on the reference set")
        out.append(
            f"recon_error, the classic baseline, is not in the score ({why}); reference "
            f"AUROCs: {evidence}. Check the reference inputs, or pass use=/required= explicitly"
        )
    for name, d in zip(selected, direction, strict=True):
        if name in BASELINE_FEATURES and d < 0:
            out.append(
                f"{name} was given direction -1 (small = unusual), the reverse of its usual "
                f"meaning: the reference inputs look *more* typical than in-distribution data "
                f"to it; reference AUROCs: {evidence}"
            )
    return out


def _regroup(groups: Sequence[np.ndarray] | None, ok: np.ndarray) -> list[np.ndarray] | None:
    """Re-index groups after dropping the non-finite reference rows (``ok`` False)."""
    if groups is None:
        return None
    new_index = np.cumsum(ok) - 1
    out = [new_index[g[ok[g]]] for g in groups]
    return [g for g in out if len(g)]


def build_scorer(
    fitted: FittedTransform,
    keep: np.ndarray,
    direction: np.ndarray,
    names: list[str],
    combine: str,
    alpha: float,
    lower_weight: np.ndarray | None = None,
) -> Scorer:
    """A scorer over the features ``fitted.used[keep]``; ``direction`` is aligned with ``keep``;
    calibration scores and threshold are placeholders until the calibration part is scored."""
    return Scorer(
        feature_names=tuple(names),
        used=fitted.used[keep],
        log_offset=fitted.log_offset[keep],
        pre_center=fitted.pre_center[keep],
        pre_scale=fitted.pre_scale[keep],
        lambdas=fitted.lambdas[keep],
        post_center=fitted.post_center[keep],
        post_scale=fitted.post_scale[keep],
        direction=np.asarray(direction, dtype=np.float64),
        combine=combine,
        maha_location=fitted.maha_location,
        maha_precision=fitted.maha_precision,
        calibration_scores=np.zeros(1),
        alpha=alpha,
        threshold=0.0,
        info={},
        lower_weight=lower_weight,
    )


def calibrate(
    bundle: str | os.PathLike[str],
    x_val: np.ndarray,
    *,
    alpha: float = 0.05,
    fit_fraction: float = DEFAULT_FIT_FRACTION,
    select: str = "auto",
    x_ood: np.ndarray | None = None,
    combine: str = DEFAULT_COMBINE,
    use: Sequence[str] | None = None,
    minor_tail: float | None = None,
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool | None = None,
    groups: Any = None,
) -> CalibrationReport:
    """Calibrate a bundle on in-distribution validation inputs and write ``calibration.json``.

    Parameters
    ----------
    bundle : path of an exported bundle
    x_val : ndarray of float32, shape (n, *input_shape)
        In-distribution inputs the autoencoder was *not* trained on. Nothing else is needed.
    alpha : target false-positive rate of the OOD verdict (default 0.05).
    fit_fraction : share of ``x_val`` that fits the transform; the rest calibrates.
    select : "auto" — choose features and directions on ``x_ood`` if given, else on synthetic
        outliers made from the fit part (see :mod:`oodguard.calibration.selection`); the
        classic baselines present in the bundle are never inverted, and those of
        :func:`~oodguard.calibration.selection.required_baselines` always kept;
        "all" — every feature, two-sided.
    x_ood : optional OOD validation inputs, used only for the selection. Examples of one kind
        tune the score to that kind and can cost it others (docs/calibration.md): pass
        examples of every kind you must catch.
    combine : "fisher" (default), "max", "max_mahalanobis", "mahalanobis" or "cauchy" (see
        :mod:`oodguard.scoring`; docs/calibration.md has what each gave).
    use : candidate feature names; default all.
    minor_tail : share of each two-sided test given to its minor tail (``"fisher"`` or
        ``"cauchy"``; default :data:`DEFAULT_MINOR_TAIL` = 0.3; the other combinations test
        both tails equally). The baselines' major tail is the upper one (large error or
        distance). Lower it (e.g. 0.1) when the inputs you must catch are mostly *worse*
        reconstructed or *farther* than usual: one-sided power comes back at the cost of the
        inputs an autoencoder reconstructs too well (constants, smooth or low-contrast
        inputs); 0.5 tests both tails equally. docs/calibration.md has what each choice gave.
    out : where to write the calibrated bundle; default in place (atomically: readers see
        the old bundle or the new one). ``out`` must not exist, be an empty directory, or —
        with ``overwrite=True`` — hold a bundle; a file or a directory holding anything else
        is refused (``BundleExistsError``) before any work is done, and nothing is deleted.
    overwrite : allow replacing an existing bundle at ``out`` (not needed in place).
    progress : a bar over the calibration's stages; default when stderr is a terminal and INFO
        is logged.
    groups : array-like of shape (n,), optional
        Each validation row's group (for a guarded classifier: its class): the calibration
        part's scores are also kept group by group, and ``Guard.check(x, groups=...)`` then
        gives each row the p-value of its own group, so the false-positive rate holds group by
        group (:mod:`oodguard.calibration.mondrian`). Every group needs ``1/alpha − 1``
        calibration rows.

    Every run leaves out the features the exporter measured as unstable (manifest
    ``dynamics["stability"]``; ``report.dropped`` says so) and checks that trivially far inputs
    (constants at ``±1e3·max|x|``, noise at 10× the data's s.d.) come out OOD; what fails, and a
    selection without ``recon_error`` or with an inverted baseline, is logged as a warning and
    listed in ``report.warnings`` and ``calibration.json`` ``info["warnings"]``.

    Raises
    ------
    CalibrationError
        alpha < 1/(n_cal + 1), too few samples (the message says how many are needed),
        non-finite features on in-distribution data.
    BundleExistsError
        ``out`` holds something that is not a bundle, or a bundle without ``overwrite``.
    """
    if select not in ("auto", "all"):
        raise parameter_error("select", "'auto' or 'all'", select, owner="calibrate")
    source, target, in_place = bundle_target(bundle, out, overwrite)
    x32, _ = validate_batch(x_val, source.manifest.input, nonfinite="raise")
    use, few = check_validation_size(len(x32), source.manifest.feature_names, use, alpha,
                                     fit_fraction)
    labels = None if groups is None else check_groups(groups, len(x32))
    engine = Engine(source.files[MODEL_FILE], source.manifest, providers="cpu")
    bar = progress_bar(5, "calibration", log, progress=progress, unit="stage")
    bar.set_description_str("calibration: features")
    log.info("computing features for %d validation inputs", len(x32))
    features = engine.run(x32)
    fit_idx, _ = split_indices(len(x32), fit_fraction, seed)
    return fit_and_write(
        source, target, in_place, features, x32[fit_idx], engine=engine, bar=bar, few=few,
        alpha=alpha, fit_fraction=fit_fraction, select=select, x_ood=x_ood, combine=combine,
        use=use, minor_tail=minor_tail, seed=seed, overwrite=overwrite, mondrian_groups=labels)


def bundle_target(bundle: str | os.PathLike[str], out: str | os.PathLike[str] | None,
            overwrite: bool) -> tuple[Bundle, Path, bool]:
    """The source bundle, where the calibrated bundle goes, and whether that is in place;
    refuses (``BundleExistsError``) before any work what ``write_bundle`` would refuse."""
    source = read_bundle(bundle)
    # In place is the caller's explicit request; the real directory is swapped (a link to it
    # stays a link). Elsewhere, refuse before the expensive part what write_bundle would.
    in_place = out is None or (os.path.exists(out) and os.path.samefile(out, source.path))
    target = Path(os.path.realpath(source.path)) if in_place else Path(out or "")
    if not in_place:
        check_destination(target, overwrite=overwrite)
    return source, target, in_place



def check_validation_size(
    n: int, names: Sequence[str], use: Sequence[str] | None, alpha: float, fit_fraction: float,
) -> tuple[Sequence[str] | None, list[str]]:
    """``(use, warnings)`` for ``n`` validation rows (see :func:`_fit_candidates`), after
    :func:`check_sizes` refused what cannot be calibrated."""
    use, few = _fit_candidates(n, list(names), use, alpha, fit_fraction)
    check_sizes(n, len(names) if use is None else len(use), alpha, fit_fraction)
    return use, few


def fit_and_write(
    source: Bundle, target: Path, in_place: bool, features: np.ndarray, x_fit: np.ndarray, *,
    engine: Engine, bar: Any, few: Sequence[str], alpha: float, fit_fraction: float,
    select: str, x_ood: np.ndarray | None, combine: str, use: Sequence[str] | None,
    minor_tail: float | None, seed: int, overwrite: bool, mondrian_groups: np.ndarray | None = None,
) -> CalibrationReport:
    """What :func:`calibrate` does once the features are computed: selection, fit, sanity
    check, write. ``features`` are those of every validation row, in order (shape (n, F));
    ``x_fit`` the inputs of the fit part, ``x_val[split_indices(n, fit_fraction, seed)[0]]``
    in that order (its synthetic outliers choose the features, its far inputs are the sanity
    check). Shared by :func:`calibrate` and the Ray integration's ``calibrate_dataset``, which
    computes the features on a cluster. ``mondrian_groups``: the labels of :func:`calibrate`'s
    ``groups`` (not the proxy groups of the selection)."""
    bar.update()
    bar.set_description_str("calibration: selection")
    fit_idx, cal_idx = split_indices(len(features), fit_fraction, seed)
    reference = None
    groups: list[np.ndarray] | None = None
    if select == "auto":
        if x_ood is not None:
            ref_x, _ = validate_batch(x_ood, source.manifest.input, nonfinite="raise")
        else:
            # Made from the fit part only: the calibration part stays untouched.
            ref_x = make_proxies(x_fit, kinds=DEFAULT_PROXY_KINDS, seed=seed)
            n_fit = len(fit_idx)
            groups = [np.arange(i * n_fit, (i + 1) * n_fit)
                      for i in range(len(DEFAULT_PROXY_KINDS))]
        log.info("selecting features on %d %s inputs", len(ref_x),
                 "OOD validation" if x_ood is not None else "synthetic-outlier")
        reference = engine.run(np.ascontiguousarray(ref_x))
    bar.update()
    bar.set_description_str("calibration: fit")
    unstable = unstable_features(source.manifest.dynamics)
    scorer, info = fit_scorer(
        features[fit_idx], features[cal_idx], source.manifest.feature_names, alpha=alpha,
        reference_features=reference, reference_groups=groups, combine=combine, use=use,
        exclude=unstable, minor_tail=minor_tail, seed=seed,
    )
    if "selection" in info:
        info["selection"]["reference"] = (
            "x_ood" if x_ood is not None else list(DEFAULT_PROXY_KINDS)
        )
    bar.update()
    bar.set_description_str("calibration: sanity check")
    sanity, sanity_warnings = sanity_check(
        lambda xs: engine.run(np.ascontiguousarray(xs)), scorer, x_fit, seed=seed
    )
    for w in sanity_warnings:
        log.warning("calibration: %s", w)
    info["sanity"] = sanity
    info["warnings"] = [*few, *info["warnings"], *sanity_warnings]
    scorer = Scorer.from_dict({**scorer.to_dict(), "info": info}, scorer.feature_names)
    if mondrian_groups is not None:
        scorer = replace(scorer, groups=group_calibration(
            scorer.score(features[cal_idx]), mondrian_groups[cal_idx], mondrian_groups, alpha))
    bar.update()
    bar.set_description_str("calibration: write")
    files = {
        **source.files,  # model.onnx, and reference.npz where the export wrote one
        CALIBRATION_FILE: (json.dumps(scorer.to_dict()) + "\n").encode(),
        **read_extras(source),  # the optional inspection files travel with the bundle
    }
    write_bundle(target, source.manifest, files, overwrite=in_place or overwrite)
    bar.update()
    bar.close()
    path = source.path if in_place else target
    log.info("calibrated at alpha=%g: threshold %.4g from %d calibration scores; features %s",
             alpha, scorer.threshold, len(cal_idx),
             [scorer.feature_names[i] for i in scorer.used])
    return CalibrationReport(path, scorer, len(fit_idx), len(cal_idx),
                             info["dropped_features"], tuple(info["warnings"]), sanity)
