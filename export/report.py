"""What :func:`oodguard.export.export_bundle` returns: :class:`ExportReport`, a short summary
when printed, the details behind its attributes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oodguard.export.attractors import AttractorReport
from oodguard.export.baselines import LatentBaselines
from oodguard.export.parity import ParityReport

__all__ = ["ExportReport"]


@dataclass(frozen=True, eq=False, repr=False)
class ExportReport:
    """What :func:`export_bundle` wrote. ``print(report)`` gives a short summary
    (:meth:`summary`); the details are the attributes: ``attractors`` (discovery),
    ``parity`` (per feature), ``baselines``, ``dynamics`` (the manifest's record: contraction,
    stability, discovery, model) and ``warnings`` (also logged)."""

    path: Path
    attractors: AttractorReport
    parity: ParityReport
    baselines: LatentBaselines
    dynamics: dict[str, Any]
    onnx_bytes: int
    export_seconds: float
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        """About a dozen lines: what was exported, how the map behaves, parity, warnings."""
        a, p = self.attractors, self.parity
        c = self.dynamics.get("contraction", {})
        stab = self.dynamics.get("stability", {})
        unstable = [k for k, v in stab.items() if not v.get("stable", True)]
        ratio = (c.get("step_ratio_quantiles") or {}).get("0.5")
        worst = max(p.max_abs_diff.items(), key=lambda kv: kv[1], default=("-", 0.0))
        lines = [
            f"bundle {self.path} (model.onnx {self.onnx_bytes / 1e6:.2f} MB, exported in "
            f"{self.export_seconds:.1f}s)",
            f"T = {c.get('steps', '?')} steps, latent size {a.attractors.shape[1]}, "
            f"{len(p.max_abs_diff)} features",
            f"attractors: {len(a.attractors)} from {a.n_data} training codes "
            f"({a.n_data_converged} converged within {a.max_steps} steps) and {a.n_noise} "
            f"Gaussian codes ({a.n_noise_converged} converged); tol {a.tol:.3g}",
            f"within T: {100 * c.get('converged_fraction', 0.0):.0f}% of "
            f"{c.get('n_codes', 0)} training codes converge; step ratio median "
            + ("-" if ratio is None else f"{ratio:.3g}")
            + f", {100 * c.get('expanding_fraction', 0.0):.0f}% of steps expanding",
            f"latent baselines: kNN k={self.baselines.k} over {len(self.baselines.initial.bank)} "
            "training codes, Mahalanobis (Ledoit-Wolf)",
            f"parity vs torch: {'ok' if p.ok else 'FAILED'} on {p.n} inputs (rtol {p.rtol:g}, "
            f"atol {p.atol:g}); largest |diff| {worst[0]} {worst[1]:.2g}",
            f"numerically stable features: {len(stab) - len(unstable)} of {len(stab)}"
            + (f" (unstable, left out of calibration: {', '.join(unstable)})" if unstable
               else ""),
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append("details: .attractors, .parity, .baselines, .dynamics, .warnings")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return (f"ExportReport(path={str(self.path)!r}, "
                f"attractors={len(self.attractors.attractors)}, parity_ok={self.parity.ok}, "
                f"warnings={len(self.warnings)})")
