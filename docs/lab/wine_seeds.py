"""Lab script (issue 20, 2026-12-07): ``oodguard.fit`` against the detection suite's hand-trained
wine autoencoder, both over five seeds.

    python docs/lab/wine_seeds.py --out FILE.json      # about 3 min

The suite has one wine model (seed 0), so ``benchmarks/fit_suite.py`` compares ``fit`` with a
single draw of the suite's training. Here the suite's own model (``benchmarks/detection.py``'s
``run_model``: its recipe, epochs and calibration) and ``oodguard.fit`` (every default, as
``fit_suite.py`` runs it) are both trained with seeds 0-4 on the same data (data seed 0) and
scored on the same pairs (the family's OOD sets and the two trivially far sets).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import detection  # noqa: E402
from _detection_data import add_trivial, load_family  # noqa: E402
from _detection_models import ModelSpec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    import torch

    import oodguard
    from oodguard.calibration import auroc

    torch.set_num_threads(1)
    fam = load_family("wine", seed=0)
    doc: dict[str, dict[int, float]] = {"suite": {}, "fit": {}}
    for seed in range(a.seeds):
        spec = ModelSpec("wine", "mlp", "wd_denoise", 4, seed, detection.EPOCHS["wine"])
        with tempfile.TemporaryDirectory() as tmp:
            rec = detection.run_model(spec, fam, Path(tmp), alpha=0.05, artifacts=None,
                                      use_pyod=False, threads=1, fallback_atol=None)
            doc["suite"][seed] = float(np.mean([q["combined"]["auroc"] for q in rec["pairs"]]))
            g = oodguard.fit(fam.train, fam.val, out=Path(tmp) / "fit", seed=seed,
                             registry=None, threads=1, progress=False)
            s_in = g.check(fam.test).score
            doc["fit"][seed] = float(np.mean([
                auroc(scores_in=s_in, scores_out=g.check(v).score)
                for _, v in add_trivial(fam, 0).values()]))
        print(f"seed {seed}: suite {doc['suite'][seed]:.4f}, fit {doc['fit'][seed]:.4f}",
              flush=True)
    summary = {k: {"mean": float(np.mean(list(v.values()))), "min": min(v.values()),
                   "max": max(v.values())} for k, v in doc.items()}
    print(json.dumps(summary, indent=1))
    a.out.write_text(json.dumps({**doc, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
