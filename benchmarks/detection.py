"""Public OOD detection benchmark: many small autoencoders, near / far / low-complexity OOD sets.

Every model (data family × architecture × training recipe × latent size × seed, see
:func:`plan`) is trained here in seconds, exported with DEFAULT settings through
``oodguard.export.export_bundle``, calibrated through ``oodguard.calibration.calibrate(bundle,
x_val, alpha)`` and scored by ``oodguard.Guard.load(...).check(...)`` — so the benchmark
measures whatever the public API does today. Per (model, OOD set) it records AUROC and FPR95 of
the calibrated combined score, of every feature in the bundle's manifest (as given and in its
best direction), and of baselines computed outside the graph: reconstruction error, latent
Mahalanobis (Ledoit–Wolf on training codes), latent kNN (k = 5), the paper's mean attractor
distance (a graph feature) and PyOD's ``AutoEncoder`` trained on the same data. Per model: the
held-out in-distribution FPR at ``alpha`` with its exact binomial 99% interval and the features
calibration selected. Failures of export or calibration are results, not crashes.

    python benchmarks/detection.py --quick
    python benchmarks/detection.py --save-artifacts artifacts/ --overwrite

Scores that come out NaN are counted as +inf (flagged) and the count is recorded.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine_info, write_json  # noqa: E402
from _detection_data import Family, add_trivial, load_family  # noqa: E402
from _detection_models import (  # noqa: E402
    RECIPES,
    ModelSpec,
    PaperScore,
    baselines,
    build,
    pyod_scores,
    train,
)
from _detection_report import BASELINES, _failure, plot, print_report, summarise  # noqa: E402
from _detection_rules import rule_scores  # noqa: E402

EPOCHS = {"digits": 100, "cancer": 200, "wine": 200, "patches": 30, "signals": 40,
          "natural": 30, "glyphs": 20}


def plan(mode: str) -> list[ModelSpec]:
    """The model set: ``tiny`` (smoke test), ``quick`` (< 5 min) or ``full``."""
    specs: list[ModelSpec] = []

    def add(fam: str, arch: str, recipes: tuple[str, ...], latents: tuple[int, ...],
            seeds: tuple[int, ...], scale: float = 1.0) -> None:
        for seed in seeds:
            for latent in latents:
                for r in recipes:
                    specs.append(ModelSpec(fam, arch, r, latent, seed,
                                           max(1, int(EPOCHS[fam] * scale))))

    if mode == "tiny":
        add("digits", "mlp", ("wd_denoise",), (8,), (0,), 0.05)
        add("signals", "mlp", ("mask",), (8,), (0,), 0.05)
        add("natural", "mlp", ("wd_denoise",), (16,), (0,), 0.05)
    elif mode == "quick":
        add("digits", "mlp", ("wd_denoise", "mask"), (8,), (0,))
        add("patches", "mlp", ("wd_denoise",), (16,), (0,))
        add("patches", "conv", ("none",), (32,), (0,))
        add("signals", "mlp", ("wd_denoise", "none"), (8,), (0,))
        add("cancer", "mlp", ("wd_denoise",), (4,), (0,))
        add("natural", "mlp", ("wd_denoise",), (16,), (0,))
        add("glyphs", "mlp", ("wd_denoise",), (16,), (0,))
    elif mode == "full":
        add("digits", "mlp", RECIPES, (8, 32), (0, 1))
        add("patches", "mlp", RECIPES, (16,), (0, 1))
        add("patches", "conv", RECIPES, (32,), (0, 1))
        add("signals", "mlp", RECIPES, (8,), (0, 1))
        add("cancer", "mlp", RECIPES, (4,), (0, 1))
        add("wine", "mlp", ("wd_denoise",), (4,), (0,))
        add("natural", "mlp", RECIPES, (16,), (0, 1))
        add("natural", "conv", RECIPES, (32,), (0, 1))
        add("glyphs", "mlp", RECIPES, (16,), (0, 1))
        add("glyphs", "conv", ("wd_denoise",), (32,), (0, 1))
    else:
        raise ValueError(f"mode must be tiny, quick or full. Got {mode!r}")
    return sorted(specs, key=lambda s: s.seed)  # stable: every family early in a partial run


def _metrics(s_in: np.ndarray, s_out: np.ndarray) -> dict[str, float]:
    from oodguard.calibration import auroc, fpr_at_tpr

    return {"auroc": round(auroc(scores_in=s_in, scores_out=s_out), 4),
            "fpr95": round(fpr_at_tpr(scores_in=s_in, scores_out=s_out), 4)}


def _finite(s: np.ndarray) -> tuple[np.ndarray, int]:
    s = np.asarray(s, dtype=np.float64)
    bad = int(np.isnan(s).sum())
    return np.where(np.isnan(s), np.inf, s), bad


def binomial_interval(k: int, n: int, level: float = 0.99) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for a binomial proportion ``k / n``."""
    from scipy.stats import beta

    a = (1.0 - level) / 2.0
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return lo, hi


def conformal_fpr_interval(n_cal: int, n_test: int, alpha: float,
                           level: float = 0.99) -> tuple[float, float]:
    """Where the held-out FPR of a split-conformal test lands with probability ``level`` when
    test and calibration data are exchangeable: the number of ``n_test`` test rows flagged is
    beta-binomial, ``BetaBinomial(n_test, l, n_cal + 1 − l)`` with ``l = ⌊alpha·(n_cal + 1)⌋``
    (the flagged fraction, given the calibration draw, is ``Beta(l, n_cal + 1 − l)``; ties
    only lower it). Unlike a binomial interval around the observed count, this counts the
    calibration draw's variation too — one calibration split moves every test row's verdict
    together."""
    from scipy.stats import betabinom

    ell = int(np.floor(alpha * (n_cal + 1) + 1e-9))
    if ell < 1:
        return 0.0, 0.0
    d = betabinom(n_test, ell, n_cal + 1 - ell)
    a = (1.0 - level) / 2.0
    return float(d.ppf(a)) / n_test, float(d.ppf(1.0 - a)) / n_test


def run_model(spec: ModelSpec, fam: Family, work: Path, *, alpha: float,
              artifacts: Path | None, use_pyod: bool, threads: int,
              fallback_atol: float | None = None) -> dict[str, Any]:
    """Train, export, calibrate and score one model; return its result record.

    With ``fallback_atol``, a model whose default export fails with an ``ExportError`` is
    exported again with ``parity_atol = parity_rtol = fallback_atol`` (recorded under
    ``export.fallback``) and scored; the summary keeps such models apart."""
    import torch

    from oodguard import Guard
    from oodguard.calibration import calibrate
    from oodguard.export import export_bundle

    t0 = time.perf_counter()
    rec: dict[str, Any] = {"model_id": spec.model_id, "family": spec.family, "arch": spec.arch,
                           "recipe": spec.recipe, "latent": spec.latent, "seed": spec.seed,
                           "epochs": spec.epochs, "n_train": len(fam.train),
                           "n_val": len(fam.val), "n_test": len(fam.test)}
    ood = add_trivial(fam, spec.seed)
    model = build(spec, fam.train.shape[1], fam.image_shape, fam.output)
    train(model, fam.train, spec.recipe, epochs=spec.epochs, seed=spec.seed)
    rec["train_s"] = round(time.perf_counter() - t0, 1)
    home = (artifacts / spec.model_id) if artifacts is not None else (work / spec.model_id)
    home.mkdir(parents=True, exist_ok=True)
    if artifacts is not None:
        arrays = {"x_val": fam.val, "x_test": fam.test,
                  **{f"ood__{k}": v for k, (_, v) in ood.items()}}
        np.savez_compressed(home / "data.npz", **arrays)  # type: ignore[arg-type]
    try:
        t = time.perf_counter()
        exp = export_bundle(home / "bundle", model=model, x_train=fam.train, seed=spec.seed,
                            overwrite=True)
        rec["export"] = {"ok": True, "seconds": round(time.perf_counter() - t, 1),
                         "attractors": int(len(exp.attractors.attractors))}
    except Exception as exc:  # a failure of the public API is a result
        rec["export"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                         "seconds": round(time.perf_counter() - t, 1)}
        if fallback_atol is None or type(exc).__name__ != "ExportError":
            _write_meta(home, rec, ood, artifacts)
            return rec
        try:  # the only non-default: a looser parity tolerance, recorded
            t = time.perf_counter()
            exp = export_bundle(home / "bundle", model=model, x_train=fam.train,
                                seed=spec.seed, overwrite=True, parity_atol=fallback_atol,
                                parity_rtol=fallback_atol)
            rec["export"]["fallback"] = {"ok": True, "parity_atol": fallback_atol,
                                         "parity_rtol": fallback_atol,
                                         "seconds": round(time.perf_counter() - t, 1),
                                         "attractors": int(len(exp.attractors.attractors))}
        except Exception as exc2:
            rec["export"]["fallback"] = {"ok": False, "error": f"{type(exc2).__name__}: {exc2}"}
            _write_meta(home, rec, ood, artifacts)
            return rec
    base = baselines(model, fam.train)
    paper = PaperScore(model, exp.attractors.attractors)
    rec["paper_attractors_merged"] = int(len(paper.attractors))
    sets = {"test": fam.test, **{k: v for k, (_, v) in ood.items()}}
    b_scores = {k: {**base.scores(v), "paper_cosine": paper.scores(v)} for k, v in sets.items()}
    if use_pyod:
        t = time.perf_counter()
        torch.manual_seed(spec.seed)
        p = pyod_scores(fam.train, sets, spec.seed)
        rec["pyod"] = {"ok": not isinstance(p, str), "seconds": round(time.perf_counter() - t, 1)}
        if isinstance(p, str):
            rec["pyod"]["error"] = p
        else:
            for k in sets:
                b_scores[k]["pyod_ae"] = p[k]
    try:
        t = time.perf_counter()
        cal = calibrate(home / "bundle", fam.val, alpha=alpha, seed=spec.seed,
                        out=work / spec.model_id / "calibrated")
        rec["calibration"] = {"ok": True, "seconds": round(time.perf_counter() - t, 1),
                              "selected": [cal.scorer.feature_names[i] for i in cal.scorer.used],
                              "direction": np.asarray(cal.scorer.direction).tolist(),
                              "dropped": dict(cal.dropped), "n_fit": cal.n_fit,
                              "n_cal": cal.n_cal}
    except Exception as exc:
        rec["calibration"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        _write_meta(home, rec, ood, artifacts, b_scores)
        return rec
    try:
        guard = Guard.load(cal.path, providers="cpu", registry=None, intra_op_threads=threads)
        checks = {k: guard.check(v) for k, v in sets.items()}
    except Exception as exc:
        rec["scoring"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        _write_meta(home, rec, ood, artifacts, b_scores)
        return rec
    names = list(guard.feature_names)
    rec["features"] = names
    try:
        rules, rec["rules"] = rule_scores(guard, cal.path, fam.val, sets,
                                          {k: c.features for k, c in checks.items()},
                                          alpha=alpha, seed=spec.seed)
    except Exception as exc:  # a candidate's failure is a result
        rules, rec["rules"] = {}, {"error": f"{type(exc).__name__}: {exc}"}
    # a two-sided (typicality) test per feature: distance from the validation median
    med = np.nanmedian(np.asarray(guard.check(fam.val).features, dtype=np.float64), axis=0)
    r_in = checks["test"]
    k_fp, n_in = int(r_in.is_ood.sum()), len(fam.test)
    lo, hi = binomial_interval(k_fp, n_in)
    e_lo, e_hi = conformal_fpr_interval(cal.n_cal, n_in, alpha)
    rec["in_distribution"] = {"n": n_in, "flagged": k_fp, "fpr_at_alpha": round(k_fp / n_in, 4),
                              "fpr_ci99": [round(lo, 4), round(hi, 4)],
                              "fpr_exchangeable_99": [round(e_lo, 4), round(e_hi, 4)]}
    s_in, nan_in = _finite(r_in.score)
    pairs = []
    for name, (kind, _) in ood.items():
        r = checks[name]
        s_out, nan_out = _finite(r.score)
        pair: dict[str, Any] = {"ood_set": name, "kind": kind, "n": len(s_out),
                                "combined": {**_metrics(s_in, s_out),
                                             "flagged_at_alpha": round(float(r.is_ood.mean()), 4)},
                                "nan_scores": nan_in + nan_out}
        for b in b_scores[name]:
            pair[b] = _metrics(b_scores["test"][b], b_scores[name][b])
        feats: dict[str, Any] = {}
        for j, f in enumerate(names):
            fi, _ = _finite(r_in.features[:, j])
            fo, _ = _finite(r.features[:, j])
            given = _metrics(fi, fo)
            flipped = _metrics(-fi, -fo)
            best = given if given["auroc"] >= flipped["auroc"] else flipped
            feats[f] = {"given": given, "best": best,
                        "best_direction": "higher" if best is given else "lower",
                        "two_sided": _metrics(np.abs(fi - med[j]), np.abs(fo - med[j]))}
        pair["features"] = feats
        pair["rules"] = {rl: _metrics(rules[rl]["test"], rules[rl][name]) for rl in rules}
        if "mean_attractor_distance" in feats:
            pair["mean_attractor_distance"] = feats["mean_attractor_distance"]["given"]
        best_b = max(BASELINES, key=lambda b: pair[b]["auroc"])
        pair["best_baseline"] = best_b
        pair["combined_minus_best_baseline"] = round(pair["combined"]["auroc"]
                                                     - pair[best_b]["auroc"], 4)
        pairs.append(pair)
    rec["pairs"] = pairs
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    _write_meta(home, rec, ood, artifacts, b_scores)
    return rec


def _write_meta(home: Path, rec: dict[str, Any], ood: dict[str, tuple[str, np.ndarray]],
                artifacts: Path | None,
                b_scores: dict[str, dict[str, np.ndarray]] | None = None) -> None:
    if artifacts is None:
        return
    meta = {k: rec[k] for k in ("model_id", "family", "arch", "recipe", "latent", "seed",
                                "epochs", "n_train", "n_val", "n_test")}
    meta["ood_sets"] = {k: kind for k, (kind, _) in ood.items()}
    meta["export"] = rec.get("export")
    meta["arrays"] = "data.npz: x_val (calibration), x_test (held-out in-distribution), " \
                     "ood__<set> (one per OOD set)"
    if b_scores is not None:  # baseline scores outside the graph, "<set>__<baseline>"
        flat = {f"{s}__{b}": v for s, d in b_scores.items() for b, v in d.items()}
        np.savez_compressed(home / "baselines.npz", **flat)  # type: ignore[arg-type]
        meta["baselines_file"] = "baselines.npz: <set>__<baseline> (set 'test' = x_test)"
    (home / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small model set (< 5 min)")
    ap.add_argument("--tiny", action="store_true", help="two models, a few epochs (smoke test)")
    ap.add_argument("--families", default="", help="comma list: only these data families")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detection.json"))
    ap.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    ap.add_argument("--save-artifacts", default=None, metavar="DIR",
                    help="write DIR/<model_id>/{bundle/, data.npz, meta.json, baselines.npz}")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace existing model folders under --save-artifacts")
    ap.add_argument("--no-pyod", action="store_true", help="skip PyOD's AutoEncoder")
    ap.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    ap.add_argument("--fallback-parity", type=float, default=None, metavar="TOL",
                    help="when the default export fails, export again with parity_atol = "
                         "parity_rtol = TOL and score it (kept apart in the summary)")
    ap.add_argument("--models", default="", help="regular expression: only matching model ids")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="train nothing: merge the models of earlier runs' JSON files (e.g. "
                         "two --models shards run side by side) into --out, table and plot")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out), args.alpha, args.plot)

    import torch

    torch.set_num_threads(args.threads)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    specs = plan(mode)
    if args.families:
        keep = set(args.families.split(","))
        specs = [s for s in specs if s.family in keep]
    if args.models:
        specs = [s for s in specs if re.search(args.models, s.model_id)]
    artifacts = Path(args.save_artifacts) if args.save_artifacts else None
    if artifacts is not None and not args.overwrite:
        taken = [s.model_id for s in specs if (artifacts / s.model_id).exists()]
        if taken:
            sys.exit(f"{artifacts} already holds {taken[:3]}{'…' if len(taken) > 3 else ''}; "
                     "pass --overwrite to replace them, or another --save-artifacts folder")
    use_pyod = not args.no_pyod
    if use_pyod:
        try:
            import pyod  # noqa: F401
        except ImportError:
            print("note: PyOD is not installed, its AutoEncoder is skipped "
                  "(pip install -r requirements/bench.txt)", flush=True)
            use_pyod = False
    out = Path(args.out)
    machine = machine_info()  # load average at the start
    families: dict[str, Family] = {}
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    print(f"detection benchmark ({mode}): {len(specs)} models, alpha={args.alpha}", flush=True)
    with tempfile.TemporaryDirectory(prefix="oodguard-detection-") as tmp:
        for i, spec in enumerate(specs, 1):
            if spec.family not in families:
                families[spec.family] = load_family(spec.family, seed=0)
            if artifacts is not None and (artifacts / spec.model_id).exists():
                shutil.rmtree(artifacts / spec.model_id)  # --overwrite was given
            rec = run_model(spec, families[spec.family], Path(tmp), alpha=args.alpha,
                            artifacts=artifacts, use_pyod=use_pyod, threads=args.threads,
                            fallback_atol=args.fallback_parity)
            results.append(rec)
            write_json(out, {"benchmark": "detection", "mode": mode, "complete": False,
                             "summary": summarise(results, args.alpha), "models": results})
            if "pairs" in rec:
                gaps = [p["combined_minus_best_baseline"] for p in rec["pairs"]]
                msg = ("" if rec["export"]["ok"] else "default export FAILED, scored with the "
                       "fallback parity tolerance: ")
                msg += (f"FPR@α {rec['in_distribution']['fpr_at_alpha']:.3f}, "
                       f"combined−best baseline min {min(gaps):+.3f}, "
                       f"selected {rec['calibration']['selected']}")
            else:
                msg = f"FAILED: {_failure(rec)}"
            stages = {k: rec.get(k, {}).get("seconds") for k in ("export", "pyod", "calibration")}
            print(f"[{i}/{len(specs)}] {spec.model_id}: {msg} (train {rec['train_s']}s, "
                  + ", ".join(f"{k} {v}s" for k, v in stages.items() if v is not None)
                  + f"; {time.perf_counter() - t0:.0f}s)", flush=True)
    summary = summarise(results, args.alpha)
    doc = {"benchmark": "detection", "mode": mode, "complete": True, "machine": machine,
           "seconds": round(time.perf_counter() - t0, 1), "summary": summary,
           "models": results}
    print_report(results, summary)
    write_json(out, doc)
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    plot(results, png)
    print(f"\nwrote {out} and {png} ({doc['seconds']:.0f}s)")
    return doc


def merge(paths: list[str], out: Path, alpha: float, png: str | None) -> dict[str, Any]:
    """One report from several runs' JSON (model ids must not repeat)."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    results = [m for d in docs for m in d["models"]]
    ids = [m["model_id"] for m in results]
    if len(set(ids)) != len(ids):
        sys.exit(f"the files {paths} hold some models twice; merge disjoint runs")
    summary = summarise(results, alpha)
    doc = {"benchmark": "detection", "mode": "+".join(d["mode"] for d in docs),
           "complete": all(d.get("complete") for d in docs), "merged_from": paths,
           "machine": docs[0].get("machine"),
           "seconds": [d.get("seconds") for d in docs], "summary": summary, "models": results}
    print_report(results, summary)
    write_json(out, doc)
    plot(results, Path(png) if png else out.with_suffix(".png"))
    return doc


if __name__ == "__main__":
    main()
