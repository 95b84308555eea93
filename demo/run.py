"""``oodguard demo``: the whole pipeline on scikit-learn's bundled digits.

Train a denoising MLP autoencoder on digits 0–4 ▶ export the fused trajectory graph ▶ calibrate
at ``alpha`` on a validation split ▶ evaluate on held-out digits 0–4 and on near-OOD (digits
5–9) and far-OOD sets (uniform noise, inverted digits, sample-image patches). Prints a table
and writes ``report.json``, plots and the bundle into the output folder. Seeded.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oodguard import __version__
from oodguard.calibration import auroc, calibrate, fit_scorer, fpr_at_tpr
from oodguard.calibration.calibrate import split_indices
from oodguard.calibration.data import load_digits_data
from oodguard.calibration.selection import DEFAULT_PROXY_KINDS, make_proxies
from oodguard.demo.train import train_autoencoder
from oodguard.export import export_bundle
from oodguard.guard import Guard
from oodguard.scoring import conformal_p_values

__all__ = ["check_out", "run_demo"]

log = logging.getLogger(__name__)


def _feature_threshold_fpr(val: np.ndarray, test: np.ndarray, alpha: float) -> tuple[float, Any]:
    """One-sided conformal verdict for a raw feature (higher = OOD), calibrated on ``val``."""
    cal = np.sort(val)
    return float((conformal_p_values(cal, test) <= alpha).mean()), cal


def resampled_check(
    guard: Guard,
    pool: np.ndarray,
    n_val: int,
    ood: dict[str, np.ndarray],
    *,
    alpha: float,
    splits: int,
    seed: int,
) -> dict[str, Any]:
    """Re-draw the validation/test split of the held-out digits ``splits`` times (same
    autoencoder), recalibrate, and measure: how much the test false-positive rate at the
    threshold and the AUROCs vary with the luck of one split of ~900 digits."""
    names = guard.feature_names
    feats = guard.engine.run(pool)
    ood_feats = {k: guard.engine.run(v) for k, v in ood.items()}
    fprs: list[float] = []
    combined: dict[str, list[float]] = {k: [] for k in ood}
    best: dict[str, list[float]] = {k: [] for k in ood}
    rng = np.random.default_rng(seed + 1)
    for _ in range(splits):
        perm = rng.permutation(len(pool))
        val, test = perm[:n_val], perm[n_val:]
        fit, cal = split_indices(n_val, 0.4, seed)
        ref = guard.engine.run(make_proxies(pool[val[fit]], seed=seed))
        groups = [np.arange(i * len(fit), (i + 1) * len(fit))
                  for i in range(len(DEFAULT_PROXY_KINDS))]
        scorer, _ = fit_scorer(feats[val[fit]], feats[val[cal]], names, alpha=alpha,
                               reference_features=ref, reference_groups=groups, seed=seed)
        s_test = scorer.score(feats[test])
        fprs.append(float((scorer.p_value(s_test) <= alpha).mean()))
        for k, f in ood_feats.items():
            combined[k].append(auroc(scores_in=s_test, scores_out=scorer.score(f)))
            best[k].append(max(auroc(scores_in=feats[test][:, j], scores_out=f[:, j])
                               for j in range(len(names))))
    fpr = np.asarray(fprs)
    return {
        "splits": splits,
        "fpr_at_threshold": {"mean": round(float(fpr.mean()), 4), "sd": round(float(fpr.std()), 4),
                             "min": round(float(fpr.min()), 4), "max": round(float(fpr.max()), 4)},
        "combined_auroc_mean": {k: round(float(np.mean(v)), 4) for k, v in combined.items()},
        "combined_minus_best_auroc": {
            k: {"mean": round(float(np.mean(np.subtract(combined[k], best[k]))), 4),
                "min": round(float(np.min(np.subtract(combined[k], best[k]))), 4)}
            for k in ood
        },
    }


# What a demo run writes into its folder; anything else there is the user's and stays.
OUTPUTS = ("bundle", "report.json", "roc.png", "histograms.png", "feature_auroc.png",
           "attractors.png")


def check_out(out: str | Path, *, overwrite: bool = False) -> None:
    """Refuse, before any training, an output folder the demo must not write to: a file, a
    non-empty folder without ``overwrite``, or a ``bundle`` there that is not a bundle.

    Raises
    ------
    FileExistsError
        The message names ``--overwrite`` and ``--out``.
    """
    from oodguard.bundle import check_destination

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; pick a folder with --out DIR")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        mine = [n for n in held if n in OUTPUTS]
        what = ("a previous demo run (" + ", ".join(mine) + ")" if mine
                else "files of yours (" + ", ".join(held[:5]) + ("…" if len(held) > 5 else "")
                + ")")
        raise FileExistsError(
            f"--out {out} already holds {what}; pass --overwrite to replace the demo's "
            f"outputs there ({', '.join(OUTPUTS)}; nothing else is touched), or --out DIR for "
            "a new folder"
        )
    if held:
        check_destination(out / "bundle", overwrite=True)  # a non-bundle there is refused


def run_demo(
    out: str | Path,
    *,
    steps: int = 32,
    alpha: float = 0.05,
    epochs: int = 400,
    seed: int = 0,
    plots: bool = True,
    resample: int = 20,
    corruption: str = "noise",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the demo; returns the report (also written to ``out/report.json``).

    ``out`` is checked first (:func:`check_out`): a previous run is replaced only with
    ``overwrite``. Progress bars follow :mod:`oodguard.progress` (a terminal, INFO logged).
    """
    out = Path(out)
    check_out(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    log.info("[1/5] data: scikit-learn digits, 0–4 in-distribution")
    data = load_digits_data(seed=seed)
    log.info("      train %d, validation %d, test %d; OOD sets %s", len(data.train),
             len(data.val), len(data.test),
             ", ".join(f"{k} ({v[0]}, {len(v[1])})" for k, v in data.ood.items()))

    log.info("[2/5] training the autoencoder (%d epochs, weight decay, %s corruption)", epochs,
             corruption)
    t = time.perf_counter()
    model = train_autoencoder(data.train, epochs=epochs, seed=seed, corruption=corruption)
    timings["train_s"] = time.perf_counter() - t

    log.info("[3/5] attractors, ONNX export (T=%d) and parity check", steps)
    t = time.perf_counter()
    exported = export_bundle(out / "bundle", model=model, x_train=data.train, steps=steps,
                             overwrite=True, seed=seed)
    timings["export_s"] = time.perf_counter() - t

    log.info("[4/5] calibration at alpha=%g on %d validation digits", alpha, len(data.val))
    t = time.perf_counter()
    cal = calibrate(out / "bundle", data.val, alpha=alpha, seed=seed)
    timings["calibrate_s"] = time.perf_counter() - t

    log.info("[5/5] evaluation")
    t = time.perf_counter()
    guard = Guard.load(out / "bundle", providers="cpu", registry=None)
    names = list(guard.feature_names)
    r_val = guard.check(data.val)
    r_in = guard.check(data.test)
    results = {name: guard.check(x) for name, (_, x) in data.ood.items()}
    timings["evaluate_s"] = time.perf_counter() - t

    def scores_of(r: Any) -> dict[str, np.ndarray]:
        s = {"combined": r.score}
        s.update({n: r.features[:, j].astype(np.float64) for j, n in enumerate(names)})
        return s

    s_val, s_in = scores_of(r_val), scores_of(r_in)
    s_out = {k: scores_of(r) for k, r in results.items()}
    in_fpr = {"combined": float(r_in.is_ood.mean())}
    feature_cal = {}
    for n in names:
        in_fpr[n], feature_cal[n] = _feature_threshold_fpr(s_val[n], s_in[n], alpha)
    ood_sets: dict[str, Any] = {}
    for name, (kind, x) in data.ood.items():
        entry: dict[str, Any] = {"kind": kind, "n": len(x)}
        for score, values in s_out[name].items():
            if score == "combined":
                tpr = float(results[name].is_ood.mean())
            else:
                tpr = float((conformal_p_values(feature_cal[score], values) <= alpha).mean())
            entry[score] = {
                "auroc": round(auroc(scores_in=s_in[score], scores_out=values), 4),
                "fpr95": round(fpr_at_tpr(scores_in=s_in[score], scores_out=values), 4),
                "tpr_at_threshold": round(tpr, 4),
            }
        best = max(names, key=lambda n: entry[n]["auroc"])
        entry["best_feature"] = best
        entry["combined_minus_best_auroc"] = round(entry["combined"]["auroc"]
                                                   - entry[best]["auroc"], 4)
        ood_sets[name] = entry

    if resample:
        log.info("      re-drawing the validation/test split %d times to measure variance",
                 resample)
        variance = resampled_check(
            guard, np.concatenate([data.val, data.test]), len(data.val),
            {k: x for k, (_, x) in data.ood.items()}, alpha=alpha, splits=resample, seed=seed,
        )
    report: dict[str, Any] = {
        "oodguard_version": __version__,
        "seed": seed,
        "alpha": alpha,
        "steps": steps,
        "epochs": epochs,
        "corruption": corruption,
        "data": {"train": len(data.train), "validation": len(data.val), "test": len(data.test)},
        "attractors": {
            "count": len(exported.attractors.attractors),
            "summary": exported.attractors.summary(),
        },
        "parity": exported.parity.to_dict(),
        "calibration": {
            "threshold": cal.scorer.threshold,
            "n_fit": cal.n_fit,
            "n_cal": cal.n_cal,
            "used_features": [names[i] for i in cal.scorer.used],
            "direction": cal.scorer.direction.tolist(),
            "info": dict(cal.scorer.info),
        },
        "in_distribution": {
            "n": len(data.test),
            "fpr_at_threshold": in_fpr["combined"],
            "fpr_at_threshold_per_score": {k: round(v, 4) for k, v in in_fpr.items()},
        },
        "ood_sets": ood_sets,
        "resampled_splits": variance if resample else None,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine()},
    }
    if plots:
        from oodguard.demo.plots import plot_all

        with torch.inference_mode():
            a = torch.from_numpy(exported.attractors.attractors)
            decoded = model.decode(a).numpy().reshape(len(a), 8, 8)
        aurocs = {k: {s: v[s]["auroc"] for s in s_in} for k, v in ood_sets.items()}
        paths = plot_all(out, s_in, s_out, aurocs, guard.threshold, decoded)
        report["plots"] = [p.name for p in paths]
    report["timings"]["total_s"] = round(time.perf_counter() - t0, 2)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report, names))
    if resample:
        f = variance["fpr_at_threshold"]
        print(f"over {resample} re-drawn validation/test splits: FPR@thr mean {f['mean']:.3f} "
              f"(sd {f['sd']:.3f}, range {f['min']:.3f}–{f['max']:.3f}); combined − best single "
              "AUROC, worst split: " + ", ".join(
                  f"{k} {v['min']:+.3f}" for k, v in variance["combined_minus_best_auroc"].items()))
    print(f"\nbundle: {out / 'bundle'}   report: {out / 'report.json'}"
          + (f"   plots: {', '.join(report['plots'])}" if plots else ""))
    return report


def format_table(report: dict[str, Any], names: list[str]) -> str:
    """The demo's table as text: one block per OOD set, one row per score."""
    alpha = report["alpha"]
    fpr_in = report["in_distribution"]["fpr_at_threshold_per_score"]
    head = (f"{'OOD set':16s} {'kind':4s} {'score':24s} {'AUROC':>6s} {'FPR95':>6s} "
            f"{'FPR@thr':>8s} {'TPR@thr':>8s}")
    lines = [
        f"oodguard demo — digits 0–4 in-distribution, T={report['steps']}, alpha={alpha:g}; "
        f"FPR@thr: in-distribution test digits flagged ({report['in_distribution']['n']}), "
        "TPR@thr: OOD flagged",
        head,
        "-" * len(head),
    ]
    for name, entry in report["ood_sets"].items():
        for i, score in enumerate(["combined", *names]):
            e = entry[score]
            label = score + (" (baseline)" if score == "recon_error" else "")
            lines.append(
                f"{name if i == 0 else '':16s} {entry['kind'] if i == 0 else '':4s} "
                f"{label:24s} {e['auroc']:6.3f} {e['fpr95']:6.3f} {fpr_in[score]:8.3f} "
                f"{e['tpr_at_threshold']:8.3f}"
            )
        lines.append(
            f"{'':21s} combined − best single ({entry['best_feature']}): "
            f"{entry['combined_minus_best_auroc']:+.3f} AUROC"
        )
    return "\n".join(lines)
