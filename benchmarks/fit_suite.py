"""``oodguard.fit`` on every data family of the detection suite, against the suite's own
hand-trained autoencoders (issue 20: "within 0.02 of the mean AUROC").

For each family: ``oodguard.fit(fam.train, fam.val)`` with every default (seed 0), scored on the
family's test rows and OOD sets plus the two trivially far sets — the same data and pairs as
``benchmarks/detection.py`` (data seed 0). The suite's side is read from its recorded run
(``docs/perf/detection.json``, ``--suite``): the calibrated ("combined") AUROC of each of its
models on each pair, averaged per family over all its models and, separately, over its
``wd_denoise`` models (the recipe ``fit`` uses).

    python benchmarks/fit_suite.py
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, format_table, machine_info, write_json  # noqa: E402
from _detection_data import FAMILIES, add_trivial, load_family  # noqa: E402


def suite_means(doc: dict[str, Any], family: str) -> dict[str, Any]:
    def mean(models: list[dict[str, Any]]) -> float | None:
        vals = [p["combined"]["auroc"] for m in models for p in m.get("pairs", [])
                if isinstance(p.get("combined"), dict) and "auroc" in p["combined"]]
        return float(np.mean(vals)) if vals else None

    fam = [m for m in doc["models"] if m["family"] == family]
    return {"models": len(fam), "all": mean(fam),
            "wd_denoise": mean([m for m in fam if m["recipe"] == "wd_denoise"])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", type=Path, default=ROOT / "docs" / "perf" / "detection.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fit_suite.json")
    a = p.parse_args(argv)
    import torch

    import oodguard
    from oodguard.calibration import auroc

    torch.set_num_threads(a.threads)
    suite = json.loads(a.suite.read_text())
    rows = []
    for name in FAMILIES:
        fam = load_family(name, 0)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            g = oodguard.fit(fam.train, fam.val, out=Path(tmp) / "b", seed=0, registry=None,
                             threads=a.threads, progress=False)
            s_in = g.check(fam.test).score
            pairs = {k: auroc(scores_in=s_in, scores_out=g.check(v).score)
                     for k, (_, v) in add_trivial(fam, 0).items()}
            fpr = float(g.check(fam.test).is_ood.mean())
        ref = suite_means(suite, name)
        mean = float(np.mean(list(pairs.values())))
        rows.append({"family": name, "fit_auroc": mean, "suite_all": ref["all"],
                     "suite_wd_denoise": ref["wd_denoise"], "suite_models": ref["models"],
                     "gap_all": None if ref["all"] is None else mean - ref["all"],
                     "gap_wd_denoise": (None if ref["wd_denoise"] is None
                                        else mean - ref["wd_denoise"]),
                     "fpr_at_alpha": fpr, "seconds": time.perf_counter() - t0,
                     "epochs": g.bundle.manifest.dynamics["training"]["result"]["epochs"],
                     "pairs": pairs})
        print(rows[-1]["family"], round(mean, 3), ref, flush=True)
    print(format_table(rows, [("family", "family", ""), ("fit_auroc", "fit", ".3f"),
                              ("suite_all", "suite (all)", ".3f"),
                              ("suite_wd_denoise", "suite wd_denoise", ".3f"),
                              ("gap_all", "fit − all", "+.3f"),
                              ("gap_wd_denoise", "fit − wd_denoise", "+.3f"),
                              ("epochs", "epochs", "d"), ("seconds", "s", ".0f")]))
    doc = {"benchmark": "fit_suite", "machine": machine_info(), "suite": str(a.suite),
           "rows": rows}
    write_json(a.out, doc)
    print(f"wrote {a.out}")
    return doc


if __name__ == "__main__":
    main()
