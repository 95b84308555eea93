"""How far can a choice among the classic baselines go? Bounds for the detection target.

The detection issue asks the calibrated score to stay within 0.02 AUROC of the best of three
classic baselines (reconstruction error, latent Mahalanobis, latent kNN — each one-sided) on
≥ 90 % of (model, OOD set) pairs. This script measures, on the benchmark suite's artifacts
(``python benchmarks/detection.py --save-artifacts DIR``), what rules built from the same three
features reach:

- every *rule*: each baseline left out, one-sided (upper tail), two-sided with equal tails, or
  two-sided with the upper tail given 0.9 of the test; combined by Fisher (sum of
  ``−2 log p``) or by the maximum (Tippett) — 117 rules;
- a rule *chosen per model without OOD data*, by its AUROC against the synthetic outliers
  calibration uses (pooled, mean / minimum / trimmed mean over the 10 proxy kinds);
- the *hindsight oracle*: per model, the rule that does best on that model's real OOD sets —
  an upper bound for any choice among these rules, not a detector;
- two *joint* rules that model the three baselines together instead of combining per-feature
  tests: the distance to the 5th nearest fit row and the Mahalanobis distance under the fit
  rows' covariance, both in the standardised 3-D baseline space (a one-class density of the
  baselines; they catch an input typical in each baseline alone but not in their combination).

Each model's features come from its bundle (the guard's engine); the transform is fitted on
the calibration fit split, as :func:`oodguard.calibration.calibrate` does; AUROCs are of the
held-out in-distribution test rows against each OOD set; the baselines' AUROCs are the
suite's own (``baselines.npz``).

    python benchmarks/selection_bounds.py ARTIFACTS [--out results/selection_bounds.json]

Not a pass/fail test: it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from oodguard.bundle import MODEL_FILE, read_bundle
from oodguard.calibration.calibrate import build_scorer, split_indices
from oodguard.calibration.detection_metrics import auroc
from oodguard.calibration.selection import DEFAULT_PROXY_KINDS, make_proxies
from oodguard.calibration.transform import fit_transform
from oodguard.engine import Engine
from oodguard.scoring import gaussian_log_sf

BASELINES = ("recon_error", "latent_knn", "latent_mahalanobis")
SUITE_NAMES = {"recon_error": "recon", "latent_knn": "knn", "latent_mahalanobis": "maha"}
MODES = ("off", "up", "two", "two_upper_0.9")
CRITERIA = ("pooled", "mean_kind", "min_kind", "trimmed_kind")
MARGIN = 0.02


def rules() -> list[tuple[tuple[str, ...], str]]:
    out = []
    for modes in itertools.product(MODES, repeat=len(BASELINES)):
        if all(m == "off" for m in modes):
            continue
        for comb in ("fisher", "max"):
            if comb == "max" and "two_upper_0.9" in modes:
                continue  # Tippett on |z| has no unequal-tail form here
            out.append((modes, comb))
    return out


def _term(z: np.ndarray, mode: str, comb: str) -> np.ndarray:
    if comb == "max":
        return z if mode == "up" else np.abs(z)
    if mode == "up":
        return -2.0 * gaussian_log_sf(z)
    lower = 0.5 if mode == "two" else 0.1
    logp = np.minimum(gaussian_log_sf(z) - np.log1p(-lower), gaussian_log_sf(-z) - np.log(lower))
    return -2.0 * np.minimum(logp, 0.0)


def score(rule: tuple[tuple[str, ...], str], z: np.ndarray) -> np.ndarray:
    """``z [N, 3]``: the standardised baselines in the order of BASELINES."""
    modes, comb = rule
    parts = np.stack([_term(z[:, k], m, comb) for k, m in enumerate(modes) if m != "off"], 1)
    return parts.sum(axis=1) if comb == "fisher" else parts.max(axis=1)


JOINT = ("joint knn5", "joint mahalanobis")


def joint_score(name: str, z: np.ndarray, ref: np.ndarray, *, in_ref: bool = False) -> np.ndarray:
    """A joint rule of ``z [N, 3]`` against the fit rows ``ref``; ``in_ref``: ``z`` is ``ref``
    (the 5th neighbour is then the 6th, the row itself being the first)."""
    if name == "joint knn5":
        d = np.sqrt(((z[:, None, :] - ref[None]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, 5 if in_ref else 4]
    cov = np.cov(ref.T) + 1e-6 * np.eye(ref.shape[1])
    diff = z - ref.mean(0)
    return np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff)


def model_bounds(art: Path, seed: int = 0) -> dict[str, Any]:
    b = read_bundle(art / "bundle")
    engine = Engine(b.files[MODEL_FILE], b.manifest, providers="cpu")
    names = list(b.manifest.feature_names)
    with np.load(art / "data.npz") as d:
        data = {k: d[k] for k in d.files}
    with np.load(art / "baselines.npz") as d:
        suite = {k: d[k] for k in d.files}
    fit_idx, _ = split_indices(len(data["x_val"]), 0.4, seed)
    x_fit = data["x_val"][fit_idx]
    ft = fit_transform(engine.run(np.ascontiguousarray(x_fit)), names, use=list(BASELINES))
    sc = build_scorer(ft, np.arange(len(ft.used)), np.ones(len(ft.used)), names, "max", 0.05)
    order = [[names[i] for i in ft.used].index(n) for n in BASELINES]

    def z_of(x: np.ndarray) -> np.ndarray:
        f = engine.run(np.ascontiguousarray(x, dtype=np.float32))
        return sc.standardize(f)[:, order]

    z_fit, z_test = z_of(x_fit), z_of(data["x_test"])
    z_proxy = z_of(make_proxies(x_fit, kinds=DEFAULT_PROXY_KINDS, seed=seed))
    kinds = np.array_split(np.arange(len(z_proxy)), len(DEFAULT_PROXY_KINDS))
    sets = {k[5:]: z_of(v) for k, v in data.items() if k.startswith("ood__")}
    best = {s: max(auroc(scores_in=suite[f"test__{SUITE_NAMES[b]}"],
                         scores_out=suite[f"{s}__{SUITE_NAMES[b]}"]) for b in BASELINES)
            for s in sets}
    per_rule: dict[str, Any] = {}

    def entry(fn: Any, s_fit: np.ndarray) -> dict[str, Any]:
        """A rule's proxy AUROCs (fit rows against the synthetic outliers) and its AUROCs on
        the real OOD sets; ``fn`` scores rows that are not fit rows."""
        s_proxy, s_test = fn(z_proxy), fn(z_test)
        by_kind = np.sort([auroc(scores_in=s_fit, scores_out=s_proxy[g]) for g in kinds])
        aurocs = {s: auroc(scores_in=s_test, scores_out=fn(z)) for s, z in sets.items()}
        return {
            "proxy": {"pooled": auroc(scores_in=s_fit, scores_out=s_proxy),
                      "mean_kind": float(by_kind.mean()), "min_kind": float(by_kind[0]),
                      "trimmed_kind": float(by_kind[2:].mean())},
            "auroc": aurocs,
            "within": int(sum(aurocs[s] >= best[s] - MARGIN for s in sets)),
        }

    for rule in rules():
        per_rule[f"{'/'.join(rule[0])} {rule[1]}"] = entry(
            lambda z, rule=rule: score(rule, z), score(rule, z_fit))
    for name in JOINT:
        per_rule[name] = entry(lambda z, name=name: joint_score(name, z, z_fit),
                               joint_score(name, z_fit, z_fit, in_ref=True))
    return {"model": art.name, "sets": len(sets), "best_baseline": best, "rules": per_rule}


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = sum(r["sets"] for r in results)
    names = list(results[0]["rules"])
    fixed = {n: sum(r["rules"][n]["within"] for r in results) / pairs for n in names}
    mean_auroc = {n: float(np.mean([a for r in results for a in r["rules"][n]["auroc"].values()]))
                  for n in names}
    chosen = {}
    for c in CRITERIA:
        picks = [max(r["rules"], key=lambda n, r=r: r["rules"][n]["proxy"][c]) for r in results]
        chosen[c] = {
            "within": sum(r["rules"][p]["within"] for r, p in zip(results, picks, strict=True))
            / pairs,
            "mean_auroc": float(np.mean([a for r, p in zip(results, picks, strict=True)
                                         for a in r["rules"][p]["auroc"].values()])),
        }
    oracle = sum(max(v["within"] for v in r["rules"].values()) for r in results) / pairs
    top = sorted(fixed, key=lambda n: -fixed[n])[:5]
    top += [n for n in JOINT if n in fixed and n not in top]
    return {"models": len(results), "pairs": pairs, "margin": MARGIN,
            "best_fixed_rules": {n: {"within": round(fixed[n], 3),
                                     "mean_auroc": round(mean_auroc[n], 4)} for n in top},
            "chosen_by_proxies": {c: {k: round(v, 4) for k, v in d.items()}
                                  for c, d in chosen.items()},
            "hindsight_oracle_within": round(oracle, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    results = []
    for d in sorted(p for p in args.artifacts.iterdir() if (p / "baselines.npz").exists()):
        results.append(model_bounds(d))
        print(f"{d.name}: done", file=sys.stderr, flush=True)
    if not results:
        print(f"no artifacts with baselines.npz under {args.artifacts}", file=sys.stderr)
        return 2
    s = summarise(results)
    print(f"{s['models']} models, {s['pairs']} pairs; share of pairs within {MARGIN} of the "
          "best baseline:")
    for n, v in s["best_fixed_rules"].items():
        print(f"  fixed rule {n:40s} {v['within']:.3f}  (mean AUROC {v['mean_auroc']:.4f})")
    for c, v in s["chosen_by_proxies"].items():
        print(f"  chosen per model by proxy {c:14s}      {v['within']:.3f}  "
              f"(mean AUROC {v['mean_auroc']:.4f})")
    print(f"  hindsight oracle per model (upper bound)       {s['hindsight_oracle_within']:.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # per model and rule: pairs within the margin and the proxy AUROCs (the per-set
        # AUROCs are left out: 117 rules x 37 models x 10 sets)
        slim = [{**r, "rules": {n: {k: v for k, v in d.items() if k != "auroc"}
                                for n, d in r["rules"].items()}} for r in results]
        args.out.write_text(json.dumps({"summary": s, "results": slim}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
