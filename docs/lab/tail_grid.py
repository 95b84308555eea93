"""Lab script (issue 19, 2026-12-07): the minor-tail share of the calibration's two-sided tests,
measured on the detection suite's saved artifacts without retraining.

    python benchmarks/detection.py --save-artifacts ART --overwrite   # once (about 12 min)
    python docs/lab/tail_grid.py ART                                  # about 2 min

Per model it computes the bundle's features of the validation, test and OOD sets and of the
synthetic outliers that calibrate() makes (same split, same seed), fits each variant with
``fit_scorer`` and reports issue 19's numbers as ``benchmarks/_detection_report.targets``
defines them: the fraction of models whose combined mean AUROC over the family OOD sets is
within 0.02 of their best single feature (one direction per feature, picked in hindsight), the
mean over every pair, inversions (a one-sided classic baseline >= 0.8 on a pair, the variant
< 0.6), per family, and the variant chosen leaving each family out. Exploratory: the claims
in docs/detection.md come from the full suite run, not from this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from oodguard.bundle import MODEL_FILE, read_bundle
from oodguard.calibration.calibrate import (
    DEFAULT_FIT_FRACTION,
    check_validation_size,
    fit_scorer,
    split_indices,
)
from oodguard.calibration.checks import unstable_features
from oodguard.calibration.detection_metrics import auroc
from oodguard.calibration.selection import DEFAULT_PROXY_KINDS, make_proxies
from oodguard.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _detection_report import BASELINES, MARGIN, TRIVIAL  # noqa: E402

VARIANTS = {f"minor tail {w}": {"minor_tail": w} for w in (0.5, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1)}


def _finite(s: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(s, dtype=np.float64), nan=np.inf)


def model_features(home: Path) -> dict:
    meta = json.loads((home / "meta.json").read_text())
    src = read_bundle(home / "bundle")
    eng = Engine(src.files[MODEL_FILE], src.manifest, providers="cpu")
    d = np.load(home / "data.npz")
    seed = meta["seed"]
    fi, ci = split_indices(len(d["x_val"]), DEFAULT_FIT_FRACTION, seed)
    proxies = make_proxies(d["x_val"][fi], kinds=DEFAULT_PROXY_KINDS, seed=seed)
    b = np.load(home / "baselines.npz")
    return {"id": home.name, "family": meta["family"], "seed": seed, "sets": meta["ood_sets"],
            "names": list(src.manifest.feature_names),
            "unstable": unstable_features(src.manifest.dynamics),
            "val": eng.run(d["x_val"]), "test": eng.run(d["x_test"]),
            "ref": eng.run(np.ascontiguousarray(proxies)), "n_fit": len(fi),
            "ood": {k: eng.run(d[f"ood__{k}"]) for k in meta["ood_sets"]},
            "base": {k: b[k] for k in b.files}}


def variant_scores(m: dict, kw: dict) -> dict[str, np.ndarray]:
    fi, ci = split_indices(len(m["val"]), DEFAULT_FIT_FRACTION, m["seed"])
    n = m["n_fit"]
    groups = [np.arange(i * n, (i + 1) * n) for i in range(len(DEFAULT_PROXY_KINDS))]
    use, _ = check_validation_size(len(m["val"]), m["names"], None, 0.05, DEFAULT_FIT_FRACTION)
    scorer, _ = fit_scorer(m["val"][fi], m["val"][ci], m["names"], reference_features=m["ref"],
                           reference_groups=groups, exclude=m["unstable"], use=use,
                           seed=m["seed"], combine="fisher", **kw)
    return {"test": _finite(scorer.score(m["test"])),
            **{k: _finite(scorer.score(f)) for k, f in m["ood"].items()}}


def main(art: Path) -> None:
    rows: dict[str, list] = {v: [] for v in VARIANTS}
    inv: dict[str, list] = {v: [] for v in VARIANTS}
    pairs: dict[str, list] = {v: [] for v in VARIANTS}
    for home in sorted(p for p in art.iterdir() if (p / "bundle").is_dir()):
        m = model_features(home)
        sets = [k for k in m["sets"] if k not in TRIVIAL]
        best = max(max(v, 1 - v) for v in (
            np.mean([auroc(scores_in=_finite(m["test"][:, j]),
                           scores_out=_finite(m["ood"][k][:, j])) for k in sets])
            for j in range(len(m["names"]))))
        base = {k: max(auroc(scores_in=m["base"][f"test__{b}"], scores_out=m["base"][f"{k}__{b}"])
                       for b in BASELINES) for k in m["sets"]}
        for v, kw in VARIANTS.items():
            s = variant_scores(m, kw)
            a = {k: auroc(scores_in=s["test"], scores_out=s[k]) for k in m["sets"]}
            rows[v].append((m["id"], m["family"], float(np.mean([a[k] for k in sets])), best))
            pairs[v] += list(a.values())
            inv[v] += [f"{m['id']}:{k} {a[k]:.3f}" for k in m["sets"]
                       if base[k] >= 0.8 and a[k] < 0.6]
        print(m["id"], flush=True)
    fams = sorted({r[1] for r in rows[next(iter(VARIANTS))]})

    def fam_mean(v: str, fs: list[str]) -> float:
        return float(np.mean([r[2] for r in rows[v] if r[1] in fs]))

    print(f"{'variant':18s} within  pairs  inv  " + " ".join(f"{f:>8s}" for f in fams))
    for v in VARIANTS:
        within = np.mean([r[2] - r[3] >= -MARGIN for r in rows[v]])
        print(f"{v:18s} {within:.3f} {np.mean(pairs[v]):.4f} {len(inv[v]):3d}  "
              + " ".join(f"{fam_mean(v, [f]):8.3f}" for f in fams))
    with_all = max(VARIANTS, key=lambda v: fam_mean(v, fams))
    print(f"chosen on every family: {with_all}")
    for f in fams:
        without = max(VARIANTS, key=lambda v: fam_mean(v, [g for g in fams if g != f]))
        print(f"  without {f}: {without}, gap on {f} "
              f"{fam_mean(without, [f]) - fam_mean(with_all, [f]):+.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
