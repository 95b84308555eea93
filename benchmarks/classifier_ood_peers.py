"""The classifier benchmark's peers: pytorch-ood 0.4.0's MSP, Energy, Mahalanobis, KNN and ViM on
the very classifiers ``benchmarks/classifier_ood.py`` trained (their state dicts) and the same
arrays. Runs in its own environment (requirements/peers.txt; never in CI):

    python benchmarks/classifier_ood.py --save-peer-inputs /tmp/peer-inputs
    /work/peers-venv/bin/python benchmarks/classifier_ood_peers.py /tmp/peer-inputs \\
        --out benchmarks/results/classifier_ood_peers.json

Scores follow pytorch-ood's convention (higher = more OOD). The feature-based detectors get the
classifier's ``body`` (the same layer oodguard's classifier guard taps) and are fitted on the
training rows with their labels. Only numpy, scikit-learn and torch are used besides
pytorch-ood: this script imports nothing from oodguard.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _classifiers import build  # noqa: E402

# oodguard's methods in classifier_ood.py's JSON, compared with the peers where present
OURS = ("embedding", "embedding (AE on layer)", "raw")


def _metrics(s_in: np.ndarray, s_out: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    s = np.r_[s_in, s_out]
    thr = np.quantile(s_out, 0.05, method="lower")  # flags >= 95% of the OOD rows
    return {"auroc": float(roc_auc_score(y, s)), "fpr95": float((s_in >= thr).mean())}


def run(home: Path) -> dict[str, Any]:
    import torch
    from pytorch_ood.detector import KNN, EnergyBased, Mahalanobis, MaxSoftmax, ViM
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    spec = json.loads((home / "spec.json").read_text())
    kinds = json.loads((home / "ood_kinds.json").read_text())
    model = build(spec)
    model.load_state_dict(torch.load(home / "state_dict.pt", weights_only=True))
    model.eval()
    z = np.load(home / "arrays.npz")
    x_tr = torch.from_numpy(z["x_train"])
    y_tr = torch.from_numpy(z["y_train"]).long()
    loader = DataLoader(TensorDataset(x_tr, y_tr), batch_size=256)
    body = model.body
    dim = int(body(x_tr[:2]).shape[1])
    head = model.head
    detectors: dict[str, Any] = {
        "MSP": MaxSoftmax(model),
        "Energy": EnergyBased(model),
        "Mahalanobis": Mahalanobis(body),
        "KNN": KNN(body),
        "ViM": ViM(body, d=max(1, dim // 2), w=head.weight.detach(), b=head.bias.detach()),
    }
    out: dict[str, Any] = {}
    for name, det in detectors.items():
        try:
            if name in ("Mahalanobis", "KNN", "ViM"):
                det.fit(loader)

            def score(x: np.ndarray, det: Any = det) -> np.ndarray:
                with torch.no_grad():
                    return det.predict(torch.from_numpy(x)).double().numpy()

            s_in = score(z["x_test"])
            sets = {k: {"kind": kinds[k], **_metrics(s_in, score(z[f"ood__{k}"]))}
                    for k in kinds}
            out[name] = {"ood": sets,
                         "mean_auroc": float(np.mean([v["auroc"] for v in sets.values()]))}
        except Exception as exc:  # a peer's failure is a result, not a crash
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def compare(ours: dict[str, Any], peers: dict[str, Any]) -> dict[str, Any]:
    """Mean AUROC per model: oodguard's methods (from classifier_ood.py's JSON) against the best
    peer of that model, and over all models (the issue's targets)."""
    rows = []
    for m in ours["models"]:
        p = {k: v["mean_auroc"] for k, v in peers["models"].get(m["model"], {}).items()
             if "mean_auroc" in v}
        if not p:
            continue
        best = max(p, key=lambda k: p[k])
        row = {"model": m["model"], "best_peer": best, "best_peer_auroc": p[best], **p}
        for meth in (k for k in OURS if k in m["methods"]):
            g = m["methods"][meth]
            row[meth] = g["mean_auroc"]
            row[f"{meth}_fpr_within"] = g["fpr_within"]
        rows.append(row)
    names = sorted({k for r in rows for k in peers["models"][r["model"]]})
    means = {k: float(np.mean([r[k] for r in rows])) for k in [*OURS, *names]
             if all(k in r for r in rows)}
    best_overall = max((k for k in names if k in means), key=lambda k: means[k])
    return {"rows": rows, "means": means, "best_peer_overall": best_overall,
            "target_mean": means.get("embedding", float("nan")) >= means[best_overall] + 0.02,
            "target_per_model": all(r["embedding"] >= r["best_peer_auroc"] - 0.05
                                    for r in rows)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", type=Path, help="the folder --save-peer-inputs wrote")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ours", type=Path,
                   help="classifier_ood.py's JSON: add the comparison with oodguard")
    a = p.parse_args(argv)
    import pytorch_ood
    import torch

    doc: dict[str, Any] = {"benchmark": "classifier_ood_peers",
                           "pytorch_ood": pytorch_ood.__version__, "torch": torch.__version__,
                           "models": {}}
    for home in sorted(d for d in a.inputs.iterdir() if (d / "spec.json").exists()):
        doc["models"][home.name] = run(home)
        print(home.name, {k: round(v.get("mean_auroc", float("nan")), 3)
                          for k, v in doc["models"][home.name].items()}, flush=True)
    if a.ours is not None:
        doc["comparison"] = compare(json.loads(a.ours.read_text()), doc)
        for r in doc["comparison"]["rows"]:
            print(f"{r['model']}: embedding {r['embedding']:.3f}, raw {r['raw']:.3f}, best peer "
                  f"{r['best_peer']} {r['best_peer_auroc']:.3f}")
        print("means:", {k: round(v, 3) for k, v in doc["comparison"]["means"].items()})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}")
    return doc


if __name__ == "__main__":
    main()
