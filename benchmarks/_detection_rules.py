"""Candidate calibration rules measured beside the default in the detection benchmark.

Each rule sees only in-distribution data: the validation rows split as :func:`calibrate` splits
them (``fit_fraction=0.4``, seeded), synthetic outliers made from the fit part, and the
bundle's list of numerically unstable features (left out, as calibrate leaves them out). Each
returns a score per row of a feature matrix, higher = more OOD:

- ``one_sided``: today's greedy selection on the synthetic outliers, Fisher, every test
  one-sided (``two_sided_margin=None``: the classic baselines keep their usual direction, the
  other features take the outliers' direction);
- ``one_sided_all``: every stable feature, one-sided in the outliers' direction, Fisher;
- ``equal_tails``: the default with ``minor_tail=0.5`` (the default until issue 19 chose
  ``DEFAULT_MINOR_TAIL`` = 0.3 on this suite);
- ``minor_tail_0.1``: the default with ``minor_tail=0.1`` (two-sided tests give their minor
  tail a tenth of the budget);
- ``all_learned``: every stable feature, directions as the default learns them (two-sided
  where kinds of outliers disagree, the baselines never reversed), Fisher, the default tails;
  ``all_learned_minor_0.1``: the same with ``minor_tail=0.1``;
- ``best_proxy_feature``: the single stable feature with the best one-sided AUROC against the
  synthetic outliers;
- ``joint_knn``: distance to the 5th nearest fit row in the space of every stable feature,
  each transformed as the scorer transforms it (log, robust scale, Yeo–Johnson: about N(0, 1)
  on in-distribution data);
- ``mahalanobis_all``: the scorer's robust Mahalanobis distance over every stable feature.

``proxy_auroc`` rates each rule without OOD data: its AUROC of synthetic outliers made from the
*calibration* part (another seed; the rules never saw them) against the calibration part.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from oodguard.bundle import read_bundle
from oodguard.calibration.calibrate import fit_scorer, split_indices
from oodguard.calibration.checks import unstable_features
from oodguard.calibration.detection_metrics import auroc
from oodguard.calibration.selection import DEFAULT_PROXY_KINDS, make_proxies

__all__ = ["RULES", "rule_scores"]

RULES = ("one_sided", "one_sided_all", "equal_tails", "minor_tail_0.1", "all_learned",
         "all_learned_minor_0.1", "best_proxy_feature", "joint_knn", "mahalanobis_all")
FIT_FRACTION = 0.4


def rule_scores(guard: Any, bundle: Any, x_val: np.ndarray, sets: dict[str, np.ndarray],
                features: dict[str, np.ndarray], *, alpha: float,
                seed: int) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """``({rule: {set: scores}}, info)`` for every rule in :data:`RULES`; ``features`` are the
    guard's features of every set in ``sets`` (name ▶ ``[N, F]``)."""
    names = list(guard.feature_names)
    unstable = unstable_features(read_bundle(bundle).manifest.dynamics)
    f_val = np.asarray(guard.check(x_val).features, dtype=np.float64)
    fit_idx, cal_idx = split_indices(len(x_val), FIT_FRACTION, seed)
    fit, cal = f_val[fit_idx], f_val[cal_idx]
    n_fit = len(fit_idx)
    ref = np.asarray(guard.check(make_proxies(x_val[fit_idx], kinds=DEFAULT_PROXY_KINDS,
                                              seed=seed)).features, dtype=np.float64)
    groups = [np.arange(i * n_fit, (i + 1) * n_fit) for i in range(len(DEFAULT_PROXY_KINDS))]
    held = np.asarray(guard.check(make_proxies(x_val[cal_idx], kinds=DEFAULT_PROXY_KINDS,
                                               seed=seed + 1)).features, dtype=np.float64)
    stable = [n for n in names if n not in unstable]
    common = {"alpha": alpha, "exclude": unstable, "seed": seed}
    scorers: dict[str, Any] = {}
    scorers["one_sided"], _ = fit_scorer(fit, cal, names, reference_features=ref,
                                         reference_groups=groups, combine="fisher",
                                         two_sided_margin=None, **common)
    scorers["one_sided_all"], _ = fit_scorer(fit, cal, names, reference_features=ref,
                                             reference_groups=groups, combine="fisher",
                                             two_sided_margin=None, required=stable, **common)
    scorers["equal_tails"], _ = fit_scorer(fit, cal, names, reference_features=ref,
                                           reference_groups=groups, combine="fisher",
                                           minor_tail=0.5, **common)
    scorers["minor_tail_0.1"], _ = fit_scorer(fit, cal, names, reference_features=ref,
                                              reference_groups=groups, combine="fisher",
                                              minor_tail=0.1, **common)
    scorers["all_learned"], _ = fit_scorer(fit, cal, names, reference_features=ref,
                                           reference_groups=groups, combine="fisher",
                                           required=stable, **common)
    scorers["all_learned_minor_0.1"], _ = fit_scorer(fit, cal, names, reference_features=ref,
                                                     reference_groups=groups, combine="fisher",
                                                     required=stable, minor_tail=0.1, **common)
    probe, pinfo = fit_scorer(fit, cal, names, reference_features=ref, reference_groups=groups,
                              combine="max", two_sided_margin=None, keep_sign=(),
                              required=(), **common)
    ref_auc = pinfo["selection"]["reference_auroc"]
    best = max(ref_auc, key=lambda n: max(ref_auc[n], 1.0 - ref_auc[n]))
    sign = 1.0 if ref_auc[best] >= 0.5 else -1.0
    scorers["mahalanobis_all"], _ = fit_scorer(fit, cal, names, combine="mahalanobis", **common)
    z_fit = scorers["mahalanobis_all"].standardize(fit)

    def knn(f: np.ndarray) -> np.ndarray:
        z = scorers["mahalanobis_all"].standardize(f)
        out = np.full(len(z), np.inf)
        ok = np.isfinite(z).all(axis=1)
        if ok.any():
            d2 = ((z[ok, None, :] - z_fit[None, :, :]) ** 2).sum(axis=2)
            out[ok] = np.sqrt(np.partition(d2, 4, axis=1)[:, 4])
        return out

    j = names.index(best)

    def score(rule: str, f: np.ndarray) -> np.ndarray:
        if rule == "joint_knn":
            return knn(f)
        if rule == "best_proxy_feature":
            return np.nan_to_num(sign * f[:, j], nan=np.inf)
        return np.asarray(scorers[rule].score(f))

    out = {r: {k: score(r, v) for k, v in features.items()} for r in RULES}
    info = {"best_proxy_feature": ("" if sign > 0 else "-") + best,
            "proxy_auroc": {r: round(auroc(scores_in=score(r, cal), scores_out=score(r, held)), 4)
                            for r in RULES},
            "one_sided_selected": [names[i] for i in scorers["one_sided"].used]}
    return out, info
