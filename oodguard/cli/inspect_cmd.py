"""``oodguard inspect``: the latent map's attractors, convergence, contraction and memorization,
from a bundle's optional inspection files (:mod:`oodguard.inspect`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from oodguard.cli.base import command, optional
from oodguard.cli.inputs import add_input_args, load_inputs

__all__: list[str] = []

log = logging.getLogger("oodguard.cli")

REPORT_FILE = "inspection.json"
TRAJECTORIES = 8


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a bundle exported with its inspection files")
    p.add_argument("--data", type=Path, metavar="TRAIN",
                   help="the model's training inputs: re-measure everything on them, with the "
                        "memorization coefficient against them (default: the report measured "
                        "at export time, stored in the bundle)")
    add_input_args(p, positional=False)
    p.add_argument("--out", type=Path, default=Path("oodguard-inspection"),
                   help=f"folder for {REPORT_FILE} and the pictures")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an existing non-empty --out folder")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG pictures")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the subsample and noise codes (with --data)")


def _out_problem(out: Path, overwrite: bool) -> str | None:
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder"
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        return (f"--out {out} exists and is not empty; pick another folder or pass "
                "--overwrite to write into it")
    return None


@command("inspect", _inspect_args)
def _inspect(a: argparse.Namespace) -> int:
    """Inspect a bundle's latent map: attractors, basins, convergence, memorization."""
    problem = _out_problem(a.out, a.overwrite)
    if problem:
        print(f"oodguard inspect: {problem}", file=sys.stderr)
        return 2
    if a.data is not None and not a.data.exists():
        raise FileNotFoundError(f"--data {a.data}: no such file or folder")
    ins = optional("oodguard.inspect", "inspect", "cpu")
    if not a.no_plots:
        plots = optional("oodguard.inspect.plots", "inspect's pictures (or pass --no-plots)",
                         "demo,cpu")
    bundle, latent, report = ins.load_inspection(a.bundle)
    source = "export-time report stored in the bundle"
    if a.data is not None:
        from oodguard.validation import validate_batch

        x, _ = validate_batch(load_inputs(a.data, a, bundle.manifest.input.shape).x,
                              bundle.manifest.input, nonfinite="raise")
        log.info("inspecting on %d inputs from %s", len(x), a.data)
        report = ins.inspect_map(latent, x_train=x, horizon=bundle.manifest.steps, seed=a.seed)
        source = f"measured now on {a.data}"
    doc = {**report.to_dict(), "bundle": str(a.bundle),
           "data": None if a.data is None else str(a.data), "source": source}

    def write(folder: Path) -> list[Path]:  # all files or none (a failure leaves --out as it was)
        (folder / REPORT_FILE).write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
        if a.no_plots:
            return [folder / REPORT_FILE]
        # long enough for most training codes to arrive (the 90th percentile of their steps)
        steps = max(bundle.manifest.steps, int(np.quantile(report.steps_train, 0.9)))
        paths = ins.trajectory(latent.step, report.codes[:TRAJECTORIES], steps)
        return [folder / REPORT_FILE, *plots.plot_inspection(report, paths, folder)]

    written = [str(p) for p in ins.write_all_or_nothing(a.out, write)]
    print(f"bundle {a.bundle} ({source})")
    print(report.summary())
    print("wrote " + ", ".join(written))
    return 0
