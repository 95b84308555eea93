"""One inspection of a latent map: :func:`inspect_map` ▶ :class:`InspectionReport`.

The report holds the attractors (and their decoded inputs), the basin sizes from training
codes and from data-free Gaussian codes, how many trajectories converged (within the bundle's
``T`` and within the step budget) and how fast, the contraction ratios at training codes and
the memorization coefficient. It round-trips through ``inspection.npz`` (the exporter stores
the export-time report in the bundle) and writes a JSON summary.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oodguard.inspect.iteration import Discovery, basins_of, discover
from oodguard.inspect.latent_map import LatentMap
from oodguard.inspect.measures import contraction_ratios, memorization_coefficient

__all__ = ["FORMAT_VERSION", "InspectionReport", "inspect_map", "report_from_discovery"]

STANDARD_NOISE = "Gaussian N(0, I)"

FORMAT_VERSION = 1
_ARRAYS = ("attractors", "decoded", "basin_train", "basin_noise", "memorization",
           "nearest_train", "lipschitz", "step_ratio", "steps_train", "steps_noise", "codes")


def _quantiles(a: np.ndarray) -> dict[str, float]:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return {}
    q = np.quantile(a, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"min": float(a.min()), "p5": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "p95": float(q[4]),
            "max": float(a.max()), "mean": float(a.mean())}


@dataclass(frozen=True, eq=False)
class InspectionReport:
    """What :func:`inspect_map` measured. Arrays are per attractor ``(K, …)`` or per code.

    Attributes
    ----------
    attractors : ndarray of float32, shape (K, d)
        Distinct attractors, largest basin first.
    decoded : ndarray of float32, shape (K, *input_shape)
        ``D(z*)`` of each attractor.
    basin_train, basin_noise : ndarray of int, shape (K,)
        Converged training codes / Gaussian codes that ended in each basin (``N(0, I)``, or at
        export the exporter's Gaussian fitted to the training codes: ``scalars["noise_codes"]``).
    memorization : ndarray of float64, shape (K,)
        ``max_x cos(D(z*), x)`` over the training samples (NaN where no training samples were
        given); summarised over the attractors reached from training codes, as in the paper.
    nearest_train : ndarray of int, shape (K,)
        Index of that closest training sample (-1 without training samples).
    lipschitz, step_ratio : ndarray of float64, shape (n,)
        Contraction at training codes (see :func:`~oodguard.inspect.contraction_ratios`).
    steps_train, steps_noise : ndarray of int
        Steps to convergence per code (``max_steps`` where never).
    codes : ndarray of float32, shape (n, d)
        The training codes inspected (a seeded subsample of at most ``max_codes``).
    scalars : dict
        ``latent_dim``, ``scale`` (median training-code norm), ``tol``, ``merge_radius``,
        ``max_steps``, ``horizon`` (the bundle's T, or None), counts of codes and of converged
        codes (``n_train`` counts every training code iterated; ``codes`` may hold fewer),
        ``noise_codes``, ``memorization_source``.
    """

    attractors: np.ndarray
    decoded: np.ndarray
    basin_train: np.ndarray
    basin_noise: np.ndarray
    memorization: np.ndarray
    nearest_train: np.ndarray
    lipschitz: np.ndarray
    step_ratio: np.ndarray
    steps_train: np.ndarray
    steps_noise: np.ndarray
    codes: np.ndarray
    scalars: dict[str, Any] = field(default_factory=dict)

    @property
    def attractor_count(self) -> int:
        return len(self.attractors)

    @property
    def train_attractors(self) -> np.ndarray:
        """Boolean mask of the attractors reached from training codes."""
        return self.basin_train > 0

    @property
    def memorization_mean(self) -> float:
        m = self.memorization[self.train_attractors]
        return float(m.mean()) if len(m) and np.isfinite(m).all() else float("nan")

    @property
    def memorization_std(self) -> float:
        m = self.memorization[self.train_attractors]
        return float(m.std()) if len(m) and np.isfinite(m).all() else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON summary (no NaN: missing numbers are ``None``)."""
        s = self.scalars
        horizon = s.get("horizon")
        doc: dict[str, Any] = {
            "oodguard_inspection": FORMAT_VERSION,
            **s,
            "attractor_count": self.attractor_count,
            "attractors_from_train": int((self.basin_train > 0).sum()),
            "attractors_from_noise": int((self.basin_noise > 0).sum()),
            "basins": [
                {"train": int(t), "noise": int(n),
                 "memorization": _num(m), "nearest_train": int(j)}
                for t, n, m, j in zip(self.basin_train, self.basin_noise, self.memorization,
                                      self.nearest_train, strict=True)
            ],
            "convergence": {
                src: {
                    "fraction_converged": _num(s[f"converged_{src}"] / max(len(st), 1)),
                    "fraction_within_horizon": _num(
                        float((st <= horizon).mean()) if horizon and len(st) else float("nan")),
                    "steps_to_converge": _quantiles(st[st < s["max_steps"]]),
                }
                for src, st in (("train", self.steps_train), ("noise", self.steps_noise))
            },
            "contraction": {
                "lipschitz": _quantiles(self.lipschitz),
                "fraction_lipschitz_below_1": _num(_frac_below(self.lipschitz, 1.0)),
                "step_ratio": _quantiles(self.step_ratio),
                "fraction_step_ratio_below_1": _num(_frac_below(self.step_ratio, 1.0)),
            },
            "memorization": {"mean": _num(self.memorization_mean),
                             "std": _num(self.memorization_std),
                             "definition": "max over training samples x of cos(D(z*), x), "
                                           "mean and std over the attractors reached from "
                                           "training codes"},
        }
        return doc

    def summary(self) -> str:
        """A few lines for a terminal."""
        d = self.to_dict()
        s = self.scalars
        conv = d["convergence"]
        lines = [
            f"latent size {s['latent_dim']}; {self.attractor_count} attractors "
            f"({d['attractors_from_train']} reached from {s['n_train']} training codes, "
            f"{d['attractors_from_noise']} from {s['n_noise']} "
            f"{s.get('noise_codes', STANDARD_NOISE)} codes)",
            "largest basins (train/noise codes): " + ", ".join(
                f"{b['train']}/{b['noise']}" for b in d["basins"][:8]),
        ]
        for src in ("train", "noise"):
            c = conv[src]
            med = c["steps_to_converge"].get("median")
            within = (f", {_pct(c['fraction_within_horizon'])} within T={s['horizon']}"
                      if s.get("horizon") else "")
            lines.append(
                f"{src} codes: {_pct(c['fraction_converged'])} converged within "
                f"{s['max_steps']} steps (tol {s['tol']:.3g}){within}; median steps "
                f"{'-' if med is None else f'{med:.0f}'}")
        lip = d["contraction"]["lipschitz"].get("median", float("nan"))
        ratio = d["contraction"]["step_ratio"].get("median", float("nan"))
        lines.append(
            f"contraction at training codes: local Lipschitz median {lip:.3g} "
            f"({_pct(d['contraction']['fraction_lipschitz_below_1'])} below 1), step ratio "
            f"median {ratio:.3g}")
        m = d["memorization"]
        lines.append(
            "memorization coefficient: " + (
                "not measured (no training samples)" if m["mean"] is None else
                f"{m['mean']:.3f} ± {m['std']:.3f} over {d['attractors_from_train']} "
                f"training attractors ({s['memorization_source']})"))
        return "\n".join(lines)

    def to_npz(self) -> bytes:
        """``inspection.npz``: the arrays, and the scalars as JSON (no pickle)."""
        buf = io.BytesIO()
        arrays = {k: getattr(self, k) for k in _ARRAYS}
        np.savez_compressed(
            buf, format_version=np.array(FORMAT_VERSION),
            scalars=np.array(json.dumps(self.scalars, allow_nan=False)), **arrays)
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> InspectionReport:
        """Read ``inspection.npz``.

        Raises
        ------
        ValueError
            Not an inspection file, a newer format than this oodguard reads, or a missing or
            mis-shaped array (the message says which).
        """
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                version = int(z["format_version"])
                arrays = ({k: np.asarray(z[k]) for k in _ARRAYS}
                          if version <= FORMAT_VERSION else {})
                scalars = json.loads(str(z["scalars"])) if version <= FORMAT_VERSION else {}
        except (KeyError, OSError, EOFError, ValueError, TypeError) as err:
            raise ValueError(f"inspection.npz is not an oodguard inspection file: {err}") \
                from err
        if version > FORMAT_VERSION:
            raise ValueError(f"inspection.npz has format version {version}, newer than the "
                             f"{FORMAT_VERSION} this oodguard reads; upgrade oodguard")
        k = len(arrays["attractors"])
        for name in ("decoded", "basin_train", "basin_noise", "memorization", "nearest_train"):
            if len(arrays[name]) != k:
                raise ValueError(f"inspection.npz: {name} has {len(arrays[name])} rows, "
                                 f"attractors {k}")
        if not isinstance(scalars, dict):
            raise ValueError("inspection.npz: scalars is not a JSON object")
        return cls(**arrays, scalars=scalars)


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _frac_below(a: np.ndarray, bound: float) -> float:
    a = a[np.isfinite(a)]
    return float((a < bound).mean()) if len(a) else float("nan")


def inspect_map(
    latent: LatentMap,
    *,
    x_train: np.ndarray | None = None,
    codes: np.ndarray | None = None,
    n_noise: int = 256,
    rel_tol: float = 1e-3,
    rel_merge_radius: float = 0.05,
    rel_eps: float = 1e-2,
    max_steps: int = 500,
    max_codes: int = 1024,
    horizon: int | None = None,
    seed: int = 0,
) -> InspectionReport:
    """Inspect the latent map: attractors, basins, convergence, contraction, memorization.

    Parameters
    ----------
    latent : LatentMap
    x_train : ndarray, shape (N, *input_shape), optional
        Training samples: their codes (a seeded subsample of at most ``max_codes``) are
        iterated, and all of them are the reference of the memorization coefficient.
    codes : ndarray of float32, shape (n, d), optional
        Training codes to iterate when ``x_train`` is not given (the bundle stores some); the
        memorization coefficient is then not measured (NaN).
    n_noise : int
        Data-free codes drawn from ``N(0, I)``; their attractors are reported separately.
    rel_tol, rel_merge_radius, rel_eps : float
        Convergence tolerance, merge radius of attractors and the finite-difference step of
        the Lipschitz estimate, relative to the median training-code norm (the exporter's
        convention, so counts agree with the bundle's).
    horizon : int, optional
        The bundle's ``T``: the report says which fraction converged within it.

    The training and noise codes are iterated together by :func:`~oodguard.inspect.discover`,
    the same discovery the exporter runs.
    """
    rng = np.random.default_rng(seed)
    if x_train is not None:
        x = np.ascontiguousarray(x_train, dtype=np.float32)
        pick = np.sort(rng.choice(len(x), size=min(len(x), max_codes), replace=False))
        codes = latent.encode(x[pick])
    elif codes is None:
        raise ValueError("pass x_train (training samples) or codes (training codes)")
    codes = np.ascontiguousarray(codes, dtype=np.float32)
    if codes.ndim != 2 or len(codes) == 0:
        raise ValueError(f"codes must be a non-empty (n, d) array; got shape {codes.shape}")
    scale = float(np.median(np.linalg.norm(codes, axis=1)))
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"training codes have median norm {scale}; the encoder looks broken")
    noise = rng.standard_normal((n_noise, codes.shape[1])).astype(np.float32)
    found = discover(latent.step, {"train": codes, "noise": noise}, tol=rel_tol * scale,
                     radius=rel_merge_radius * scale, max_steps=max_steps)
    return report_from_discovery(latent, found, x_train=x_train, scale=scale, rel_eps=rel_eps,
                                 horizon=horizon, seed=seed, noise=STANDARD_NOISE)


def report_from_discovery(
    latent: LatentMap,
    found: Discovery,
    *,
    x_train: np.ndarray | None,
    scale: float,
    rel_eps: float = 1e-2,
    horizon: int | None = None,
    seed: int = 0,
    noise: str = STANDARD_NOISE,
    max_stored_codes: int | None = None,
) -> InspectionReport:
    """The report of a discovery already run (sources ``"train"`` and ``"noise"``): its
    attractors, decoded, their basins, convergence, contraction at the training codes and the
    memorization coefficient against ``x_train`` (NaN without it).

    ``noise`` names where the noise codes came from. The report keeps at most
    ``max_stored_codes`` training codes (a seeded subsample; default all) and the contraction
    is measured at those; convergence counts cover every code iterated.
    """
    train, noise_run = found.runs["train"], found.runs["noise"]
    codes = found.sources["train"]
    basins = basins_of(found)
    decoded = (latent.decode(basins.attractors) if basins.count
               else np.empty((0, *latent.input_shape), np.float32))
    if x_train is not None and basins.count:
        mem = memorization_coefficient(decoded, x_train)
        memorization, nearest = mem.per_attractor, mem.nearest
    else:
        memorization = np.full(basins.count, np.nan)
        nearest = np.full(basins.count, -1, dtype=np.int64)
    stored = codes
    if max_stored_codes is not None and len(codes) > max_stored_codes:
        rng = np.random.default_rng(seed)
        stored = codes[np.sort(rng.choice(len(codes), max_stored_codes, replace=False))]
    lip, ratio = contraction_ratios(latent.step, stored, eps=rel_eps * scale, seed=seed)
    scalars = {
        "latent_dim": int(codes.shape[1]), "scale": scale, "tol": found.tol,
        "merge_radius": found.radius, "max_steps": found.max_steps, "horizon": horizon,
        "n_train": len(codes), "n_noise": len(noise_run.steps), "noise_codes": noise,
        "converged_train": int(train.converged.sum()),
        "converged_noise": int(noise_run.converged.sum()),
        "diverged": int((~train.finite).sum() + (~noise_run.finite).sum()),
        "memorization_source": "training samples" if x_train is not None else "not measured",
        "seed": int(seed),
    }
    return InspectionReport(
        attractors=basins.attractors, decoded=decoded, basin_train=basins.sizes["train"],
        basin_noise=basins.sizes["noise"], memorization=memorization, nearest_train=nearest,
        lipschitz=lip, step_ratio=ratio, steps_train=train.steps,
        steps_noise=noise_run.steps, codes=stored, scalars=scalars)
