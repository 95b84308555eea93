"""Export: trajectory module ▶ ONNX ▶ checker ▶ parity against torch ▶ bundle."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from oodguard.bundle import MODEL_FILE, InputSpec, Manifest, write_bundle
from oodguard.errors import ExportError
from oodguard.export.attractors import AttractorReport, discover_attractors
from oodguard.export.autoencoder import as_encoder_decoder
from oodguard.export.baselines import (
    DEFAULT_KNN_K,
    DEFAULT_MAX_BANK,
    LatentBaselines,
    fit_latent_baselines,
)
from oodguard.export.parity import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    FP16_ATOL,
    FP16_RTOL,
    ParityReport,
    check_parity,
)
from oodguard.export.rewrite import rewrite_elu_nodes, with_fast_elu
from oodguard.export.trajectory import TrajectoryFeatures

__all__ = ["ExportReport", "export_bundle", "export_onnx", "rewrite_elu_nodes"]

log = logging.getLogger(__name__)

INPUT_NAME = "x"
OUTPUT_NAME = "features"


@dataclass(frozen=True, eq=False)
class ExportReport:
    path: Path
    attractors: AttractorReport
    parity: ParityReport
    baselines: LatentBaselines
    onnx_bytes: int
    export_seconds: float


def export_onnx(
    module: TrajectoryFeatures, example: torch.Tensor, *, rewrite_elu: bool = True
) -> bytes:
    """Export the trajectory module with a dynamic batch axis; returns the model bytes,
    checked by ``onnx.checker`` (full check, with shape inference).

    ``rewrite_elu`` gives batches large enough to gain from it a copy of the graph whose ``Elu``
    nodes are replaced by an equal, faster expression (see :mod:`oodguard.export.rewrite`).
    """
    batch = torch.export.Dim("batch", min=1)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, MODEL_FILE)
        # The exporter and onnxscript's optimizer log every rewrite; keep the user's log clean.
        noisy = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir", "torch")]
        levels = [lg.level for lg in noisy]
        for lg in noisy:
            lg.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(
                    module,
                    (example,),
                    path,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamo=True,
                    external_data=False,
                    dynamic_shapes={"x": {0: batch}},
                    verbose=False,
                )
        except Exception as err:
            raise ExportError(
                f"torch.onnx.export failed for the trajectory graph ({type(err).__name__}: "
                f"{err}); the encoder/decoder must be traceable by torch.export"
            ) from err
        finally:
            for lg, lvl in zip(noisy, levels, strict=True):
                lg.setLevel(lvl)
        data = Path(path).read_bytes()
    model = onnx.load_from_string(data)
    if rewrite_elu:
        model = with_fast_elu(model)
        data = model.SerializeToString()
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"onnx.checker rejected the exported graph: {err}") from err
    return data


def _onnx_features(data: bytes, x: np.ndarray, *, by_row: bool) -> tuple[np.ndarray, ...]:
    """ONNX Runtime's features for the whole batch and, with ``by_row``, one row at a time
    (small batches take the graph's other branch, see :mod:`oodguard.export.rewrite`)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(x, dtype=np.float32)
    full = sess.run(None, {INPUT_NAME: x})[0]
    if not by_row:
        return (full,)
    rows = [sess.run(None, {INPUT_NAME: x[i : i + 1]})[0] for i in range(len(x))]
    return full, np.concatenate(rows)


def export_bundle(
    path: str | os.PathLike[str],
    *,
    x_train: np.ndarray,
    encoder: nn.Module | None = None,
    decoder: nn.Module | None = None,
    model: nn.Module | None = None,
    steps: int = 32,
    x_check: np.ndarray | None = None,
    rel_tol: float = 1e-3,
    rel_merge_radius: float = 0.05,
    n_noise: int = 256,
    max_attractors: int = 1024,
    parity_rtol: float | None = None,
    parity_atol: float | None = None,
    overwrite: bool = False,
    seed: int = 0,
    precision: str = "float32",
    rewrite_elu: bool = True,
    knn_k: int = DEFAULT_KNN_K,
    max_bank: int = DEFAULT_MAX_BANK,
) -> ExportReport:
    """Export a trained autoencoder to an (uncalibrated) bundle directory.

    Parameters
    ----------
    path : directory to write (atomically)
    x_train : ndarray of float32, shape (N, *input_shape)
        Training inputs, scaled as in training: attractors are discovered from their codes.
    encoder, decoder : nn.Module
        Or ``model`` with ``encode``/``decode`` methods. Codes must be (N, d).
    steps : int
        ``T``, the number of latent steps fused into the graph.
    x_check : ndarray, optional
        Inputs for the parity check; default up to 256 training inputs and 64 uniform-noise
        inputs over the training range (so off-distribution paths are checked too).
    parity_rtol, parity_atol : float, optional
        Parity tolerance (see :mod:`oodguard.export.parity`). The bundle is not written when
        any feature differs beyond it. Default ``DEFAULT_RTOL``/``DEFAULT_ATOL``, or
        ``FP16_RTOL``/``FP16_ATOL`` with ``precision="float16"``.
    precision : "float32" or "float16"
        ``"float16"`` runs the encoder and decoder in half precision inside the graph (for
        GPUs with fast fp16); inputs, the trajectory between steps and the features stay
        float32, so the bundle's signature is unchanged. Parity is then checked against the
        same half-precision module in torch, with the looser fp16 tolerance, and the worst
        deviation from the float32 features is recorded in the manifest
        (``parity.fp16_max_abs_diff_vs_fp32``).
    rewrite_elu : bool
        Give large batches a copy of the graph with a faster ``Elu`` behind an ``If`` on the
        batch size (see :mod:`oodguard.export.rewrite`; CPU speed). Turn it off for a GPU
        bundle meant for CUDA-graph capture, which cannot capture the ``If``.
    knn_k, max_bank : int
        ``k`` of the ``latent_knn``/``terminal_knn`` features and the most training codes kept
        in their banks (a seeded subsample beyond it; see :mod:`oodguard.export.baselines`).

    Raises
    ------
    ExportError
        The graph cannot be exported, fails ``onnx.checker`` or disagrees with torch.
    """
    t0 = time.perf_counter()
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    if x_train.ndim < 2 or len(x_train) == 0:
        raise ExportError(f"x_train must be a non-empty batch (N, ...); got {x_train.shape}")
    if not np.isfinite(x_train).all():
        raise ExportError("x_train holds NaN or infinity")
    enc, dec = as_encoder_decoder(model=model, encoder=encoder, decoder=decoder)
    with torch.inference_mode():
        probe = dec(enc(torch.from_numpy(x_train[:2])))
    if tuple(probe.shape) != x_train[:2].shape:
        raise ExportError(
            f"decoder(encoder(x)) has shape {tuple(probe.shape)} but x has {x_train[:2].shape}; "
            "the decoder must reconstruct the input's shape"
        )
    report = discover_attractors(
        enc, dec, x_train, n_noise=n_noise, rel_tol=rel_tol,
        rel_merge_radius=rel_merge_radius, max_attractors=max_attractors, seed=seed,
    )
    if precision not in ("float32", "float16"):
        raise ValueError(f"precision must be 'float32' or 'float16'. Got {precision!r}")
    half = precision == "float16"
    parity_rtol = parity_rtol if parity_rtol is not None else (FP16_RTOL if half else DEFAULT_RTOL)
    parity_atol = parity_atol if parity_atol is not None else (FP16_ATOL if half else DEFAULT_ATOL)
    baselines = fit_latent_baselines(enc, dec, x_train, steps=steps, k=knn_k, max_bank=max_bank,
                                     seed=seed, resolution=report.tol)
    module = TrajectoryFeatures(
        enc, dec, torch.from_numpy(report.attractors), steps=steps, tol=report.tol,
        baselines=baselines,
    ).eval()
    module32 = module
    if half:
        module = TrajectoryFeatures(
            _Half(enc), _Half(dec), torch.from_numpy(report.attractors), steps=steps,
            tol=report.tol, baselines=baselines,
        ).eval()
    if x_check is None:
        rng = np.random.default_rng(seed)
        lo, hi = float(x_train.min()), float(x_train.max())
        noise = rng.uniform(lo, hi, size=(64, *x_train.shape[1:])).astype(np.float32)
        x_check = np.concatenate([x_train[:256], noise])
    x_check = np.ascontiguousarray(x_check, dtype=np.float32)
    log.info("exporting the trajectory graph (T=%d, K=%d)", steps, len(report.attractors))
    data = export_onnx(module, torch.from_numpy(x_check[: min(len(x_check), 4)]),
                       rewrite_elu=rewrite_elu)
    onnx_features, *other_branch = _onnx_features(data, x_check, by_row=rewrite_elu)
    with torch.inference_mode():
        ref = module(torch.from_numpy(x_check)).numpy()
    parity = check_parity(module, onnx_features, x_check, rtol=parity_rtol, atol=parity_atol,
                          reference=ref)
    for small in other_branch:  # the manifest records the worse of both branches
        parity = parity.combine(check_parity(module, small, x_check, rtol=parity_rtol,
                                             atol=parity_atol, reference=ref))
    if not parity.ok:
        worst = {k: v for k, v in parity.failures.items() if v}
        raise ExportError(
            f"ONNX Runtime's features disagree with torch beyond the tolerance "
            f"(rtol={parity_rtol:g}, atol={parity_atol:g}) on {worst} of {parity.n} inputs; "
            f"max differences {parity.max_abs_diff}. The bundle was not written"
        )
    log.info("parity ok on %d inputs; max |diff| %s", parity.n,
             {k: f"{v:.2g}" for k, v in parity.max_abs_diff.items()})
    manifest = Manifest(
        input=InputSpec(name=INPUT_NAME, shape=tuple(x_train.shape[1:])),
        output_name=OUTPUT_NAME,
        feature_names=module.feature_names,
        steps=steps,
        attractor_count=len(report.attractors),
        latent_dim=int(report.attractors.shape[1]),
        convergence_tol=report.tol,
        parity=_parity_doc(parity, module32 if half else None, onnx_features, x_check),
        versions=_versions(data),
        dynamics={"baselines": baselines.to_dict()},
    )
    out = write_bundle(path, manifest, {MODEL_FILE: data}, overwrite=overwrite)
    return ExportReport(out, report, parity, baselines, len(data), time.perf_counter() - t0)


class _Half(nn.Module):
    """Runs a float32 module in float16: casts in, half weights, casts out."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()


def _parity_doc(parity: ParityReport, module32: TrajectoryFeatures | None,
                onnx_features: np.ndarray, x: np.ndarray) -> dict[str, Any]:
    doc = dict(parity.to_dict())
    if module32 is not None:
        doc["precision"] = "float16"
        with torch.inference_mode():
            ref = module32(torch.from_numpy(x)).numpy()
        diff = np.abs(onnx_features.astype(np.float64) - ref)
        names = module32.feature_names
        doc["fp16_max_abs_diff_vs_fp32"] = {n: float(diff[:, j].max()) for j, n in
                                            enumerate(names)}
    return doc


def _versions(data: bytes) -> dict[str, str]:
    import onnxruntime

    opset = {o.domain or "ai.onnx": o.version for o in onnx.load_from_string(data).opset_import}
    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": str(opset.get("ai.onnx", "")),
    }
