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

    scores = ["combined", *BASELINES, "mean_attractor_distance", "pyod_ae"]
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
    }


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
    print(json.dumps({k: v for k, v in summary.items()
                      if k != "feature_mean_best_direction_auroc"}, indent=1))


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

