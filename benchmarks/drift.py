"""The drift monitor on streams: false alarms over many (calibration set, stream) pairs, and the
delay to detect shifts, beside a windowed KS test of the p-values and a windowed MMD.

Two parts, both with data from generators this benchmark controls (fresh draws, never
resampled rows — a bootstrap of a finite set is itself another distribution):

- **simulated scores** (``sim``): what is simulated is the guard's *scores*: calibration
  scores and stream scores are i.i.d. N(0, 1), so the conformal p-values are exactly those of a
  guard whose scorer sees exchangeable data. Cheap, so it carries the ≥ 200 pairs of 20 000 rows
  for the false-alarm rate, and the raw (unadjusted) p-values beside the adjusted ones.
- **a real bundle** (``bundle``): a small autoencoder trained, exported and calibrated here on a
  3-dimensional manifold in 16-D (the test suite's generator), scored by the guard's engine and
  scorer. Each run draws a fresh calibration set of the conformal step (scored with the bundle's
  scorer) and a fresh stream; in-distribution rows for ``change_at`` rows, then a shift:
  additive noise at 0.25 / 0.5 / 1 s.d., a 10 % mixture of uniform-noise inputs (OOD), a shift of
  the latent code's mean, a brightness shift (a constant added to every input value), one class
  dropping out (the half ``z_0 > 0`` of the latent space stops arriving).

Detectors, each with the same nominal false-alarm rate ε over a stream of ``rows`` rows:
``drift=ε`` (the restarting mixture, the default) and the martingale from row 0 (both: their
guarantee), Shiryaev–Roberts of the same bets (threshold set by
simulation on null streams to ε), a windowed KS test of the p-values against the uniform
(sliding windows, threshold set by simulation), and a windowed MMD of the inputs against a
reference sample of the calibration draw (Gaussian kernel, median bandwidth, threshold set by
simulation). alibi-detect 0.13 requires numpy < 2, pandas < 3 and Pillow < 11, which our pins
exclude, so the MMD is this file's own.

    python benchmarks/drift.py --out docs/perf/drift.json      # full run (several minutes)
    python benchmarks/drift.py --tiny --out /tmp/drift.json    # seconds; tested in CI
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import format_table, machine_info, write_json  # noqa: E402

from oodguard.decisions import conformal_p_values  # noqa: E402
from oodguard.drift import KAPPAS, DriftMonitor, DriftSettings  # noqa: E402

EPS = 0.05
PLAIN = DriftSettings(false_alarm=EPS, statistic="martingale")
DIM = 16
_BASIS = np.random.default_rng(1234).normal(size=(3, DIM))
SHIFTS = ("noise_0.25sd", "noise_0.5sd", "noise_1sd", "ood_mixture_10pct", "latent_mean",
          "brightness", "class_dropout")


# -- generators ------------------------------------------------------------------------------
def manifold(rng: np.random.Generator, n: int, *, z_shift: float = 0.0,
             drop_class: bool = False) -> np.ndarray:
    """In-distribution rows: a 3-D latent code mapped into 16-D and squashed to (0, 1)."""
    z = rng.normal(size=(n, 3))
    if drop_class:
        z[:, 0] = -np.abs(z[:, 0])  # only the class z_0 ≤ 0 arrives
    z += z_shift
    return (1.0 / (1.0 + np.exp(-(z @ _BASIS) * 0.7))).astype(np.float32)


def shifted(rng: np.random.Generator, n: int, shift: str, sd: np.ndarray) -> np.ndarray:
    if shift.startswith("noise_"):
        k = float(shift.split("_")[1].removesuffix("sd"))
        return (manifold(rng, n) + rng.normal(size=(n, DIM)) * k * sd).astype(np.float32)
    if shift == "ood_mixture_10pct":
        x = manifold(rng, n)
        mix = rng.random(n) < 0.1
        x[mix] = rng.uniform(0, 1, size=(int(mix.sum()), DIM)).astype(np.float32)
        return x
    if shift == "latent_mean":
        return manifold(rng, n, z_shift=0.5)
    if shift == "brightness":
        return (manifold(rng, n) + 0.5 * float(sd.mean())).astype(np.float32)
    if shift == "class_dropout":
        return manifold(rng, n, drop_class=True)
    raise ValueError(shift)


def batches(rng: np.random.Generator, n: int) -> Iterator[slice]:
    """Consecutive slices of 1–64 rows covering ``range(n)``."""
    i = 0
    while i < n:
        k = int(rng.integers(1, 65))
        yield slice(i, min(i + k, n))
        i += k


# -- detectors: each returns the first row (1-based) at which it alarms, or None ----------------
def martingale_alarm(p: np.ndarray, n: int, rng: np.random.Generator,
                     settings: DriftSettings | float = EPS) -> int | None:
    """The monitor's alarm row (``settings``: the default ``drift=EPS`` is the restarting
    mixture)."""
    m = DriftMonitor(n, settings)
    for s in batches(rng, len(p)):
        m.update(p[s])
        if m.alarm:
            break
    return m.state().rows_at_alarm


def raw_log_mixture(p: np.ndarray) -> np.ndarray:
    """log of the monitor's mixture martingale (:data:`KAPPAS`, equal weights) at every row,
    on the p-values as they are (no calibration-conditional adjustment)."""
    t = np.arange(1, len(p) + 1, dtype=np.float64)[:, None]
    s = np.cumsum(-np.log(p))[:, None]
    terms = t * np.log(KAPPAS) + (1 - KAPPAS) * s
    top = terms.max(axis=1)
    return top + np.log(np.exp(terms - top[:, None]).sum(axis=1)) - math.log(len(KAPPAS))


def sr_path_max(p: np.ndarray, n: int) -> np.ndarray:
    """Running maximum of log10 of the Shiryaev–Roberts statistic (the monitor's own code, with
    an unreachable threshold), so one null simulation sets any threshold."""
    m = DriftMonitor(n, DriftSettings(statistic="shiryaev_roberts", arl=1e300))
    out = np.empty(len(p))
    for i in range(len(p)):
        m.update(p[i:i + 1])
        out[i] = m.evidence
    return np.maximum.accumulate(out)


def ks_path(p: np.ndarray, window: int, step: int) -> np.ndarray:
    """KS distance of each sliding window's p-values to the uniform, at rows step, 2·step, …
    (windows shorter than ``window`` at the start are skipped: NaN)."""
    out = np.full(len(p) // step, np.nan)
    for k in range(len(out)):
        end = (k + 1) * step
        if end < window:
            continue
        w = np.sort(p[end - window:end])
        i = np.arange(1, window + 1) / window
        out[k] = max(float(np.max(i - w)), float(np.max(w - (i - 1 / window))))
    return out


def mmd_path(x: np.ndarray, ref: np.ndarray, window: int, bandwidth: float) -> np.ndarray:
    """Biased MMD² between consecutive windows of ``x`` and ``ref`` (Gaussian kernel)."""
    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-np.maximum(d, 0) / (2 * bandwidth ** 2))

    krr = float(k(ref, ref).mean())
    out = np.empty(len(x) // window)
    for j in range(len(out)):
        w = x[j * window:(j + 1) * window].astype(np.float64)
        out[j] = float(k(w, w).mean()) + krr - 2 * float(k(w, ref).mean())
    return out


def first_over(path: np.ndarray, threshold: float, rows_per_point: int) -> int | None:
    hit = np.flatnonzero(np.nan_to_num(path, nan=-np.inf) >= threshold)
    return None if len(hit) == 0 else int(hit[0] + 1) * rows_per_point


def clopper_pearson(k: int, n: int, level: float = 0.99) -> tuple[float, float]:
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


# -- part 1: simulated scores ------------------------------------------------------------------
def simulated(runs: int, rows: int, n_cal: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    adjusted = plain = raw = 0
    for _ in range(runs):
        cal = np.sort(rng.standard_normal(n_cal))
        p = conformal_p_values(cal, rng.standard_normal(rows))
        adjusted += martingale_alarm(p, n_cal, rng) is not None
        plain += martingale_alarm(p, n_cal, rng, PLAIN) is not None
        # the same mixture of power martingales on the raw p-values, at every row
        raw += bool((raw_log_mixture(p) >= math.log(1 / (EPS * 0.8))).any())
    return {"runs": runs, "rows": rows, "calibration_size": n_cal, "epsilon": EPS,
            "alarms": adjusted, "alarm_fraction": adjusted / runs,
            "alarm_fraction_ci99": clopper_pearson(adjusted, runs),
            "plain_martingale_alarms": plain,
            "plain_martingale_alarm_fraction_ci99": clopper_pearson(plain, runs),
            "raw_alarms": raw, "raw_alarm_fraction": raw / runs,
            "raw_alarm_fraction_ci99": clopper_pearson(raw, runs)}


# -- part 2: a real bundle ---------------------------------------------------------------------
def build_bundle(root: Path, seed: int, epochs: int) -> Path:
    import torch

    from oodguard.calibration import calibrate
    from oodguard.demo.train import train_autoencoder
    from oodguard.export import export_bundle

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    model = train_autoencoder(manifold(rng, 800), latent=3, hidden=16, epochs=epochs,
                              progress=False)
    export_bundle(root / "raw", model=model, x_train=manifold(rng, 800), steps=8)
    calibrate(root / "raw", manifold(rng, 600), alpha=0.05, out=root / "bundle")
    return root / "bundle"


def real_bundle(bundle: Path, *, null_runs: int, shift_runs: int, rows: int, change_at: int,
                n_cal: int, seed: int, ks_window: int, mmd_window: int,
                progress: Callable[[str], None]) -> dict[str, Any]:
    from oodguard import Guard

    guard = Guard.load(bundle, registry=None, providers="cpu")

    def scores(x: np.ndarray) -> np.ndarray:
        return guard.scorer.score(guard.engine.run(x))  # type: ignore[no-any-return]

    rng = np.random.default_rng(seed)
    sd = manifold(rng, 5000).std(axis=0)
    ref_rows = 500

    def draw(shift: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(p-values, stream inputs, reference inputs, bandwidth) of one fresh run."""
        cal_x = manifold(rng, n_cal)
        cal = np.sort(scores(cal_x))
        if shift is None:
            x = manifold(rng, rows)
        else:
            x = np.concatenate([manifold(rng, change_at), shifted(rng, rows - change_at,
                                                                   shift, sd)])
        ref = cal_x[:ref_rows].astype(np.float64)
        d = np.sqrt(((ref[:200, None, :] - ref[None, :200, :]) ** 2).sum(-1))
        return conformal_p_values(cal, scores(x)), x, ref, float(np.median(d[d > 0]))

    # null streams: the martingale's false alarms, and every other detector's threshold
    t0 = time.perf_counter()
    mart_null, plain_null, sr_max, ks_max, mmd_max = 0, 0, [], [], []
    for _ in range(null_runs):
        p, x, ref, bw = draw(None)
        mart_null += martingale_alarm(p, n_cal, rng) is not None
        plain_null += martingale_alarm(p, n_cal, rng, PLAIN) is not None
        sr_max.append(float(sr_path_max(p, n_cal)[-1]))
        ks_max.append(float(np.nanmax(ks_path(p, ks_window, ks_window // 5))))
        mmd_max.append(float(mmd_path(x, ref, mmd_window, bw).max()))
    thresholds = {"shiryaev_roberts_log10": float(np.quantile(sr_max, 1 - EPS)),
                  "ks": float(np.quantile(ks_max, 1 - EPS)),
                  "mmd2": float(np.quantile(mmd_max, 1 - EPS))}
    progress(f"null streams: {null_runs} in {time.perf_counter() - t0:.0f}s")

    results = []
    example: dict[str, Any] = {}
    for shift in SHIFTS:
        delays: dict[str, list[float]] = {k: [] for k in (
            "restarting", "martingale", "shiryaev_roberts", "ks_window", "mmd_window")}
        early = dict.fromkeys(delays, 0)
        for r in range(shift_runs):
            p, x, ref, bw = draw(shift)
            got = {
                "restarting": martingale_alarm(p, n_cal, rng),
                "martingale": martingale_alarm(p, n_cal, rng, PLAIN),
                "shiryaev_roberts": first_over(sr_path_max(p, n_cal),
                                               thresholds["shiryaev_roberts_log10"], 1),
                "ks_window": first_over(ks_path(p, ks_window, ks_window // 5),
                                        thresholds["ks"], ks_window // 5),
                "mmd_window": first_over(mmd_path(x, ref, mmd_window, bw), thresholds["mmd2"],
                                         mmd_window),
            }
            for k, row in got.items():
                if row is not None and row <= change_at:
                    early[k] += 1  # a false alarm before the change: not a detection
                delays[k].append(math.inf if row is None or row <= change_at
                                 else row - change_at)
            if r == 0:
                m = DriftMonitor(n_cal, EPS)
                ev = []
                for i in range(0, rows, 16):
                    m.update(p[i:i + 16])
                    ev.append(m.evidence)
                example[shift] = {"evidence_every_16_rows": ev,
                                  "alarm_row": m.state().rows_at_alarm,
                                  "threshold": m.threshold}
        for k, d in delays.items():
            arr = np.array(d)
            found = arr[np.isfinite(arr)]
            results.append({
                "shift": shift, "detector": k, "runs": shift_runs,
                "detected_fraction": len(found) / len(arr),
                # None: not detected within the stream by that quantile
                "median_delay": _finite(np.quantile(arr, 0.5, method="inverted_cdf")),
                "p90_delay": _finite(np.quantile(arr, 0.9, method="inverted_cdf")),
                "alarms_before_change": early[k],
            })
        progress(f"{shift}: done")
    return {"null_runs": null_runs, "rows": rows, "change_at": change_at,
            "calibration_size": n_cal, "martingale_null_alarms": mart_null,
            "martingale_null_alarm_fraction": mart_null / null_runs,
            "martingale_null_alarm_fraction_ci99": clopper_pearson(mart_null, null_runs),
            "plain_martingale_null_alarms": plain_null,
            "plain_martingale_null_alarm_fraction_ci99": clopper_pearson(plain_null, null_runs),
            "thresholds_at_epsilon": thresholds, "ks_window": ks_window,
            "mmd_window": mmd_window, "detection": results, "example": example}


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = doc["bundle"]["example"]
    change = doc["bundle"]["change_at"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ax = axes[0]
    for shift, e in ex.items():
        rows = np.arange(1, len(e["evidence_every_16_rows"]) + 1) * 16
        line, = ax.plot(rows, e["evidence_every_16_rows"], lw=1, label=shift)
        if e["alarm_row"] is not None:
            ax.axvline(e["alarm_row"], color=line.get_color(), ls=":", lw=1)
    thr = next(iter(ex.values()))["threshold"]
    ax.axhline(thr, color="k", ls="--", lw=1, label=f"alarm (log10 1/ε' = {thr:.2f})")
    ax.axvline(change, color="grey", lw=1)
    ax.set(xlabel="row", ylabel="evidence (log10 M_t)", title="one stream per shift "
           "(dotted: alarm)", ylim=(-4, max(8, thr + 2)))
    ax.legend(fontsize=7)
    ax = axes[1]
    det = doc["bundle"]["detection"]
    names = list(dict.fromkeys(r["detector"] for r in det))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        cap = doc["bundle"]["rows"]
        med = [cap if r["median_delay"] is None else r["median_delay"] for r in det
               if r["detector"] == name]
        ax.bar(np.arange(len(SHIFTS)) + j * width, med, width, label=name)
    ax.set_xticks(np.arange(len(SHIFTS)) + 0.4, SHIFTS, rotation=30, ha="right", fontsize=7)
    ax.set(yscale="log", ylabel="median rows to alarm (capped at the stream)",
           title=f"detection delay at the same false-alarm rate ({EPS})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write JSON here (and the plot beside it, .png)")
    p.add_argument("--tiny", action="store_true", help="a few short runs (CI)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    if a.tiny:
        sim_kw = {"runs": 10, "rows": 2000, "n_cal": 300}
        real_kw = {"null_runs": 6, "shift_runs": 2, "rows": 1500, "change_at": 300,
                   "n_cal": 300, "ks_window": 200, "mmd_window": 100}
        epochs = 5
    else:
        sim_kw = {"runs": 200, "rows": 20000, "n_cal": 1000}
        real_kw = {"null_runs": 200, "shift_runs": 50, "rows": 20000, "change_at": 1000,
                   "n_cal": 1000, "ks_window": 500, "mmd_window": 200}
        epochs = 60

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    sim = simulated(seed=a.seed, **sim_kw)
    progress("simulated scores: done")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = build_bundle(Path(tmp), a.seed, epochs)
        real = real_bundle(bundle, seed=a.seed + 1, progress=progress, **real_kw)
    doc = {"benchmark": "drift", "machine": machine_info(), "tiny": a.tiny, "epsilon": EPS,
           "simulated_scores": sim, "bundle": real, "seconds": time.perf_counter() - t0}
    lo, hi = sim["alarm_fraction_ci99"]
    rlo, rhi = sim["raw_alarm_fraction_ci99"]
    print(f"simulated scores: {sim['runs']} (calibration set, stream) pairs of {sim['rows']} "
          f"rows, n = {sim['calibration_size']}, ε = {EPS}")
    print(f"  drift=ε (restarting mixture) on calibration-conditional p-values: "
          f"{sim['alarms']} alarms ({sim['alarm_fraction']:.3f}, 99 % CI [{lo:.3f}, {hi:.3f}]);"
          f" the martingale from row 0: {sim['plain_martingale_alarms']}")
    print(f"  the same bets on raw p-values: {sim['raw_alarms']} alarms "
          f"({sim['raw_alarm_fraction']:.3f}, 99 % CI [{rlo:.3f}, {rhi:.3f}])")
    blo, bhi = real["martingale_null_alarm_fraction_ci99"]
    print(f"real bundle: {real['null_runs']} null streams of {real['rows']} rows: "
          f"{real['martingale_null_alarms']} alarms of drift=ε (99 % CI [{blo:.3f}, {bhi:.3f}]), "
          f"{real['plain_martingale_null_alarms']} of the martingale from row 0")
    print(format_table(real["detection"], [
        ("shift", "shift", ""), ("detector", "detector", ""),
        ("detected_fraction", "detected", ".2f"), ("median_delay", "median rows", ".0f"),
        ("p90_delay", "p90 rows", ".0f"), ("alarms_before_change", "alarms before change",
                                           "d")]))
    if a.out:
        write_json(a.out, doc)
        png = Path(a.out).with_suffix(".png")
        plot(doc, png)
        print(f"wrote {a.out} and {png}")


if __name__ == "__main__":
    main()
