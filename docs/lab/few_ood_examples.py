"""Lab script (issue 19, 2026-12-07): does the selection find each model's signal when the user
passes a few OOD examples (``calibrate(..., x_ood=)``) of *one* kind?

    python benchmarks/detection.py --save-artifacts ART --overwrite   # once (about 15 min)
    python docs/lab/few_ood_examples.py ART --n 20 --out FILE.json    # about 3 min

For every model of the saved suite and every one of its OOD sets ``k`` (the trivially far ones
left out): ``n`` rows of ``k`` are the reference set of the selection (the rest of the
calibration as ``calibrate()`` does it: same split, seed, Fisher, default minor tail), and the
score is measured on the model's *other* OOD sets only, so the examples never overlap what is
measured. Per model, issue 19's per-model test on those other sets: the calibrated mean AUROC
against the best single feature's (one direction per feature, picked in hindsight on the same
sets), averaged over ``k``; beside it the default calibration (synthetic outliers) on the same
sets. Also reported: the AUROC on the rows of ``k`` itself that were not passed (the kind the user
gave examples of), with ``x_ood`` and with the default; and a third way, the examples as one more
reference kind beside the synthetic outliers (``x_ood_and_proxies``: no kind may lose).
Exploratory: a lab measurement, not the suite's claim.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from oodguard.calibration.calibrate import (
    DEFAULT_FIT_FRACTION,
    check_validation_size,
    fit_scorer,
    split_indices,
)
from oodguard.calibration.detection_metrics import auroc

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _detection_report import MARGIN, TRIVIAL  # noqa: E402
from tail_grid import _finite, model_features  # noqa: E402


def scores(m: dict, ref: np.ndarray, groups: list[np.ndarray] | None) -> dict[str, np.ndarray]:
    fi, ci = split_indices(len(m["val"]), DEFAULT_FIT_FRACTION, m["seed"])
    use, _ = check_validation_size(len(m["val"]), m["names"], None, 0.05, DEFAULT_FIT_FRACTION)
    sc, _ = fit_scorer(m["val"][fi], m["val"][ci], m["names"], reference_features=ref,
                       reference_groups=groups, exclude=m["unstable"], use=use, seed=m["seed"],
                       combine="fisher")
    return {"test": _finite(sc.score(m["test"])),
            **{k: _finite(sc.score(f)) for k, f in m["ood"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("art", type=Path)
    p.add_argument("--n", type=int, default=20, help="OOD examples passed as x_ood")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    rows = []
    for home in sorted(q for q in a.art.iterdir() if (q / "bundle").is_dir()):
        m = model_features(home)
        sets = [k for k in m["sets"] if k not in TRIVIAL]
        feat = np.array([[auroc(scores_in=_finite(m["test"][:, j]),
                                scores_out=_finite(m["ood"][k][:, j])) for k in sets]
                         for j in range(len(m["names"]))])  # [F, sets]
        n_fit = m["n_fit"]
        proxy_groups = [np.arange(i * n_fit, (i + 1) * n_fit)
                        for i in range(len(m["ref"]) // n_fit)]
        default = scores(m, m["ref"], proxy_groups)
        d_auc = np.array([auroc(scores_in=default["test"], scores_out=default[k]) for k in sets])
        rng = np.random.default_rng(m["seed"])
        per_k = []
        for i, k in enumerate(sets):
            rest = [j for j in range(len(sets)) if j != i]
            pick = rng.choice(len(m["ood"][k]), size=min(a.n, len(m["ood"][k])), replace=False)
            s = scores(m, m["ood"][k][np.sort(pick)], None)
            got = float(np.mean([auroc(scores_in=s["test"], scores_out=s[sets[j]])
                                 for j in rest]))
            f = feat[:, rest].mean(axis=1)
            best = float(np.max(np.maximum(f, 1 - f)))
            left = np.setdiff1d(np.arange(len(m["ood"][k])), pick)  # the kind given, unseen rows
            same = auroc(scores_in=s["test"], scores_out=s[k][left])
            same_default = auroc(scores_in=default["test"], scores_out=default[k][left])
            # the examples as one more kind beside the synthetic outliers (no kind may lose)
            both = scores(m, np.concatenate([m["ref"], m["ood"][k][np.sort(pick)]]),
                          [*proxy_groups, np.arange(len(m["ref"]), len(m["ref"]) + len(pick))])
            both_other = float(np.mean([auroc(scores_in=both["test"], scores_out=both[sets[j]])
                                        for j in rest]))
            both_same = auroc(scores_in=both["test"], scores_out=both[k][left])
            per_k.append({"example_set": k, "x_ood": got, "default": float(d_auc[rest].mean()),
                          "best_feature": best, "same_kind_x_ood": float(same),
                          "same_kind_default": float(same_default),
                          "x_ood_and_proxies": both_other,
                          "same_kind_x_ood_and_proxies": float(both_same)})
        r = {"model_id": m["id"], "family": m["family"],
             **{x: float(np.mean([q[x] for q in per_k])) for x in
                ("x_ood", "default", "best_feature", "same_kind_x_ood", "same_kind_default",
                 "x_ood_and_proxies", "same_kind_x_ood_and_proxies")},
             "per_set": per_k}
        rows.append(r)
        print(f"{m['id']:36s} x_ood {r['x_ood']:.3f} default {r['default']:.3f} "
              f"best {r['best_feature']:.3f}", flush=True)
    summary = {}
    for fam in [None, *sorted({r["family"] for r in rows})]:
        rs = [r for r in rows if fam is None or r["family"] == fam]
        summary[fam or "all"] = {
            x: float(np.mean([r[x] - r["best_feature"] >= -MARGIN for r in rs]))
            for x in ("x_ood", "default", "x_ood_and_proxies")} | {
            f"mean_{x}": float(np.mean([r[x] for r in rs])) for x in (
                "x_ood", "default", "same_kind_x_ood", "same_kind_default", "x_ood_and_proxies",
                "same_kind_x_ood_and_proxies")}
    print(json.dumps(summary, indent=1))
    a.out.write_text(json.dumps({"n": a.n, "summary": summary, "models": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
