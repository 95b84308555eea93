"""``oodguard drift``: replay a stream offline through a guard's drift monitor and write the
evidence over time (JSON) and, with ``--plot``, a picture that marks the alarm.

The rows are checked in the file's order, ``--batch-size`` at a time; the evidence is recorded
after each batch and the alarm row is exact whatever the batch size (the monitor is
batch-invariant, see :mod:`oodguard.drift`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from oodguard.cli.base import command, count_arg, optional, probability_arg
from oodguard.cli.inputs import add_input_args, load_inputs
from oodguard.cli.runtime import calibrated_bundle

__all__: list[str] = []



def _drift_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="a calibrated bundle directory")
    p.add_argument("stream", type=Path,
                   help="the inputs in stream order: .npy, .npz, IDX file or image folder")
    add_input_args(p, positional=False)
    p.add_argument("--false-alarm", type=probability_arg, default=0.05, metavar="EPS",
                   help="probability of any false alarm over an unbounded stream")
    p.add_argument("--statistic", choices=("martingale", "shiryaev_roberts", "cusum"),
                   default="martingale",
                   help="martingale (a probability, the default) or an average-run-length "
                        "detector of the same bets (needs --arl); docs/drift.md")
    p.add_argument("--arl", type=float, help="alarm threshold of shiryaev_roberts / cusum: a "
                   "lower bound on the mean rows to a false alarm")
    p.add_argument("--batch-size", type=count_arg, default=64,
                   help="rows per check; the evidence is recorded after each")
    p.add_argument("--output", "-o", type=Path, metavar="FILE",
                   help="write the JSON here (default: stdout)")
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="draw the evidence over the rows, the threshold and the alarm")
    p.add_argument("--providers", default="auto",
                   help="ONNX Runtime execution providers: auto, cpu or cuda")


@command("drift", _drift_args)
def _drift(a: argparse.Namespace) -> int:
    """Replay a stream through the drift monitor: evidence over time (JSON), alarm, plot."""
    from oodguard.drift import DriftSettings
    from oodguard.errors import InvalidParameterError
    from oodguard.guard import Guard

    try:
        settings = DriftSettings(false_alarm=a.false_alarm, statistic=a.statistic, arl=a.arl)
    except InvalidParameterError as err:
        print(f"oodguard drift: {err}", file=sys.stderr)
        return 2
    plt = None
    if a.plot is not None:
        plotting = optional("oodguard.calibration.plotting", "drift --plot", "demo")
        optional("matplotlib", "drift --plot", "demo")
        plt = plotting
    bundle = calibrated_bundle(a.bundle, "drift")
    guard = Guard(bundle, providers=a.providers, registry=None, drift=settings)
    monitor = guard.drift
    if monitor is None:  # set above; narrows the type
        raise RuntimeError("the guard has no drift monitor")
    x = load_inputs(a.stream, a, guard.input_spec.shape).x
    evidence: list[list[float | None]] = []
    flagged = 0
    for i in range(0, len(x), a.batch_size):
        flagged += guard.check(x[i:i + a.batch_size]).n_ood
        e = monitor.evidence
        evidence.append([min(i + a.batch_size, len(x)), e if math.isfinite(e) else None])
    s = monitor.state()
    doc: dict[str, Any] = {
        "bundle": str(a.bundle), "stream": str(a.stream), "rows": len(x),
        "settings": settings.to_dict(), "threshold_log10": s.threshold,
        "alarm": s.alarm, "alarm_row": s.rows_at_alarm, "flagged_rows": flagged,
        "evidence_log10": evidence,
    }
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    if a.output is None:
        sys.stdout.write(text)
    else:
        tmp = a.output.with_name(f".{a.output.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, a.output)  # a reader never sees half a file
    if plt is not None:
        _plot(plt, doc, a.plot)
    where = f"at row {s.rows_at_alarm}" if s.alarm else "none"
    print(f"{len(x)} rows, alarm: {where} (evidence log10 {s.evidence:.3g}, threshold "
          f"{s.threshold:.3g})", file=sys.stderr)
    return 0


def _plot(plotting: Any, doc: dict[str, Any], path: Path) -> None:
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    rows = [r for r, e in doc["evidence_log10"] if e is not None]
    ev = [e for _, e in doc["evidence_log10"] if e is not None]
    ax.plot(rows, ev, lw=1.2, label="evidence (log10)")
    ax.axhline(doc["threshold_log10"], color="k", ls="--", lw=1, label="alarm threshold")
    if doc["alarm"]:
        ax.axvline(doc["alarm_row"], color="tab:red", lw=1.2,
                   label=f"alarm at row {doc['alarm_row']}")
    ax.set(xlabel="row", ylabel="log10 of the test statistic",
           title=f"drift: {Path(doc['stream']).name} ({doc['settings']['statistic']})")
    ax.legend(fontsize=8)
    plotting.save_figure(plt, fig, path)
