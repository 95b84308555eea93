"""The detection benchmark's summary, table and plot (see ``benchmarks/detection.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from _common import format_table

BASELINES = ("recon", "maha", "knn")
TRIVIAL = ("trivial_constant_1e3", "trivial_normal_sd10")
MARGIN = 0.02


def _failure(rec: dict[str, Any]) -> str | None:
    """The error of the first stage that failed (export, calibration, scoring), if any."""
    for stage in ("export", "calibration", "scoring"):
        if not rec.get(stage, {"ok": True}).get("ok", True):
            return str(rec[stage].get("error"))
    return None


def summarise(results: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """The numbers the issue asks for, over the scored (model, OOD set) pairs of models exported
    with default settings; the same over all scored models (those exported with a looser
    parity tolerance too) under ``including_fallback_exports``."""
    strict = [r for r in results if r.get("export", {}).get("ok")]
    out = _summary(strict, results, alpha)
    if len(strict) < sum("pairs" in r for r in results):
        out["including_fallback_exports"] = _summary(results, results, alpha)
    return out


def _summary(chosen: list[dict[str, Any]], results: list[dict[str, Any]],
             alpha: float) -> dict[str, Any]:
    scored = [r for r in chosen if "pairs" in r]
    pairs = [p for r in scored for p in r["pairs"]]
    nontrivial = [p for p in pairs if p["ood_set"] not in TRIVIAL]

    def frac_ok(ps: list[dict[str, Any]]) -> float | None:
        if not ps:
            return None
        return round(float(np.mean([p["combined_minus_best_baseline"] >= -MARGIN for p in ps])), 4)

    scores = ["combined", *BASELINES, "mean_attractor_distance", "paper_cosine", "pyod_ae"]
    mean_auroc = {s: round(float(np.mean([p[s]["auroc"] for p in pairs])), 4)
                  for s in scores if pairs and all(s in p for p in pairs)}
    best_base = max((mean_auroc[b] for b in BASELINES if b in mean_auroc), default=None)
    fprs = [r["in_distribution"]["fpr_at_alpha"] for r in scored]
    trivial = [p["combined"]["flagged_at_alpha"] for p in pairs if p["ood_set"] in TRIVIAL]
    gaps = [p["combined_minus_best_baseline"] for p in pairs]
    worst = min(pairs, key=lambda p: p["combined_minus_best_baseline"], default=None)
    feature_best: dict[str, list[float]] = {}
    for r in scored:
        for p in r["pairs"]:
            for f, v in p["features"].items():
                feature_best.setdefault(f, []).append(v["best"]["auroc"])
    return {
        "alpha": alpha,
        "models": len(results),
        "models_scored": len(scored),
        "exported_with_defaults": sum(bool(r.get("export", {}).get("ok")) for r in results),
        "exported_with_fallback_parity": sum(bool(r.get("export", {}).get("fallback", {})
                                                  .get("ok")) for r in results),
        "calibrated": sum(bool(r.get("calibration", {}).get("ok")) for r in results),
        "failures": {r["model_id"]: _failure(r) for r in results if _failure(r)},
        "pairs": len(pairs),
        "frac_pairs_combined_within_margin_of_best_baseline": frac_ok(pairs),
        "frac_within_margin_excluding_trivial": frac_ok(nontrivial),
        "margin": MARGIN,
        "target_frac": 0.9,
        "mean_auroc": mean_auroc,
        "combined_minus_best_baseline_mean": (round(mean_auroc["combined"] - best_base, 4)
                                              if best_base is not None else None),
        "target_mean_gain": MARGIN,
        "worst_pair": None if worst is None else {
            "model_id": next(r["model_id"] for r in scored if worst in r["pairs"]),
            "ood_set": worst["ood_set"], "combined": worst["combined"]["auroc"],
            "best_baseline": worst["best_baseline"],
            "best_baseline_auroc": worst[worst["best_baseline"]]["auroc"]},
        "gap_quantiles": ([round(float(q), 4) for q in np.quantile(gaps, [0, 0.1, 0.5, 0.9, 1])]
                          if gaps else None),
        "in_distribution_fpr_range": [min(fprs), max(fprs)] if fprs else None,
        "in_distribution_fpr_mean": round(float(np.mean(fprs)), 4) if fprs else None,
        "trivially_far_min_flagged": min(trivial) if trivial else None,
        "trivially_far_all_flagged": bool(trivial) and min(trivial) == 1.0,
        "trivially_far_missed": {
            f"{r['model_id']}:{p['ood_set']}": p["combined"]["flagged_at_alpha"]
            for r in scored for p in r["pairs"]
            if p["ood_set"] in TRIVIAL and p["combined"]["flagged_at_alpha"] < 1},
        "models_fpr_above_alpha_at_99": [r["model_id"] for r in scored
                                         if r["in_distribution"]["fpr_ci99"][0] > alpha],
        # the test that matters for a conformal guarantee: is the held-out FPR where an exact
        # split-conformal test on exchangeable data puts it 99% of the time?
        "models_fpr_outside_exchangeable_99": [
            r["model_id"] for r in scored if "fpr_exchangeable_99" in r["in_distribution"]
            and not (r["in_distribution"]["fpr_exchangeable_99"][0]
                     <= r["in_distribution"]["fpr_at_alpha"]
                     <= r["in_distribution"]["fpr_exchangeable_99"][1])],
        "by_family": _groups(scored, "family", frac_ok),
        "by_recipe": _groups(scored, "recipe", frac_ok),
        "feature_mean_best_direction_auroc": {f: round(float(np.mean(v)), 4)
                                              for f, v in feature_best.items()},
        "targets": targets(scored),
    }


def _mean(xs: list[float]) -> float:
    return round(float(np.mean(xs)), 4) if xs else float("nan")


def _rule_auroc(p: dict[str, Any], rule: str) -> float | None:
    if rule == "default":
        return float(p["combined"]["auroc"])
    v = p.get("rules", {}).get(rule)
    return None if v is None else float(v["auroc"])


def _proxy_choice(r: dict[str, Any]) -> str | None:
    """The candidate rule with the best AUROC against held-out synthetic outliers (no OOD)."""
    pa = r.get("rules", {}).get("proxy_auroc")
    return max(pa, key=pa.get) if pa else None


def targets(scored: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 19's numbers over the family OOD sets (the trivially far ones are checked apart):
    per model, the combined mean AUROC against the best single feature's (one direction per
    feature and model, picked in hindsight: an oracle); inversions (a one-sided classic
    baseline ≥ 0.8, the combined score < 0.6); every candidate rule's mean per family; the
    rule chosen leave-one-family-out against the rule chosen with every family; and per
    family every feature one-sided (as given and reversed) and two-sided."""
    fam_pairs = {r["model_id"]: [p for p in r["pairs"] if p["ood_set"] not in TRIVIAL]
                 for r in scored}
    rules = sorted({k for r in scored for p in r["pairs"] for k in p.get("rules", {})})
    candidates = ["default", *rules]
    per_model = []
    for r in scored:
        ps = fam_pairs[r["model_id"]]
        if not ps or not r.get("features"):
            continue
        feats = {}
        for f in r["features"]:
            m = float(np.mean([p["features"][f]["given"]["auroc"] for p in ps]))
            feats[("" if m >= 0.5 else "-") + f] = max(m, 1.0 - m)
        best = max(feats, key=feats.get)  # type: ignore[arg-type]
        row: dict[str, Any] = {"model_id": r["model_id"], "family": r["family"],
                               "best_feature": best, "best_feature_mean": round(feats[best], 4)}
        choice = _proxy_choice(r)
        for c in [*candidates, "proxy_chosen"]:
            rule = choice if c == "proxy_chosen" else c
            vals = [_rule_auroc(p, rule) for p in ps] if rule else []
            if vals and None not in vals:
                row[c] = _mean(vals)  # type: ignore[arg-type]
        row["gap"] = round(row["default"] - row["best_feature_mean"], 4)
        row["proxy_choice"] = choice
        per_model.append(row)
    cands = [*candidates, "proxy_chosen"]
    within = {c: _mean([float(m[c] - m["best_feature_mean"] >= -MARGIN) for m in per_model
                        if c in m]) for c in cands}
    inversions = {c: [] for c in cands}  # type: dict[str, list[str]]
    for r in scored:
        choice = _proxy_choice(r)
        for p in r["pairs"]:
            if max(p[b]["auroc"] for b in BASELINES) < 0.8:
                continue
            for c in cands:
                rule = choice if c == "proxy_chosen" else c
                v = _rule_auroc(p, rule) if rule else None
                if v is not None and v < 0.6:
                    inversions[c].append(f"{r['model_id']}:{p['ood_set']} {v:.3f}")
    fams = sorted({r["family"] for r in scored})
    by_family: dict[str, dict[str, float]] = {}
    for fam in fams:
        rows = [m for m in per_model if m["family"] == fam]
        by_family[fam] = {c: _mean([m[c] for m in rows if c in m]) for c in cands}
        by_family[fam]["best_feature_per_model"] = _mean([m["best_feature_mean"] for m in rows])
    lofo = {}
    if len(fams) > 1:
        def pick(keep: list[str]) -> str:
            return max(cands, key=lambda c: np.mean([m[c] for m in per_model
                                                     if m["family"] in keep and c in m]))
        with_all = pick(fams)
        for fam in fams:
            without = pick([f for f in fams if f != fam])
            gap = by_family[fam][without] - by_family[fam][with_all]
            lofo[fam] = {"rule_without": without, "rule_with": with_all,
                         "gap": round(float(gap), 4), "within_margin": bool(gap >= -MARGIN)}
    return {
        "candidates": cands,
        "meta_rule_leave_one_family_out": meta_rule(scored, per_model, rules),
        "per_model": per_model,
        "frac_models_within_margin_of_best_feature": within,
        "inversions": {c: v for c, v in inversions.items()},
        "mean_over_models": {c: _mean([m[c] for m in per_model if c in m]) for c in cands},
        "by_family": by_family,
        "leave_one_family_out": lofo,
        "features_by_family": _features_by_family(scored, fam_pairs),
    }


def _meta_features(r: dict[str, Any]) -> dict[str, float]:
    """What a model shows without OOD data: each rule's AUROC against held-out synthetic
    outliers (and its difference to the default's nearest kin, ``minor_tail_0.1``), the number
    of two-sided tests the default chose, the attractor counts (Euclidean, and after merging at
    cosine 0.99)."""
    pa = r.get("rules", {}).get("proxy_auroc", {})
    out = {f"proxy_{k}": float(v) for k, v in pa.items()}
    out.update({f"proxy_gain_{k}": float(v - pa["minor_tail_0.1"]) for k, v in pa.items()
                if "minor_tail_0.1" in pa})
    out["two_sided_tests"] = float(sum(d == 0 for d in r["calibration"]["direction"]))
    out["log_attractors"] = float(np.log1p(r["export"].get("attractors", 0)))
    out["log_merged_attractors"] = float(np.log1p(r.get("paper_attractors_merged", 0)))
    return out


def meta_rule(scored: list[dict[str, Any]], per_model: list[dict[str, Any]],
              rules: list[str]) -> dict[str, Any]:
    """A rule learned across the suite from OOD-free meta-features (in the spirit of MetaOD):
    use candidate rule ``R`` instead of the default where meta-feature ``m`` is above (or
    below) a threshold; ``R``, ``m``, the side and the threshold maximise the fraction of
    models within ``MARGIN`` of their best feature on every family but one, and are scored on
    the family left out."""
    rows = {m["model_id"]: m for m in per_model}
    recs = [r for r in scored if r["model_id"] in rows and r.get("rules", {}).get("proxy_auroc")]
    fams = sorted({r["family"] for r in recs})
    if len(fams) < 2:
        return {}
    meta = {r["model_id"]: _meta_features(r) for r in recs}

    def ok(r: dict[str, Any], rule: str) -> float:
        row = rows[r["model_id"]]
        return float(row.get(rule, row["default"]) - row["best_feature_mean"] >= -MARGIN)

    def frac(rs: list[dict[str, Any]], rule: tuple[str, str, float, float] | None) -> float:
        if rule is None:
            return float(np.mean([ok(r, "default") for r in rs]))
        alt, key, side, thr = rule
        return float(np.mean([ok(r, alt if side * meta[r["model_id"]].get(key, np.nan)
                                 > side * thr else "default") for r in rs]))

    out: dict[str, Any] = {}
    held: list[float] = []
    for fam in fams:
        train = [r for r in recs if r["family"] != fam]
        test = [r for r in recs if r["family"] == fam]
        best: tuple[float, tuple[str, str, float, float] | None] = (frac(train, None), None)
        keys = sorted({k for r in train for k in meta[r["model_id"]]})
        for alt in rules:
            for key in keys:
                # -inf: the rule used everywhere, unconditionally
                for thr in [-np.inf, *sorted({meta[r["model_id"]].get(key, np.nan)
                                              for r in train})]:
                    for side in (1.0, -1.0):
                        f = frac(train, (alt, key, side, thr))
                        if f > best[0] + 1e-9:
                            best = (f, (alt, key, side, thr))
        got = frac(test, best[1])
        held += [got] * len(test)
        out[fam] = {"rule": None if best[1] is None else list(best[1]),
                    "train_frac": round(best[0], 4), "held_out_frac": round(got, 4),
                    "default_frac": round(frac(test, None), 4)}
    return {"by_family": out, "models_within_margin": round(float(np.mean(held)), 4)}


def _features_by_family(scored: list[dict[str, Any]],
                        fam_pairs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per family, mean AUROC over its (model, family OOD set) pairs of every feature as given
    (higher = OOD), reversed (1 − given) and two-sided, and of every outside score."""
    out: dict[str, Any] = {}
    for fam in sorted({r["family"] for r in scored}):
        ps = [p for r in scored if r["family"] == fam for p in fam_pairs[r["model_id"]]]
        if not ps:
            continue
        feats = list(dict.fromkeys(f for p in ps for f in p["features"]))
        row: dict[str, Any] = {}
        for f in feats:
            g = [p["features"][f]["given"]["auroc"] for p in ps if f in p["features"]]
            t = [p["features"][f]["two_sided"]["auroc"] for p in ps
                 if "two_sided" in p["features"].get(f, {})]
            row[f] = {"given": _mean(g), "reversed": _mean([1.0 - v for v in g]),
                      "two_sided": _mean(t)}
        for b in ("combined", *BASELINES, "paper_cosine", "pyod_ae"):
            v = [p[b]["auroc"] for p in ps if b in p]
            if v:
                row[b] = _mean(v)
        out[fam] = row
    return out


def print_report(results: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    rows = []
    for r in results:
        for p in r.get("pairs", []):
            rows.append({"model": r["model_id"], "set": p["ood_set"], "kind": p["kind"],
                         "comb": p["combined"]["auroc"], "flag": p["combined"]["flagged_at_alpha"],
                         **{b: p[b]["auroc"] for b in (*BASELINES, "mean_attractor_distance",
                                                       "pyod_ae") if b in p},
                         "gap": p["combined_minus_best_baseline"]})
    cols = [("model", "model", ""), ("set", "OOD set", ""), ("kind", "kind", ""),
            ("comb", "combined", ".3f"), ("flag", "flagged@α", ".3f"), ("recon", "recon", ".3f"),
            ("maha", "maha", ".3f"), ("knn", "knn", ".3f"),
            ("mean_attractor_distance", "mean_attr", ".3f"), ("pyod_ae", "pyod_ae", ".3f"),
            ("gap", "comb−best", "+.3f")]
    print(format_table(rows, cols))
    print()
    mrows = [{"model": r["model_id"] + (" (fallback)" if r.get("export", {}).get("fallback", {})
                                        .get("ok") else ""),
              "fpr": r.get("in_distribution", {}).get("fpr_at_alpha"),
              "ci": "" if "in_distribution" not in r else
              "[{:.3f}, {:.3f}]".format(*r["in_distribution"]["fpr_ci99"]),
              "ex": "" if "fpr_exchangeable_99" not in r.get("in_distribution", {}) else
              "[{:.3f}, {:.3f}]".format(*r["in_distribution"]["fpr_exchangeable_99"]),
              "sel": ", ".join(r["calibration"]["selected"]) if r.get("calibration", {}).get("ok")
              else (_failure(r) or "")[:80]}
             for r in results]
    print(format_table(mrows, [("model", "model", ""), ("fpr", "FPR@α test", ".3f"),
                               ("ci", "99% CI (test draw)", ""),
                               ("ex", "99% if exchangeable", ""),
                               ("sel", "selected / failure", "")]))
    print()
    t = summary.get("targets")
    if t and t["per_model"]:
        print("mean AUROC over each model's family OOD sets, averaged per family; 'best feature' "
              "is the per-model best single feature in hindsight (an oracle)")
        frows = [{"family": f, "best": v["best_feature_per_model"],
                  **{c: v.get(c) for c in t["candidates"]}} for f, v in t["by_family"].items()]
        frows.append({"family": "models within 0.02 of best", "best": None,
                      **t["frac_models_within_margin_of_best_feature"]})
        print(format_table(frows, [("family", "family", ""), ("best", "best feature", ".3f"),
                                   *[(c, c, ".3f") for c in t["candidates"]]]))
        print("inversions (a one-sided baseline >= 0.8, the score < 0.6): " + ", ".join(
            f"{c} {len(v)}" for c, v in t["inversions"].items()))
        mr = t.get("meta_rule_leave_one_family_out") or {}
        if mr:
            print(f"meta-feature rule, leave one family out: {mr['models_within_margin']:.3f} "
                  "of models within 0.02 (" + "; ".join(
                      f"{f}: {v['held_out_frac']:.2f} vs default {v['default_frac']:.2f}"
                      for f, v in mr["by_family"].items()) + ")")
        print("leave one family out: " + "; ".join(
            f"{f}: {v['rule_without']} vs {v['rule_with']} {v['gap']:+.3f}"
            for f, v in t["leave_one_family_out"].items()))
        print()
    print(json.dumps({k: v for k, v in summary.items()
                      if k not in ("feature_mean_best_direction_auroc", "targets")}, indent=1))


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Per-pair combined vs best-baseline AUROC scatter, and a per-feature AUROC heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(r, p) for r in results for p in r.get("pairs", [])]
    if not pairs:
        return
    fig, (ax, hx) = plt.subplots(1, 2, figsize=(16, 7),
                                 gridspec_kw={"width_ratios": [1, 1.6]})
    fams = sorted({r["family"] for r, _ in pairs})
    for i, f in enumerate(fams):
        xs = [p[p["best_baseline"]]["auroc"] for r, p in pairs if r["family"] == f]
        ys = [p["combined"]["auroc"] for r, p in pairs if r["family"] == f]
        ax.scatter(xs, ys, s=14, alpha=0.7, label=f, color=f"C{i}")
    ax.plot([0, 1], [0, 1], "k-", lw=0.8)
    ax.plot([0, 1], [-MARGIN, 1 - MARGIN], "k:", lw=0.8)
    ax.set(xlabel="best of recon / maha / knn AUROC", ylabel="calibrated combined AUROC",
           xlim=(0, 1.02), ylim=(0, 1.02), title="per (model, OOD set) pair")
    ax.legend()
    feats = list(dict.fromkeys(f for _, p in pairs for f in p["features"]))
    sets = list(dict.fromkeys(f"{r['family']}:{p['ood_set']}" for r, p in pairs))
    grid = np.full((len(feats) + 4, len(sets)), np.nan)
    rows = ["combined", *BASELINES, *feats]
    for si, s in enumerate(sets):
        sel = [p for r, p in pairs if f"{r['family']}:{p['ood_set']}" == s]
        grid[0, si] = np.mean([p["combined"]["auroc"] for p in sel])
        for bi, b in enumerate(BASELINES):
            grid[1 + bi, si] = np.mean([p[b]["auroc"] for p in sel])
        for fi, f in enumerate(feats):
            grid[4 + fi, si] = np.mean([p["features"][f]["given"]["auroc"] for p in sel
                                        if f in p["features"]])
    im = hx.imshow(grid, vmin=0, vmax=1, cmap="RdBu_r", aspect="auto")
    hx.set_yticks(range(len(rows)), rows, fontsize=7)
    hx.set_xticks(range(len(sets)), sets, rotation=90, fontsize=6)
    hx.set_title("mean AUROC over models (features as given: < 0.5 = inverted)")
    fig.colorbar(im, ax=hx, fraction=0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _groups(scored: list[dict[str, Any]], key: str, frac_ok: Any) -> dict[str, Any]:
    """Per value of ``key`` (family, recipe): pairs, fraction within the margin, mean AUROCs of
    the combined score, of the per-pair best baseline and of each baseline."""
    out: dict[str, Any] = {}
    for g in sorted({r[key] for r in scored}):
        ps = [p for r in scored if r[key] == g for p in r["pairs"]]
        out[g] = {"models": sum(r[key] == g for r in scored), "pairs": len(ps),
                  "frac_within_margin": frac_ok(ps),
                  "combined": round(float(np.mean([p["combined"]["auroc"] for p in ps])), 4),
                  "best_baseline_per_pair": round(float(np.mean(
                      [p[p["best_baseline"]]["auroc"] for p in ps])), 4),
                  **{b: round(float(np.mean([p[b]["auroc"] for p in ps])), 4) for b in BASELINES}}
    return out

