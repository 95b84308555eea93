"""The offline commands: ``demo`` (torch, scikit-learn, pillow, matplotlib), ``calibrate``
and ``evaluate`` (scikit-learn)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from oodguard.cli.base import alpha_arg, command, optional, tail_share_arg
from oodguard.cli.inputs import add_input_args, load_inputs
from oodguard.cli.runtime import calibrated_bundle

__all__: list[str] = []

log = logging.getLogger("oodguard.cli")

# Fewer OOD examples than this make the feature selection's AUROCs noise (one sample moves
# an AUROC by 1/n); calibration still runs, with a warning.
MIN_OOD_SAMPLES = 20


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("oodguard-demo"),
                   help="output folder (bundle/, report.json, plots)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous run in --out (without it a non-empty --out is "
                        "refused before training)")
    p.add_argument("--steps", type=int, default=32, help="latent steps T fused into the graph")
    p.add_argument("--alpha", type=alpha_arg, default=0.05, help="target false-positive rate")
    p.add_argument("--epochs", type=int, default=400, help="autoencoder training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, training and export")
    p.add_argument("--corruption", choices=("noise", "mask"), default="noise",
                   help="training corruption: Gaussian noise (denoising) or MAE-like masking")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--resample", type=int, default=20,
                   help="re-drawn validation/test splits for the variance check (0: skip)")


@command("demo", _demo_args)
def _demo(a: argparse.Namespace) -> int:
    """Train, export, calibrate and evaluate on scikit-learn's digits; print the table."""
    # Checked before anything runs: scikit-learn's sample images need pillow, the plots
    # matplotlib; without them the demo would die minutes in, deep inside a loader.
    optional("PIL", "the demo", "demo,cpu")
    if not a.no_plots:
        optional("matplotlib", "the demo's plots (or pass --no-plots)", "demo,cpu")
    demo = optional("oodguard.demo.run", "the demo", "demo,cpu")
    demo.run_demo(a.out, steps=a.steps, alpha=a.alpha, epochs=a.epochs, seed=a.seed,
                  plots=not a.no_plots, resample=a.resample, corruption=a.corruption,
                  overwrite=a.overwrite)
    return 0


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="an exported bundle directory")
    add_input_args(p)
    p.add_argument("--alpha", type=alpha_arg, default=0.05, help="target false-positive rate")
    p.add_argument("--ood", type=Path,
                   help=f"optional OOD validation inputs for the feature selection (at least "
                        f"{MIN_OOD_SAMPLES} samples; default: synthetic outliers)")
    p.add_argument("--select", choices=("auto", "all"), default="auto",
                   help="auto: select features and directions; all: every feature, two-sided")
    p.add_argument("--minor-tail", type=tail_share_arg, metavar="SHARE",
                   help="share of each two-sided test given to its minor tail, in (0, 0.5] "
                        "(default 0.3; 0.5: equal tails; lower, e.g. 0.1, when the inputs to "
                        "catch are worse reconstructed or farther than usual, see "
                        "docs/calibration.md)")
    p.add_argument("--out", type=Path,
                   help="write the calibrated bundle here (default: in place, atomically); a "
                        "file or a non-bundle directory is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="allow --out to replace an existing bundle")
    p.add_argument("--seed", type=int, default=0, help="seed of the fit/calibration split")


@command("calibrate", _calibrate_args)
def _calibrate(a: argparse.Namespace) -> int:
    """Calibrate a bundle on in-distribution validation inputs from a file."""
    calibrate = optional("oodguard.calibration", "calibrate", "calibrate").calibrate
    from oodguard.bundle import read_bundle

    shape = read_bundle(a.bundle).manifest.input.shape
    x_ood = None
    if a.ood is not None:
        x_ood = load_inputs(a.ood, a, shape).x
        if len(x_ood) < MIN_OOD_SAMPLES:
            log.warning(
                "--ood %s holds only %d samples: the feature selection's AUROCs from so few "
                "move by 1/%d per sample. Pass at least %d OOD samples, or leave --ood out to "
                "select on synthetic outliers", a.ood, len(x_ood), max(len(x_ood), 1),
                MIN_OOD_SAMPLES)
    report = calibrate(a.bundle, load_inputs(a.inputs, a, shape).x, alpha=a.alpha, x_ood=x_ood,
                       select=a.select, minor_tail=a.minor_tail, out=a.out,
                       overwrite=a.overwrite, seed=a.seed)
    used = [report.scorer.feature_names[i] for i in report.scorer.used]
    print(json.dumps({"bundle": str(report.path), "alpha": a.alpha, "threshold": report.threshold,
                      "n_fit": report.n_fit, "n_cal": report.n_cal, "features": used,
                      "warnings": list(report.warnings)}))
    return 0


def _ood_arg(value: str) -> tuple[str, Path]:
    """Parse ``--ood NAME=PATH``."""
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path:
        raise argparse.ArgumentTypeError(
            f"expected NAME=PATH (e.g. --ood noise=noise.npy), got {value!r}")
    return name.strip(), Path(path)


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a calibrated bundle directory")
    p.add_argument("--in", dest="inputs", type=Path, required=True, metavar="ID",
                   help="in-distribution inputs not used for calibration (.npy, .npz, IDX "
                        "file or image folder)")
    p.add_argument("--ood", type=_ood_arg, action="append", required=True, metavar="NAME=PATH",
                   help="an OOD set (repeat for several)")
    p.add_argument("--out", type=Path, default=Path("oodguard-evaluation"),
                   help="folder for evaluation.json and the plots")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out folder that is not a previous evaluation")
    p.add_argument("--alpha", type=alpha_arg, help="target false-positive rate "
                   "(default: the calibrated one)")
    add_input_args(p, positional=False)
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--providers", default="auto",
                   help="ONNX Runtime execution providers: auto (CUDA when available, else "
                        "CPU), cpu or cuda")


def _evaluation_out(out: Path, overwrite: bool) -> str | None:
    """Why ``out`` must not be written to, or None. A previous evaluation (its
    ``evaluation.json`` carries the ``oodguard_evaluation`` marker) may be replaced."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder"
    if not out.is_dir() or overwrite or not any(out.iterdir()):
        return None
    try:
        previous = json.loads((out / "evaluation.json").read_text())
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and "oodguard_evaluation" in previous:
        return None
    return (f"--out {out} is a non-empty folder that holds no previous evaluation; "
            "pick another folder or pass --overwrite to write into it")


@command("evaluate", _evaluate_args)
def _evaluate(a: argparse.Namespace) -> int:
    """Measure detection (AUROC, AUPR, FPR95, the calibrated operating point) on your data."""
    names = [name for name, _ in a.ood]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        print(f"oodguard evaluate: --ood names must be unique; {dup} given more than once",
              file=sys.stderr)
        return 2
    problem = _evaluation_out(a.out, a.overwrite)
    if problem:
        print(f"oodguard evaluate: {problem}", file=sys.stderr)
        return 2
    for flag, path in [("--in ", a.inputs)] + [(f"--ood {n}=", p) for n, p in a.ood]:
        if not path.exists():
            raise FileNotFoundError(f"{flag}{path}: no such file or folder")
    ev = optional("oodguard.calibration.evaluate", "evaluate", "calibrate")
    if not a.no_plots:
        plots = optional("oodguard.calibration.evaluation_plots", "evaluate", "demo")
        optional("matplotlib", "evaluate's plots (or pass --no-plots)", "demo")
    bundle = calibrated_bundle(a.bundle, "evaluate")
    shape = bundle.manifest.input.shape
    log.info("loading %s and %d OOD set(s)", a.inputs, len(a.ood))
    x_in = load_inputs(a.inputs, a, shape).x
    ood = {n: load_inputs(p, a, shape).x for n, p in a.ood}
    from oodguard.guard import Guard

    guard = Guard(bundle, providers=a.providers, registry=None)
    report = ev.evaluate(guard, x_in, ood, alpha=a.alpha)
    doc = report.to_dict()
    doc["inputs"] = {"bundle": str(a.bundle), "in": str(a.inputs),
                     "ood": {n: str(p) for n, p in a.ood}, "scale": a.scale}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "evaluation.json").write_text(json.dumps(doc, indent=2) + "\n")
    written = [a.out / "evaluation.json"]
    if not a.no_plots:
        written += plots.plot_evaluation(report, a.out)
    print(report.table())
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
