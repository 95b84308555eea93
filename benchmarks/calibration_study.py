"""How the calibrated combination is chosen: variants of selection and combination against the
best classic baseline, over several autoencoders and OOD sets.

For each model the in-distribution validation set is split as :func:`calibrate` splits it
(``fit_fraction=0.4``, seeded); synthetic outliers are made from the fit part only; each
variant is fitted with :func:`fit_scorer` on the same features, and evaluated on held-out
in-distribution test data and every OOD set: AUROC of the combined score, AUROC of each classic
baseline (``recon_error``, ``latent_mahalanobis``, ``latent_knn`` as raw scores, larger = OOD),
and the held-out FPR at ``alpha``.

Models: small MLP autoencoders trained here (seeded, CPU, a minute or two) on three domains —
digits 0–4 (8×8 images), a 3-D manifold in 16-D (the tests' data) and 1-D smooth signals — with
several latent sizes and both corruptions, or the benchmark suite's artifacts
(``--artifacts DIR``: ``DIR/<model>/bundle`` + ``data.npz``, read-only; bundles are copied).
Where a bundle lacks the in-graph ``latent_knn`` / ``latent_mahalanobis`` features, they are
computed here from ``z0`` for the models trained here (bank: the training codes), and are
absent for artifacts.

    python benchmarks/calibration_study.py --out results/calibration_study.json
    python benchmarks/calibration_study.py --artifacts /work/h5/artifacts --out ...

Not a pass/fail test: it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from oodguard.bundle import MODEL_FILE, read_bundle
from oodguard.calibration.calibrate import fit_scorer, split_indices
from oodguard.calibration.checks import unstable_features
from oodguard.calibration.detection_metrics import auroc
from oodguard.calibration.selection import DEFAULT_PROXY_KINDS, PROXY_KINDS, make_proxies
from oodguard.engine import Engine
from oodguard.features import FEATURE_NAMES
from oodguard.scoring import conformal_p_values

BASELINES = ("recon_error", "latent_mahalanobis", "latent_knn")
OLD_PROXIES = ("noise", "mixup", "permute")
ALPHA = 0.05

# name -> (proxy kinds or None for select="all", fit_scorer keyword arguments)
VARIANTS: dict[str, tuple[tuple[str, ...] | None, dict[str, Any]]] = {
    "old_default": (OLD_PROXIES, {"required": (), "keep_sign": (), "two_sided_margin": None}),
    "old+required": (OLD_PROXIES, {"keep_sign": (), "two_sided_margin": None}),
    "rich": (DEFAULT_PROXY_KINDS, {"required": (), "keep_sign": (), "two_sided_margin": None}),
    "rich+required": (DEFAULT_PROXY_KINDS, {"keep_sign": (), "two_sided_margin": None}),
    "rich+req+2s": (DEFAULT_PROXY_KINDS, {"keep_sign": ()}),
    "rich+req+2s+keepsign": (DEFAULT_PROXY_KINDS, {}),  # combined by max
    "rich+req+2s+keepsign cauchy": (DEFAULT_PROXY_KINDS, {"combine": "cauchy"}),
    # calibrate()'s default: fisher, minor tail DEFAULT_MINOR_TAIL
    "rich+req+2s+keepsign fisher": (DEFAULT_PROXY_KINDS, {"combine": "fisher"}),
    "fisher equal tails": (DEFAULT_PROXY_KINDS, {"combine": "fisher", "minor_tail": 0.5}),
    "fisher minor tail 0.35": (DEFAULT_PROXY_KINDS, {"combine": "fisher", "minor_tail": 0.35}),
    "fisher minor tail 0.3": (DEFAULT_PROXY_KINDS, {"combine": "fisher", "minor_tail": 0.3}),
    "fisher minor tail 0.25": (DEFAULT_PROXY_KINDS, {"combine": "fisher", "minor_tail": 0.25}),
    "fisher minor tail 0.2": (DEFAULT_PROXY_KINDS, {"combine": "fisher", "minor_tail": 0.2}),
    "fisher minor tail 0.15": (DEFAULT_PROXY_KINDS, {"combine": "fisher", "minor_tail": 0.15}),
    "fisher minor tail 0.1": (DEFAULT_PROXY_KINDS, {"combine": "fisher", "minor_tail": 0.1}),
    "fisher minor tail 0.05": (DEFAULT_PROXY_KINDS, {"combine": "fisher", "minor_tail": 0.05}),
    "fisher minor tail 0.02": (DEFAULT_PROXY_KINDS, {"combine": "fisher", "minor_tail": 0.02}),
    "cauchy minor tail 0.1": (DEFAULT_PROXY_KINDS, {"combine": "cauchy", "minor_tail": 0.1}),
    "old+req+2s+keepsign": (OLD_PROXIES, {}),
    "default + phase, shuffle_16, shuffle_64": (PROXY_KINDS, {"combine": "fisher"}),
    "default kinds, every feature": (DEFAULT_PROXY_KINDS, {"combine": "fisher",
                                                          "required": FEATURE_NAMES}),
    "all kinds, every feature": (PROXY_KINDS, {"combine": "fisher", "required": FEATURE_NAMES}),
    "all kinds, every feature, one-sided": (PROXY_KINDS, {"combine": "fisher",
                                                         "required": FEATURE_NAMES,
                                                         "two_sided_margin": None}),
    "baselines only, 2s max": (None, {"use": BASELINES}),
    "all features, 2s max": (None, {}),
}

SELECTED: list[str] = list(VARIANTS)  # the variants this run evaluates (--variants)


# -- data and models trained here ----------------------------------------------------------
def _signals(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0, 1, 64)
    f = rng.uniform(1, 4, (n, 1))
    ph = rng.uniform(0, 2 * np.pi, (n, 1))
    a = rng.uniform(0.2, 0.45, (n, 1))
    return (0.5 + a * np.sin(2 * np.pi * f * t + ph)).astype(np.float32)


def _common_ood(x: np.ndarray, rng: np.random.Generator, n: int = 300) -> dict[str, np.ndarray]:
    """Far and low-complexity OOD sets made from in-distribution test data ``x``."""
    d = x.shape[1]
    side = int(round(np.sqrt(d)))
    pick = x[rng.choice(len(x), n)]
    if side * side == d:  # images: 2-D gradients and 2-D blur
        yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
        ang = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        g = np.cos(ang) * xx + np.sin(ang) * yy
        g = (g - g.min(axis=(1, 2), keepdims=True)) / np.ptp(g, axis=(1, 2), keepdims=True)
        grad = (g * rng.uniform(0.3, 1.0, (n, 1, 1))).reshape(n, d)
        im = pick.reshape(n, side, side)
        pad = np.pad(im, ((0, 0), (1, 1), (1, 1)), mode="edge")
        blur = sum(pad[:, i:i + side, j:j + side] for i in range(3) for j in range(3)) / 9.0
        blur = blur.reshape(n, d)
    else:
        grad = np.linspace(0, 1, d)[None, :] * rng.uniform(0.3, 1.0, (n, 1))
        blur = np.cumsum(pick - pick.mean(1, keepdims=True), axis=1) / d + 0.5
    m = pick.mean(1, keepdims=True)
    return {
        "uniform_noise": rng.uniform(0, 1, (n, d)),
        "smooth_gradients": grad,
        "dark": pick * 0.15,
        "low_contrast": m + (pick - m) * 0.2,
        "blurred": blur,
        "flat_gray": np.full((n, d), 0.5) + rng.normal(0, 0.01, (n, d)),
    }


def _domain(name: str, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    if name == "digits":
        from oodguard.calibration.data import load_digits_data

        dd = load_digits_data(seed=seed)
        train, val, test = dd.train, dd.val, dd.test
        ood = {k: v[1] for k, v in dd.ood.items()}
    elif name == "manifold":
        basis = np.random.default_rng(1234).normal(size=(3, 16))

        def gen(n: int, shift: float = 0.0) -> np.ndarray:
            z = rng.normal(size=(n, 3)) + shift
            return (1.0 / (1.0 + np.exp(-(z @ basis) * 0.7))).astype(np.float32)

        train, val, test = gen(800), gen(700), gen(600)
        ood = {"shifted_manifold": gen(300, 1.5)}
    else:
        train, val, test = _signals(800, rng), _signals(700, rng), _signals(600, rng)
        t = np.linspace(0, 1, 64)
        sq = 0.5 + 0.35 * np.sign(np.sin(2 * np.pi * rng.uniform(1, 4, (300, 1)) * t))
        ood = {"square_waves": sq, "fast_sines": 0.5 + 0.3 * np.sin(
            2 * np.pi * rng.uniform(8, 12, (300, 1)) * t + rng.uniform(0, 6, (300, 1)))}
    ood.update(_common_ood(test, rng))
    ood = {k: np.clip(v, 0, 1).astype(np.float32) for k, v in ood.items()}
    return {"train": train, "val": val, "test": test, "ood": ood}


MODELS = {  # name -> (domain, train_autoencoder keyword arguments)
    "digits_l8_noise": ("digits", {"latent": 8, "hidden": 32}),
    "digits_l4_noise": ("digits", {"latent": 4, "hidden": 32}),
    "digits_l16_mask": ("digits", {"latent": 16, "hidden": 64, "corruption": "mask"}),
    "digits_l8_short": ("digits", {"latent": 8, "hidden": 32, "epochs": 30}),
    "manifold_l3": ("manifold", {"latent": 3, "hidden": 16}),
    "manifold_l6_mask": ("manifold", {"latent": 6, "hidden": 32, "corruption": "mask"}),
    "signals_l4": ("signals", {"latent": 4, "hidden": 32}),
    "signals_l8_mask": ("signals", {"latent": 8, "hidden": 32, "corruption": "mask"}),
}


def _latent_extra(model: Any, train: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``latent_knn`` (5th neighbour) and ``latent_mahalanobis`` of ``z0`` against the
    training codes, for bundles exported without them."""
    import torch

    def enc(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.encode(torch.as_tensor(x, dtype=torch.float32)).double().numpy()

    bank = enc(train)
    mu = bank.mean(0)
    cov = np.cov(bank, rowvar=False) + 1e-6 * np.eye(bank.shape[1])
    prec = np.linalg.inv(cov)

    def extra(x: np.ndarray) -> np.ndarray:
        z = enc(x)
        d2 = ((z[:, None, :] - bank[None]) ** 2).sum(-1)
        knn = np.sqrt(np.sort(d2, axis=1)[:, 4])
        c = z - mu
        return np.column_stack([knn, np.sqrt(np.einsum("ij,jk,ik->i", c, prec, c))])

    return extra


# -- evaluation ----------------------------------------------------------------------------
def evaluate(
    name: str, bundle: Path, val: np.ndarray, test: np.ndarray, ood: dict[str, np.ndarray],
    extra: Callable[[np.ndarray], np.ndarray] | None, seed: int = 0,
    baseline_scores: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    src = read_bundle(bundle)
    engine = Engine(src.files[MODEL_FILE], src.manifest, providers="cpu")
    names = list(src.manifest.feature_names)
    add = [n for n in ("latent_knn", "latent_mahalanobis") if n not in names]
    if extra is None:
        add = []

    def feats(x: np.ndarray) -> np.ndarray:
        f = engine.run(np.ascontiguousarray(x, dtype=np.float32)).astype(np.float64)
        return np.column_stack([f, extra(x)]) if add and extra is not None else f

    all_names = names + add
    fv, ft = feats(val), feats(test)
    fo = {k: feats(v) for k, v in ood.items()}
    fit_idx, cal_idx = split_indices(len(val), 0.4, seed)
    x_fit = val[fit_idx]
    proxies = make_proxies(x_fit, kinds=PROXY_KINDS, seed=seed)
    fp = feats(proxies)
    nf = len(fit_idx)
    kind_rows = {k: np.arange(i * nf, (i + 1) * nf) for i, k in enumerate(PROXY_KINDS)}
    exclude = unstable_features(getattr(src.manifest, "dynamics", None))
    base = {b: {k: auroc(scores_in=ft[:, all_names.index(b)],
                         scores_out=f[:, all_names.index(b)]) for k, f in fo.items()}
            for b in BASELINES if b in all_names}
    if baseline_scores is not None:  # the suite's own baseline scores: <set>__<recon|maha|knn>
        short = {"recon_error": "recon", "latent_mahalanobis": "maha", "latent_knn": "knn"}
        for b, k in short.items():
            if f"test__{k}" in baseline_scores:
                base[b] = {s: auroc(scores_in=baseline_scores[f"test__{k}"],
                                    scores_out=baseline_scores[f"{s}__{k}"]) for s in fo}
    out: dict[str, Any] = {"model": name, "features": all_names, "baselines": base,
                           "excluded": exclude, "variants": {}}
    # issue 19's oracle: the best single feature's mean AUROC over the model's OOD sets (one
    # direction per feature and model, picked in hindsight), trivially far sets left out
    sets = [k for k in fo if not k.startswith("trivial_")] or list(fo)
    means = {}
    for j, f in enumerate(all_names):
        m = float(np.mean([auroc(scores_in=np.nan_to_num(ft[:, j], nan=np.inf),
                                 scores_out=np.nan_to_num(fo[k][:, j], nan=np.inf))
                           for k in sets]))
        means[f] = max(m, 1.0 - m)
    out["best_feature"] = max(means, key=means.__getitem__)
    out["best_feature_mean"] = means[out["best_feature"]]
    out["family_sets"] = sets
    for vname, (kinds, kw) in VARIANTS.items():
        if vname not in SELECTED:
            continue
        ref = groups = None
        if kinds is not None:
            rows = np.concatenate([kind_rows[k] for k in kinds])
            ref = fp[rows]
            groups = [np.arange(i * nf, (i + 1) * nf) for i in range(len(kinds))]
        if "use" in kw:
            kw = {**kw, "use": [n for n in kw["use"] if n in all_names]}
        scorer, info = fit_scorer(fv[fit_idx], fv[cal_idx], all_names, alpha=ALPHA,
                                  reference_features=ref, reference_groups=groups,
                                  exclude=exclude, seed=seed, **kw)
        s_in = scorer.score(ft)
        # The guarantee is marginal over the calibration draw: with the fit (and selection)
        # fixed, re-partition calibration ∪ test rows 200 times and average the test FPR.
        pooled = np.concatenate([scorer.score(fv[cal_idx]), s_in])
        rs = np.random.default_rng(seed)
        fprs = []
        for _ in range(200):
            perm = rs.permutation(len(pooled))
            c, t = np.sort(pooled[perm[: len(cal_idx)]]), pooled[perm[len(cal_idx):]]
            fprs.append(float((conformal_p_values(c, t) <= ALPHA).mean()))
        out["variants"][vname] = {
            "fpr_resampled_mean": float(np.mean(fprs)),
            "fpr_resampled_sd": float(np.std(fprs)),
            "used": [all_names[i] for i in scorer.used],
            "direction": scorer.direction.tolist(),
            "fpr": float((scorer.p_value(s_in) <= ALPHA).mean()),
            "auroc": {k: auroc(scores_in=s_in, scores_out=scorer.score(f))
                      for k, f in fo.items()},
            "warnings": info.get("warnings", []),
        }
    return out


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for vname in SELECTED:
        gaps, comb, best, fprs, rfprs = [], [], [], [], []
        for r in results:
            v = r["variants"][vname]
            fprs.append(v["fpr"])
            rfprs.append(v["fpr_resampled_mean"])
            for k, a in v["auroc"].items():
                b = max(r["baselines"][x][k] for x in r["baselines"])
                gaps.append(a - b)
                comb.append(a)
                best.append(b)
        g = np.asarray(gaps)
        per_model = {r["model"]: float(np.mean([r["variants"][vname]["auroc"][k]
                                                for k in r["family_sets"]]))
                     - r["best_feature_mean"] for r in results if "best_feature_mean" in r}
        fams = sorted({m.split("-")[0] for m in per_model})
        summary[vname] = {
            "models_within_0.02_of_best_feature": round(float(np.mean(
                [v >= -0.02 for v in per_model.values()])), 3) if per_model else None,
            "model_gap_by_family": {f: round(float(np.mean([v for m, v in per_model.items()
                                                            if m.split("-")[0] == f])), 4)
                                    for f in fams},
            "pairs": len(g),
            "within_0.02": round(float((g >= -0.02).mean()), 3),
            "mean_auroc": round(float(np.mean(comb)), 4),
            "best_baseline_mean": round(float(np.mean(best)), 4),
            "mean_gap": round(float(g.mean()), 4),
            "worst_gap": round(float(g.min()), 4),
            "fpr_range": [round(min(fprs), 3), round(max(fprs), 3)],
            "fpr_resampled_range": [round(min(rfprs), 3), round(max(rfprs), 3)],
        }
    return summary


def _train_and_export(name: str, tmp: Path, seed: int) -> tuple[Path, dict[str, Any], Any]:
    import torch

    from oodguard.demo.train import train_autoencoder
    from oodguard.export import export_bundle

    domain, kw = MODELS[name]
    data = _domain(domain, seed)
    torch.manual_seed(seed)
    model = train_autoencoder(data["train"], **{"epochs": 150, **kw}, seed=seed, progress=False)
    path = tmp / name
    export_bundle(path, model=model, x_train=data["train"], steps=16, seed=seed)
    return path, data, model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, help="benchmark suite artifacts (read-only)")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    SELECTED[:] = args.variants
    logging.basicConfig(level=logging.ERROR)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if args.artifacts:
            for d in sorted(p for p in args.artifacts.iterdir() if (p / "data.npz").exists()):
                try:  # artifacts may be rewritten while we read: skip what is not complete
                    bundle = tmp / d.name
                    shutil.copytree(d / "bundle", bundle)
                    with np.load(d / "data.npz") as z:
                        ood = {k[5:]: z[k] for k in z.files if k.startswith("ood__")}
                        val, test = z["x_val"], z["x_test"]
                    bl = None
                    if (d / "baselines.npz").exists():
                        with np.load(d / "baselines.npz") as z:
                            bl = {k: z[k] for k in z.files}
                    results.append(evaluate(d.name, bundle, val, test, ood, None, args.seed, bl))
                except Exception as err:  # one broken artifact must not stop the study
                    print(f"{d.name}: skipped ({type(err).__name__}: {err})", file=sys.stderr)
                    continue
                print(f"{d.name}: done", file=sys.stderr, flush=True)
                if args.out:  # partial results survive an interrupted run
                    args.out.write_text(json.dumps({"results": results}, indent=1))
        else:
            for name in args.models:
                path, data, model = _train_and_export(name, tmp, args.seed)
                results.append(evaluate(name, path, data["val"], data["test"], data["ood"],
                                        _latent_extra(model, data["train"]), args.seed))
                print(f"{name}: done", file=sys.stderr, flush=True)
                if args.out:  # partial results survive an interrupted run
                    args.out.write_text(json.dumps({"results": results}, indent=1))
    summary = summarise(results)
    print(f"{'variant':28s} {'pairs':>5s} {'≤0.02':>6s} {'mean':>7s} {'best_bl':>7s} "
          f"{'gap':>7s} {'worst':>7s}  fpr range")
    for v, s in summary.items():
        print(f"{v:28s} models within 0.02 of the best feature: "
              f"{s['models_within_0.02_of_best_feature']}; mean gap by family "
              f"{s['model_gap_by_family']}")
        print(f"{v:28s} {s['pairs']:5d} {s['within_0.02']:6.3f} {s['mean_auroc']:7.4f} "
              f"{s['best_baseline_mean']:7.4f} {s['mean_gap']:+7.4f} {s['worst_gap']:+7.4f}  "
              f"{s['fpr_range']} resampled {s['fpr_resampled_range']}")
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
