"""Classifier OOD benchmark (issue 20): oodguard on the classifiers people deploy.

Models trained here (seeded): an MLP and a small CNN on scikit-learn's digits (classes 0-4), a
CNN on rendered glyphs (uppercase letters in the training fonts, ``benchmarks/glyphs.py``) and an
MLP on a tabular set (breast cancer, standardised). Per model, near and far OOD sets:

- digits: digits 5-9 (near); uniform noise, inverted digits (far);
- glyphs: held-out fonts (near); digits and lowercase letters (near); uniform noise (far);
- tabular: the other class (malignant) and scrambled features (each column permuted across the
  test rows: every marginal kept, the joint structure gone) (near); uniform noise over the
  training range (far).

oodguard, each calibrated at alpha on held-out in-distribution rows and measured on others:

- ``embedding``: ``oodguard.fit(..., model=clf, layer="body")``, the classifier guard — the
  graph iterates an autoencoder trained on the classifier's inputs and adds the classifier's
  msp, energy and class-conditional Mahalanobis distance on its feature layer
  (``embedding_mahalanobis``) as features;
- ``embedding (AE on layer)``: the same with ``autoencoder_on="layer"`` — the graph runs the
  classifier up to its feature layer and iterates an autoencoder trained on those embeddings;
- ``raw``: ``oodguard.fit`` on the raw inputs;
- a user's own autoencoder: none of these models comes with one, so the row is absent.

For reference, the classifier guard's ``embedding_mahalanobis`` column alone (uncalibrated,
higher = more OOD), and the classifier's own ``msp`` and ``energy`` computed here from its
logits (the formulas of Hendrycks & Gimpel and Liu et al., *not* pytorch-ood's code: the peers
named in the issue run in a separate environment, ``benchmarks/classifier_ood_peers.py`` on
what ``--save-peer-inputs`` writes — see docs/fit.md).

Per (model, OOD set): AUROC, FPR95 and the FPR at the calibrated alpha; per model: the held-out
in-distribution FPR with the exact split-conformal 99% range. JSON, a table and a plot.

    python benchmarks/classifier_ood.py               # every model
    python benchmarks/classifier_ood.py --tiny        # small sets, digits MLP only (CI)
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

from _classifiers import build  # noqa: E402
from _common import ROOT, format_table, machine_info, write_json  # noqa: E402

ALPHA = 0.05
# The classifier guard's own Mahalanobis column, uncalibrated: what that candidate gives alone
# (the calibration may leave it out of the score).
COLUMN_METHOD = "embedding_mahalanobis (column)"
LAYER_METHOD = "embedding (AE on layer)"


def _torch() -> Any:
    import torch

    return torch


def train_classifier(model: Any, x: np.ndarray, y: np.ndarray, *, epochs: int,
                     seed: int) -> Any:
    torch = _torch()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            b = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _split(n: int, fractions: tuple[float, float], rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    a, b = int(fractions[0] * n), int((fractions[0] + fractions[1]) * n)
    return [order[:a], order[a:b], order[b:]]


def digits_data(seed: int, conv: bool) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None] if conv else (d.data / 16.0).astype(
        np.float32)
    y = d.target
    rng = np.random.default_rng(seed)
    ind = np.flatnonzero(y <= 4)
    tr, va, te = (ind[s] for s in _split(len(ind), (0.5, 0.3), rng))
    noise = rng.uniform(0, 1, (300, *x.shape[1:])).astype(np.float32)
    return {"train": (x[tr], y[tr]), "val": x[va], "test": x[te], "classes": 5,
            "ood": {"digits_5_9": ("near", x[y >= 5]), "inverted": ("far", 1.0 - x[te]),
                    "uniform_noise": ("far", noise)}}


def glyph_data(seed: int, n: int) -> dict[str, Any]:
    from glyphs import DIGITS, HELD_OUT_FONTS, LOWER, TRAIN_FONTS, UPPER, render

    rng = np.random.default_rng(seed)
    x, y = render(UPPER, TRAIN_FONTS, n, rng)
    tr, va, te = _split(n, (0.6, 0.25), rng)
    m = max(len(te), 200)
    return {"train": (x[tr], y[tr]), "val": x[va], "test": x[te], "classes": len(UPPER),
            "ood": {"held_out_fonts": ("near", render(UPPER, HELD_OUT_FONTS, m, rng)[0]),
                    "digits": ("near", render(DIGITS, TRAIN_FONTS, m, rng)[0]),
                    "lowercase": ("near", render(LOWER, TRAIN_FONTS, m, rng)[0]),
                    "uniform_noise": ("far", rng.uniform(0, 1, (m, 1, 28, 28)).astype(
                        np.float32))}}


def tabular_data(seed: int) -> dict[str, Any]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    rng = np.random.default_rng(seed)
    x_in, x_out = d.data[d.target == 1], d.data[d.target == 0]  # benign in, malignant out
    tr, va, te = _split(len(x_in), (0.35, 0.4), rng)
    mu, sd = x_in[tr].mean(0), x_in[tr].std(0) + 1e-8
    z = ((x_in - mu) / sd).astype(np.float32)
    lo, hi = z[tr].min(0), z[tr].max(0)
    # a 2-class head needs a second class to train on: the classifier separates the two halves
    # of the in-distribution rows by their first principal direction (a synthetic task: what
    # matters is that it is a trained classifier with a feature layer)
    c = z[tr] - z[tr].mean(0)
    v = np.linalg.svd(c, full_matrices=False)[2][0]
    y = (z @ v > np.median(z[tr] @ v)).astype(np.int64)
    scrambled = np.stack([rng.permutation(z[te][:, j]) for j in range(z.shape[1])], axis=1)
    return {"train": (z[tr], y[tr]), "val": z[va], "test": z[te], "classes": 2,
            "ood": {"malignant": ("near", ((x_out - mu) / sd).astype(np.float32)),
                    "scrambled": ("near", scrambled.astype(np.float32)),
                    "uniform_noise": ("far", rng.uniform(lo, hi, (200, z.shape[1])).astype(
                        np.float32))}}


def _metrics(s_in: np.ndarray, s_out: np.ndarray, flag_out: np.ndarray | None) -> dict[str, Any]:
    from oodguard.calibration import auroc, fpr_at_tpr

    return {"auroc": auroc(scores_in=s_in, scores_out=s_out),
            "fpr95": fpr_at_tpr(scores_in=s_in, scores_out=s_out),
            "tpr_at_alpha": None if flag_out is None else float(flag_out.mean())}


def save_peer_inputs(home: Path, name: str, spec: dict[str, Any], clf: Any,
                     data: dict[str, Any]) -> None:
    """What the peers need: the architecture, the trained state dict, the same arrays."""
    torch = _torch()
    d = home / name
    d.mkdir(parents=True, exist_ok=True)
    torch.save(clf.state_dict(), d / "state_dict.pt")
    (d / "spec.json").write_text(json.dumps(spec) + "\n")
    x_tr, y_tr = data["train"]
    np.savez(d / "arrays.npz", x_train=x_tr, y_train=y_tr, x_test=data["test"],
             **{f"ood__{k}": v for k, (_, v) in data["ood"].items()})
    (d / "ood_kinds.json").write_text(json.dumps({k: kind for k, (kind, _) in
                                                  data["ood"].items()}) + "\n")


def run_model(name: str, data: dict[str, Any], model: Any, *, epochs: int, seed: int,
              max_epochs: int | None, peer_dir: Path | None = None,
              spec: dict[str, Any] | None = None,
              classifiers_only: bool = False) -> dict[str, Any]:
    from detection import conformal_fpr_interval

    import oodguard
    from oodguard.training import Recipe

    torch = _torch()
    x_tr, y_tr = data["train"]
    t0 = time.perf_counter()
    clf = train_classifier(model, x_tr, y_tr, epochs=epochs, seed=seed)
    if peer_dir is not None and spec is not None:
        save_peer_inputs(peer_dir, name, spec, clf, data)
        if classifiers_only:
            return {"model": name, "methods": {}}
    recipe = None if max_epochs is None else Recipe(max_epochs=max_epochs)
    rec: dict[str, Any] = {"model": name, "n_train": len(x_tr), "n_val": len(data["val"]),
                           "n_test": len(data["test"]), "classifier_s": time.perf_counter() - t0,
                           "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        guards = {
            "embedding": oodguard.fit(x_tr, data["val"], out=Path(tmp) / "emb", model=clf,
                                      layer="body", recipe=recipe, seed=seed, registry=None,
                                      progress=False),
            LAYER_METHOD: oodguard.fit(x_tr, data["val"], out=Path(tmp) / "layer", model=clf,
                                       layer="body", autoencoder_on="layer", recipe=recipe,
                                       seed=seed, registry=None, progress=False),
            "raw": oodguard.fit(x_tr, data["val"], out=Path(tmp) / "raw", recipe=recipe,
                                seed=seed, registry=None, progress=False),
        }

        def logits(x: np.ndarray) -> Any:
            with torch.inference_mode():
                return clf(torch.from_numpy(x)).double()

        def msp(x: np.ndarray) -> np.ndarray:
            return -torch.softmax(logits(x), 1).max(1).values.numpy()

        def energy(x: np.ndarray) -> np.ndarray:
            return (-torch.logsumexp(logits(x), 1)).numpy()

        column = COLUMN_METHOD.split(" ")[0]
        col: dict[str, Any] = {"ood": {}}
        for method, g in guards.items():
            r_in = g.check(data["test"])
            n_cal = len(g.scorer.calibration_scores)
            lo, hi = conformal_fpr_interval(n_cal, len(data["test"]), ALPHA)
            fpr = float(r_in.is_ood.mean())
            m = {"fpr_at_alpha": fpr, "fpr_range_99": [lo, hi], "fpr_within": lo <= fpr <= hi,
                 "features": [g.scorer.feature_names[i] for i in g.scorer.used], "ood": {}}
            j = g.feature_names.index(column) if method == "embedding" else -1
            for oname, (kind, x_o) in data["ood"].items():
                r_o = g.check(x_o)
                m["ood"][oname] = {"kind": kind, **_metrics(r_in.score, r_o.score, r_o.is_ood)}
                if j >= 0:
                    col["ood"][oname] = {"kind": kind, **_metrics(
                        r_in.features[:, j], r_o.features[:, j], None)}
            rec["methods"][method] = m
        rec["methods"][COLUMN_METHOD] = col
        for method, fn in (("msp (here)", msp), ("energy (here)", energy)):
            s_in = fn(data["test"])
            rec["methods"][method] = {"ood": {o: {"kind": k, **_metrics(s_in, fn(x_o), None)}
                                              for o, (k, x_o) in data["ood"].items()}}
    for m in rec["methods"].values():
        m["mean_auroc"] = float(np.mean([v["auroc"] for v in m["ood"].values()]))
    rec["seconds"] = time.perf_counter() - t0
    return rec


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [r["model"] for r in doc["models"]]
    methods = list(doc["models"][0]["methods"])
    fig, ax = plt.subplots(figsize=(8, 4))
    w = 0.8 / len(methods)
    for k, meth in enumerate(methods):
        ax.bar(np.arange(len(models)) + k * w, [r["methods"][meth]["mean_auroc"]
                                               for r in doc["models"]], w, label=meth)
    ax.set_xticks(np.arange(len(models)) + 0.4 - w / 2, models)
    ax.set_ylabel("mean AUROC over OOD sets")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="digits MLP only, few epochs (CI)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--glyphs", type=int, default=6000, help="glyph images rendered")
    p.add_argument("--out", type=Path,
                   default=ROOT / "benchmarks" / "results" / "classifier_ood.json")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--save-peer-inputs", type=Path, metavar="DIR",
                   help="write each trained classifier's state dict and the arrays for "
                        "benchmarks/classifier_ood_peers.py")
    p.add_argument("--classifiers-only", action="store_true",
                   help="with --save-peer-inputs: train and save the classifiers, skip oodguard "
                        "(training is seeded: the same state dicts as a full run)")
    a = p.parse_args(argv)
    torch = _torch()
    torch.set_num_threads(a.threads)
    max_ep = 5 if a.tiny else None
    runs: list[tuple[str, Any, dict[str, Any], int]] = [
        ("digits-mlp", lambda: digits_data(a.seed, False),
         {"kind": "mlp", "dim": 64, "classes": 5}, 60)]
    if not a.tiny:
        runs += [("digits-cnn", lambda: digits_data(a.seed, True),
                  {"kind": "cnn", "size": 8, "classes": 5}, 40),
                 ("glyphs-cnn", lambda: glyph_data(a.seed, a.glyphs),
                  {"kind": "cnn", "size": 28, "classes": 26}, 15),
                 ("tabular-mlp", lambda: tabular_data(a.seed),
                  {"kind": "mlp", "dim": 30, "classes": 2}, 100)]
    if a.classifiers_only and a.save_peer_inputs is None:
        p.error("--classifiers-only needs --save-peer-inputs DIR")
    models = []
    for name, data_fn, spec, epochs in runs:
        torch.manual_seed(a.seed)
        rec = run_model(name, data_fn(), build(spec), epochs=5 if a.tiny else epochs,
                        seed=a.seed, max_epochs=max_ep, peer_dir=a.save_peer_inputs,
                        spec=spec, classifiers_only=a.classifiers_only)
        if a.classifiers_only:
            print(f"{name}: saved to {a.save_peer_inputs}", flush=True)
            continue
        models.append(rec)
        print(f"{name}: " + ", ".join(f"{k} {v['mean_auroc']:.3f}"
                                      for k, v in rec["methods"].items()), flush=True)
    if a.classifiers_only:
        return {"saved": str(a.save_peer_inputs)}
    rows = []
    for r in models:
        for meth, m in r["methods"].items():
            for o, v in m["ood"].items():
                rows.append({"model": r["model"], "method": meth, "ood": o, "kind": v["kind"],
                             "auroc": v["auroc"], "fpr95": v["fpr95"]})
            rows.append({"model": r["model"], "method": meth, "ood": "MEAN", "kind": "",
                         "auroc": m["mean_auroc"], "fpr95": float(np.mean(
                             [v["fpr95"] for v in m["ood"].values()])),
                         "fpr_alpha": m.get("fpr_at_alpha")})
    print(format_table(rows, [("model", "model", ""), ("method", "method", ""),
                              ("ood", "OOD set", ""), ("kind", "kind", ""),
                              ("auroc", "AUROC", ".3f"), ("fpr95", "FPR95", ".3f"),
                              ("fpr_alpha", "held-out FPR@α", ".3f")]))
    doc = {"benchmark": "classifier_ood", "alpha": ALPHA, "tiny": a.tiny, "seed": a.seed,
           "threads": a.threads, "machine": machine_info(), "models": models,
           "peers": "not run: pytorch-ood needs its own environment (docs/fit.md)"}
    write_json(a.out, doc)
    written = [a.out]
    if not a.no_plot:
        png = a.out.with_suffix(".png")
        plot(doc, png)
        written.append(png)
    print("wrote " + ", ".join(map(str, written)))
    return doc


if __name__ == "__main__":
    main()
