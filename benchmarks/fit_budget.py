"""Time budget of ``oodguard.fit`` (issue 20): at most 5 minutes on 2 CPU cores for 50 000 × 64
vectors and for 20 000 images of 1 × 28 × 28, training + export + calibration + load.

    python benchmarks/fit_budget.py                 # both sets, 2 torch threads
    python benchmarks/fit_budget.py --tiny          # a smoke run (CI)

Vectors: a seeded mixture of 10 Gaussian clusters on an 8-dimensional subspace of R^64 with
small isotropic noise; images: uppercase letters rendered in the training fonts
(``benchmarks/glyphs.py``). Each set also gets a quick detection check against a shifted set
(vectors: other cluster centres; glyphs: digits) so that a fast but useless model shows. On a
shared machine the timings are an upper bound of what the machine gives alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, format_table, machine_info, write_json  # noqa: E402

BUDGET_S = 300.0


def vectors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(in-distribution [n, 64], shifted [n // 10, 64])``."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(8, 64)) / np.sqrt(8)
    centres = rng.normal(size=(20, 8)) * 3

    def draw(m: int, which: np.ndarray) -> np.ndarray:
        c = centres[rng.choice(which, size=m)]
        return ((c + rng.normal(size=(m, 8))) @ basis + 0.05 * rng.normal(size=(m, 64)))

    return draw(n, np.arange(10)).astype(np.float32), draw(n // 10, np.arange(10, 20)).astype(
        np.float32)


def glyph_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(uppercase letters [n, 1, 28, 28], digits [n // 10, 1, 28, 28])``, training fonts."""
    from glyphs import DIGITS, TRAIN_FONTS, UPPER, render

    rng = np.random.default_rng(seed)
    x, _ = render(UPPER, TRAIN_FONTS, n, rng)
    o, _ = render(DIGITS, TRAIN_FONTS, n // 10, rng)
    return x, o


def run_one(name: str, x: np.ndarray, x_ood: np.ndarray, *, n_val: int, threads: int,
            seed: int) -> dict[str, Any]:
    import oodguard
    from oodguard.calibration import auroc

    n_test = len(x_ood)
    x_train, x_val, x_test = x[n_val + n_test:], x[:n_val], x[n_val:n_val + n_test]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        guard = oodguard.fit(x_train, x_val, out=Path(tmp) / "bundle", threads=threads,
                             seed=seed, registry=None)
        seconds = time.perf_counter() - t0
        rec = guard.bundle.manifest.dynamics["training"]
        s_in, s_out = guard.check(x_test).score, guard.check(x_ood).score
        fpr = float(guard.check(x_test).is_ood.mean())
    return {"set": name, "shape": list(x.shape[1:]), "n_train": len(x_train), "n_val": n_val,
            "arch": rec["arch"], "latent": rec["latent"], "epochs": rec["result"]["epochs"],
            "best_epoch": rec["result"]["best_epoch"],
            "train_s": round(rec["result"]["seconds"], 1), "total_s": round(seconds, 1),
            "within_budget": seconds <= BUDGET_S, "threads": threads,
            "auroc_shifted": round(auroc(scores_in=s_in, scores_out=s_out), 4),
            "fpr_at_alpha": round(fpr, 4)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="small sets (a smoke run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=("vectors", "images"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fit_budget.json")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    n_vec, n_img = (2000, 600) if a.tiny else (50_000 + 5_000 + 5_000, 20_000 + 4_000 + 2_000)
    rows = []
    if a.only in (None, "vectors"):
        x, o = vectors(n_vec, a.seed)
        rows.append(run_one("vectors 64", x, o[: n_vec // 12], n_val=n_vec // 12,
                            threads=a.threads, seed=a.seed))
        print(rows[-1], flush=True)
    if a.only in (None, "images"):
        x, o = glyph_images(n_img, a.seed)
        rows.append(run_one("glyphs 1x28x28", x, o[: n_img // 13], n_val=2 * (n_img // 13),
                            threads=a.threads, seed=a.seed))
        print(rows[-1], flush=True)
    cols = [("set", "set", "s"), ("n_train", "train rows", "d"), ("arch", "arch", "s"),
            ("latent", "latent", "d"), ("epochs", "epochs", "d"), ("train_s", "train s", ".1f"),
            ("total_s", "total s", ".1f"), ("auroc_shifted", "AUROC shifted", ".3f"),
            ("fpr_at_alpha", "FPR@0.05", ".3f")]
    print(format_table(rows, cols))
    doc = {"benchmark": "fit_budget", "budget_s": BUDGET_S, "machine": machine_info(),
           "rows": rows}
    write_json(a.out, doc)
    print(f"wrote {a.out}")
    return doc


if __name__ == "__main__":
    main()
