"""Inspection on the demo's digits: memorization and attractors across latent sizes and over
training, and the data-free attractor dictionary against a random orthogonal basis and PCA.

For each latent size (default 2, 4, 8, 16, 32) and seed, the demo's autoencoder (64 ▶ 32 ▶ k,
denoising, AdamW with weight decay, 400 epochs) is trained on digits 0–4 with an
:class:`~oodguard.inspect.AttractorMonitor` called every ``--every`` epochs from the training
loop; the trained model is inspected (attractor count, memorization coefficient, contraction,
train and test reconstruction MSE) and its attractors from ``N(0, I)`` codes code the held-out
digits with OMP at 5 %, 10 % and 25 % of 64 atoms, against a random orthogonal basis and an
uncentred PCA of 64 atoms. Prints markdown tables; writes JSON and two PNGs.

    python benchmarks/inspect_sweep.py            # the README's numbers (a few minutes)
    python benchmarks/inspect_sweep.py --quick    # two latent sizes, a few epochs (smoke)

The numbers (memorization, counts, MSEs) do not depend on the machine's load; the seconds do.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, format_table, machine_info, write_json  # noqa: E402

LATENTS = (2, 4, 8, 16, 32)


def run_one(latent: int, seed: int, epochs: int, every: int, data: Any) -> dict[str, Any]:
    import torch

    from oodguard.demo.train import train_autoencoder
    from oodguard.inspect import AttractorMonitor, TorchMap, compare_dictionaries, inspect_map

    t0 = time.perf_counter()
    monitors: list[AttractorMonitor] = []

    def on_epoch(done: int, model: torch.nn.Module) -> None:
        if not monitors:
            monitors.append(AttractorMonitor(model, data.train, seed=seed))
        if done % every == 0 or done == epochs:
            monitors[0].update(done)

    model = train_autoencoder(data.train, latent=latent, epochs=epochs, seed=seed,
                              progress=False, on_epoch=on_epoch)
    latent_map = TorchMap.from_model(model, data.train)
    report = inspect_map(latent_map, x_train=data.train, horizon=32, seed=seed)
    with torch.no_grad():
        def mse(x: np.ndarray) -> float:
            t = torch.from_numpy(x)
            return float(torch.nn.functional.mse_loss(model(t), t))

        train_mse, test_mse = mse(data.train), mse(data.test)
    dictionary = compare_dictionaries(latent_map, data.train, data.test, seed=seed)
    d = report.to_dict()
    return {
        "latent": latent, "seed": seed, "epochs": epochs,
        "attractors": report.attractor_count,
        "attractors_from_train": d["attractors_from_train"],
        "attractors_from_noise": d["attractors_from_noise"],
        "memorization_mean": report.memorization_mean,
        "memorization_std": report.memorization_std,
        "lipschitz_median": d["contraction"]["lipschitz"].get("median"),
        "converged_train": d["convergence"]["train"]["fraction_converged"],
        "train_mse": train_mse, "test_mse": test_mse,
        "dictionary": dictionary.to_dict(),
        "over_training": monitors[0].to_dict(),
        "seconds": time.perf_counter() - t0,
    }


def _agg(rows: list[dict[str, Any]], key: str) -> tuple[float, float]:
    v = np.array([r[key] for r in rows], dtype=float)
    return float(np.nanmean(v)), float(np.nanstd(v))


def summarise(runs: list[dict[str, Any]], latents: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for k in latents:
        rs = [r for r in runs if r["latent"] == k]
        row: dict[str, Any] = {"latent": k, "seeds": len(rs)}
        for key in ("memorization_mean", "attractors_from_train", "attractors_from_noise",
                    "lipschitz_median", "train_mse", "test_mse"):
            row[key], row[key + "_sd"] = _agg(rs, key)
        for name in ("attractors", "random_orthogonal", "pca"):
            mses = np.array([r["dictionary"]["mse"][name] for r in rs])
            row["omp_" + name] = mses.mean(0).tolist()
        row["dictionary_distinct"] = _agg([r["dictionary"] for r in rs], "distinct_atoms")[0]
        rows.append(row)
    return rows


def tables(summary: list[dict[str, Any]], sparsities: list[float]) -> str:
    rows = [dict(r) for r in summary]
    for r in rows:
        r["mem"] = f"{r['memorization_mean']:.3f} ± {r['memorization_mean_sd']:.3f}"
        r["k_train"] = (f"{r['attractors_from_train']:.1f} ± "
                        f"{r['attractors_from_train_sd']:.1f}")
        r["k_noise"] = f"{r['attractors_from_noise']:.1f}"
        r["lip"] = f"{r['lipschitz_median']:.3f}"
        r["mse"] = f"{r['train_mse']:.4f} / {r['test_mse']:.4f}"
        for i in range(len(sparsities)):
            r[f"d{i}"] = " / ".join(f"{r['omp_' + n][i]:.4f}" for n in
                                    ("attractors", "random_orthogonal", "pca"))
    first = format_table(rows, [
        ("latent", "latent size", ""), ("mem", "memorization coefficient", ""),
        ("k_train", "attractors (train codes)", ""), ("k_noise", "attractors (N(0,I))", ""),
        ("lip", "median local Lipschitz", ""), ("mse", "MSE train / test", "")])
    second = format_table(rows, [("latent", "latent size", ""),
                                 *[(f"d{i}", f"OMP MSE at {100 * s:.0f}% (attractors / "
                                   "random orth. / PCA)", "") for i, s in
                                   enumerate(sparsities)]])
    return first + "\n\n" + second


def plot(runs: list[dict[str, Any]], rows: list[dict[str, Any]], sparsities: list[float],
         out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["latent"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.errorbar(ks, [r["memorization_mean"] for r in rows],
                yerr=[r["memorization_mean_sd"] for r in rows], fmt="o-", color="tab:purple",
                label="memorization coefficient")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("latent size")
    ax.set_ylabel("memorization coefficient", color="tab:purple")
    tw = ax.twinx()
    tw.plot(ks, [r["test_mse"] for r in rows], "s--", color="tab:gray")
    tw.set_ylabel("test MSE", color="tab:gray")
    axes[1].errorbar(ks, [r["attractors_from_train"] for r in rows],
                     yerr=[r["attractors_from_train_sd"] for r in rows], fmt="o-",
                     label="from training codes")
    axes[1].plot(ks, [r["attractors_from_noise"] for r in rows], "s-", label="from N(0, I)")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("latent size")
    axes[1].set_ylabel("attractors")
    axes[1].legend(fontsize=7)
    seed0 = min(r["seed"] for r in runs)
    for r in runs:
        if r["seed"] == seed0:
            h = r["over_training"]
            axes[2].plot(h["epoch"], h["attractors_train"], "-", label=f"k={r['latent']}")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("attractors (training codes)")
    axes[2].set_title(f"over training (seed {seed0})", fontsize=8)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    sweep = out.with_suffix(".png")
    fig.savefig(sweep, dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(rows), figsize=(2.8 * len(rows), 3), sharey=True,
                             squeeze=False)
    pct = [100 * s for s in sparsities]
    for ax, r in zip(axes[0], rows, strict=True):
        for name, style in (("attractors", "o-"), ("random_orthogonal", "s--"), ("pca", "^:")):
            ax.plot(pct, r["omp_" + name], style, label=name.replace("_", " "))
        ax.set_title(f"latent {r['latent']}", fontsize=9)
        ax.set_xlabel("% of 64 atoms")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("OMP reconstruction MSE (held-out digits)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    dictionary = out.with_name(out.stem + "_dictionary.png")
    fig.savefig(dictionary, dpi=90)
    plt.close(fig)
    return [sweep, dictionary]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="latent sizes 2 and 8, 10 epochs, one seed (smoke)")
    ap.add_argument("--latents", type=int, nargs="+", default=list(LATENTS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--every", type=int, default=20, help="monitor every this many epochs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inspect_sweep.json"))
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.latents, args.seeds, args.epochs, args.every = [2, 8], 1, 10, 5
    import torch

    from oodguard.calibration.data import load_digits_data
    from oodguard.inspect import memorization_coefficient
    from oodguard.inspect.dictionary import DEFAULT_SPARSITIES

    torch.set_num_threads(1)
    info = machine_info()
    data = load_digits_data(seed=0)
    t0 = time.perf_counter()
    runs = []
    for k in args.latents:
        for seed in range(args.seeds):
            r = run_one(k, seed, args.epochs, args.every, data)
            print(f"latent {k} seed {seed}: {r['attractors_from_train']} attractors, "
                  f"memorization {r['memorization_mean']:.3f}, test MSE {r['test_mse']:.4f} "
                  f"({r['seconds']:.1f}s)", flush=True)
            runs.append(r)
    rows = summarise(runs, tuple(args.latents))
    sparsities = list(DEFAULT_SPARSITIES)
    # What the coefficient reads for inputs that are *not* stored: digits are non-negative
    # vectors, so any digit has a high cosine to its nearest training digit.
    reference = {
        "held_out_digit_to_nearest_train": memorization_coefficient(data.test, data.train).mean,
        "mean_train_digit_to_nearest_train": memorization_coefficient(
            data.train.mean(0, keepdims=True), data.train).mean,
    }
    print()
    print(tables(rows, sparsities))
    print("\nreference cosines (no model): " +
          ", ".join(f"{k} {v:.3f}" for k, v in reference.items()))
    out = Path(args.out)
    info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    write_json(out, {"benchmark": "inspect_sweep", "machine": info,
                     "config": {"latents": args.latents, "seeds": args.seeds,
                                "epochs": args.epochs, "every": args.every,
                                "sparsities": sparsities, "n_train": len(data.train),
                                "n_test": len(data.test)},
                     "seconds": time.perf_counter() - t0, "reference_cosine": reference,
                     "summary": rows, "runs": runs})
    written = [out]
    if not args.no_plots:
        written += plot(runs, rows, sparsities, out)
    print("\nwrote " + ", ".join(str(p) for p in written) +
          f" in {time.perf_counter() - t0:.0f}s (load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
