"""``oodguard fit``: train an autoencoder on a file of inputs, export and calibrate it
(:func:`oodguard.fit`; torch and scikit-learn, the ``fit`` extra)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from oodguard.cli.base import alpha_arg, command, count_arg, optional, tail_share_arg
from oodguard.cli.inputs import add_input_args, load_inputs

__all__: list[str] = []


def _fit_args(p: argparse.ArgumentParser) -> None:
    add_input_args(p)
    p.add_argument("--val", type=Path, required=True,
                   help="in-distribution validation inputs, not in TRAIN (the calibration's); "
                        "same format options as TRAIN")
    p.add_argument("--out", type=Path, required=True, help="the bundle directory to write")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a bundle at --out (without it an existing --out is refused "
                        "before training)")
    p.add_argument("--alpha", type=alpha_arg, default=0.05, help="target false-positive rate")
    p.add_argument("--minor-tail", type=tail_share_arg, metavar="SHARE",
                   help="the calibration's share of each two-sided test given to its minor "
                        "tail, in (0, 0.5] (default 0.3; see oodguard calibrate --help)")
    p.add_argument("--arch", choices=("auto", "mlp", "conv1d", "conv2d"), default="auto",
                   help="auto: an MLP for vectors (d,), a 1-D conv net for sequences (C, L), a "
                        "conv net for images (C, H, W)")
    p.add_argument("--latent", type=count_arg, help="bottleneck size (default: round(sqrt(d)) "
                   "in [2, 64])")
    p.add_argument("--max-epochs", type=count_arg,
                   help="most training epochs (default: by the data's size); early stopping "
                        "on a holdout of TRAIN usually ends sooner")
    p.add_argument("--steps", type=count_arg, default=32,
                   help="latent steps T fused into the graph")
    p.add_argument("--seed", type=int, default=0, help="seed of training, export and "
                   "calibration")
    p.add_argument("--threads", type=count_arg, help="torch threads while training")


@command("fit", _fit_args)
def _fit(a: argparse.Namespace) -> int:
    """Train an autoencoder on TRAIN, export it and calibrate it on --val into a bundle."""
    training = optional("oodguard.training", "oodguard fit", "fit,cpu")
    from oodguard.bundle.store import check_destination

    check_destination(a.out, overwrite=a.overwrite)  # before reading or training anything
    t0 = time.perf_counter()
    x_train = load_inputs(a.inputs, a, None).x
    x_val = load_inputs(a.val, a, tuple(x_train.shape[1:])).x
    recipe = None
    if a.max_epochs is not None:
        import dataclasses

        arch = a.arch if a.arch != "auto" else training.choose_arch(tuple(x_train.shape[1:]))
        recipe = dataclasses.replace(training.default_recipe(len(x_train), arch),
                                     max_epochs=a.max_epochs)
    guard = training.fit(x_train, x_val, out=a.out, overwrite=a.overwrite, alpha=a.alpha,
                         minor_tail=a.minor_tail, arch=a.arch, latent=a.latent, recipe=recipe,
                         steps=a.steps, seed=a.seed, threads=a.threads, registry=None,
                         progress=None if not a.quiet else False)
    trained = guard.bundle.manifest.dynamics["training"]
    sc = guard.scorer
    print(json.dumps({"bundle": str(a.out), "alpha": sc.alpha, "threshold": sc.threshold,
                      "features": [sc.feature_names[i] for i in sc.used],
                      "arch": trained["arch"], "latent": trained["latent"],
                      "epochs": trained["result"]["epochs"],
                      "best_epoch": trained["result"]["best_epoch"],
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0
