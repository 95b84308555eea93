"""Lab script (issue 20, 2026-12-07): what the classifier guard's autoencoder should learn, and
which features its calibration must keep, measured before the default was changed.

    python docs/lab/classifier_guard_variants.py [MODEL ...] --out FILE.json   # about 8 min

Per classifier (``benchmarks/classifier_ood.py``'s four, trained as there, and five held out of
the choice: a CNN on digits 5-9, the digits MLP on another split, an MLP on two wine classes, the
tabular MLP on another split, an MLP on the glyphs) it fits two guards with ``oodguard.fit``:
the autoencoder on the classifier's embeddings (``autoencoder_on="layer"``) and on its inputs
(no classifier). The features of both are joined (the second's prefixed ``input_``), and each
variant is calibrated from them the way ``calibrate()`` does (same split, the same synthetic
outliers, Fisher's combination, the default minor tail) with its own candidates and required
features. Reported: the mean AUROC over the model's OOD sets and the held-out FPR at 0.05.
Exploratory: the claims in docs/fit.md come from the benchmark run, not from this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import classifier_ood as co  # noqa: E402
from _classifiers import build  # noqa: E402

BASE = ("recon_error", "latent_knn", "latent_mahalanobis", "embedding_mahalanobis")


def digits_5_9(seed: int) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32)[:, None], d.target
    rng = np.random.default_rng(seed)
    ind = np.flatnonzero(y >= 5)
    tr, va, te = (ind[s] for s in co._split(len(ind), (0.5, 0.3), rng))
    noise = rng.uniform(0, 1, (300, *x.shape[1:])).astype(np.float32)
    return {"train": (x[tr], y[tr] - 5), "val": x[va], "test": x[te],
            "ood": {"digits_0_4": ("near", x[y <= 4]), "inverted": ("far", 1.0 - x[te]),
                    "uniform_noise": ("far", noise)}}


def wine(seed: int) -> dict[str, Any]:
    from sklearn.datasets import load_wine

    d = load_wine()
    rng = np.random.default_rng(seed)
    x_in, y_in, x_out = d.data[d.target <= 1], d.target[d.target <= 1], d.data[d.target == 2]
    tr, va, te = co._split(len(x_in), (0.25, 0.55), rng)
    mu, sd = x_in[tr].mean(0), x_in[tr].std(0) + 1e-8
    z = ((x_in - mu) / sd).astype(np.float32)
    lo, hi = z[tr].min(0), z[tr].max(0)
    scr = np.stack([rng.permutation(z[te][:, j]) for j in range(z.shape[1])], axis=1)
    return {"train": (z[tr], y_in[tr]), "val": z[va], "test": z[te],
            "ood": {"class_2": ("near", ((x_out - mu) / sd).astype(np.float32)),
                    "scrambled": ("near", scr.astype(np.float32)),
                    "uniform_noise": ("far", rng.uniform(lo, hi, (200, z.shape[1])).astype(
                        np.float32))}}


RUNS = {  # name: (data, classifier spec, epochs, held out of the choice)
    "digits-mlp": (lambda: co.digits_data(0, False), {"kind": "mlp", "dim": 64, "classes": 5},
                   60, False),
    "digits-cnn": (lambda: co.digits_data(0, True), {"kind": "cnn", "size": 8, "classes": 5},
                   40, False),
    "glyphs-cnn": (lambda: co.glyph_data(0, 3000), {"kind": "cnn", "size": 28, "classes": 26},
                   15, False),
    "tabular-mlp": (lambda: co.tabular_data(0), {"kind": "mlp", "dim": 30, "classes": 2}, 100,
                    False),
    "digits59-cnn": (lambda: digits_5_9(1), {"kind": "cnn", "size": 8, "classes": 5}, 40, True),
    "digits-mlp-s1": (lambda: co.digits_data(1, False), {"kind": "mlp", "dim": 64, "classes": 5},
                      60, True),
    "wine-mlp": (lambda: wine(1), {"kind": "mlp", "dim": 13, "classes": 2}, 100, True),
    "tabular-mlp-s1": (lambda: co.tabular_data(1), {"kind": "mlp", "dim": 30, "classes": 2}, 100,
                       True),
    "glyphs-mlp": (lambda: co.glyph_data(1, 3000), {"kind": "mlp", "dim": 784, "classes": 26},
                   15, True),
}


def variants(layer_names: list[str], input_names: list[str]) -> dict[str, dict[str, Any]]:
    """Candidates (None: all joined features) and required features of each variant."""
    inp = ["input_" + n for n in input_names]
    clf = ["msp", "energy", "embedding_mahalanobis"]
    return {
        "layer AE, 4 baselines (before)": {"use": layer_names, "required": BASE},
        "layer AE, recon + embedding distance": {
            "use": layer_names, "required": ("recon_error", "embedding_mahalanobis")},
        "input AE alone (fit without the classifier)": {
            "use": inp, "required": ["input_" + b for b in BASE]},
        "input AE + classifier, 4 baselines": {
            "use": [*inp, *clf], "required": [*("input_" + b for b in BASE[:3]),
                                              "embedding_mahalanobis"]},
        "input AE + classifier, recon + embedding distance (now the default)": {
            "use": [*inp, *clf], "required": ("input_recon_error", "embedding_mahalanobis")},
        "both AEs + classifier, all baselines": {
            "use": None, "required": [*BASE, *("input_" + b for b in BASE[:3])]},
        "both AEs + classifier, recon (both) + embedding distance": {
            "use": None, "required": (*BASE, "input_recon_error")},
    }


def run_model(name: str) -> dict[str, Any]:
    import torch

    import oodguard
    from oodguard.calibration import auroc
    from oodguard.calibration.calibrate import DEFAULT_FIT_FRACTION, fit_scorer, split_indices
    from oodguard.calibration.checks import unstable_features
    from oodguard.calibration.selection import DEFAULT_PROXY_KINDS, make_proxies

    data_fn, spec, epochs, held_out = RUNS[name]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    data = data_fn()
    x_tr, y_tr = data["train"]
    clf = co.train_classifier(build(spec), x_tr, y_tr, epochs=epochs, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        gl = oodguard.fit(x_tr, data["val"], out=Path(tmp) / "layer", model=clf, layer="body",
                          autoencoder_on="layer", seed=0, registry=None, progress=False)
        gi = oodguard.fit(x_tr, data["val"], out=Path(tmp) / "input", seed=0, registry=None,
                          progress=False)
        names = [*gl.feature_names, *("input_" + n for n in gi.feature_names)]

        def features(x: np.ndarray) -> np.ndarray:
            x = np.ascontiguousarray(x, dtype=np.float32)
            return np.hstack([gl.engine.run(x), gi.engine.run(x)])

        fv = features(data["val"])
        fit_idx, cal_idx = split_indices(len(fv), DEFAULT_FIT_FRACTION, 0)
        ref = features(make_proxies(data["val"][fit_idx], kinds=DEFAULT_PROXY_KINDS, seed=0))
        n = len(fit_idx)
        groups = [np.arange(i * n, (i + 1) * n) for i in range(len(DEFAULT_PROXY_KINDS))]
        unstable = {**unstable_features(gl.manifest.dynamics),
                    **{"input_" + k: v for k, v in unstable_features(
                        gi.manifest.dynamics).items()}}
        f_test = features(data["test"])
        f_ood = {o: features(x) for o, (_, x) in data["ood"].items()}
        out: dict[str, Any] = {"held_out": held_out, "variants": {}}
        keep_sign = [*BASE, *("input_" + b for b in BASE[:3])]
        for v, kw in variants(list(gl.feature_names), list(gi.feature_names)).items():
            sc, _ = fit_scorer(fv[fit_idx], fv[cal_idx], names, reference_features=ref,
                               reference_groups=groups, combine="fisher", use=kw["use"],
                               exclude=unstable, required=kw["required"], keep_sign=keep_sign,
                               seed=0)
            s_in = sc.score(f_test)
            au = {o: float(auroc(scores_in=s_in, scores_out=sc.score(f))) for o, f in f_ood.items()}
            out["variants"][v] = {"mean_auroc": float(np.mean(list(au.values()))), "ood": au,
                                  "fpr_at_alpha": float((s_in > sc.threshold).mean()),
                                  "used": [sc.feature_names[i] for i in sc.used]}
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=[], help=f"some of {list(RUNS)}; default all")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if set(a.models) - set(RUNS):
        p.error(f"unknown models {sorted(set(a.models) - set(RUNS))}; choose from {list(RUNS)}")
    import torch

    torch.set_num_threads(1)
    doc: dict[str, Any] = {"models": {}}
    for name in a.models or list(RUNS):
        doc["models"][name] = run_model(name)
        print(name, {v: round(r["mean_auroc"], 3)
                     for v, r in doc["models"][name]["variants"].items()}, flush=True)
    vs = list(next(iter(doc["models"].values()))["variants"])
    for held in (False, True):
        ms = [m for m in doc["models"].values() if m["held_out"] == held]
        if ms:
            doc["mean_held_out" if held else "mean_benchmark"] = {
                v: float(np.mean([m["variants"][v]["mean_auroc"] for m in ms])) for v in vs}
    print(json.dumps({k: v for k, v in doc.items() if k != "models"}, indent=1))
    a.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
