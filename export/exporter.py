"""Export: trajectory module ▶ ONNX ▶ checker ▶ parity against torch ▶ bundle."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import onnx
import torch
from torch import nn

from oodguard.bundle import MODEL_FILE, REFERENCE_FILE, InputSpec, Manifest, write_bundle
from oodguard.engine import DENORMAL_AS_ZERO_KEY
from oodguard.errors import ExportError, parameter_error
from oodguard.export.attractors import discover_attractors
from oodguard.export.autoencoder import Latent
from oodguard.export.baselines import (
    DEFAULT_KNN_K,
    DEFAULT_MAX_BANK,
    fit_latent_baselines,
)
from oodguard.export.graphs import (
    INPUT_NAME,
    OUTPUT_NAME,
    features_only,
    inspection_model,
    trace_parts,
    trajectory_model,
)
from oodguard.export.inspection_files import inspection_files
from oodguard.export.model_errors import UnsupportedDtypeError
from oodguard.export.parity import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    FP16_ATOL,
    FP16_RTOL,
    ParityReport,
    check_same_trajectory,
)
from oodguard.export.probe import prepare_autoencoder, to_model_space
from oodguard.export.reference import DEFAULT_REFERENCE_ROWS, reference_file, reference_rows
from oodguard.export.report import ExportReport
from oodguard.export.rewrite import elu_is_batch_invariant, rewrite_elu_nodes
from oodguard.export.source import source_parity
from oodguard.export.stability import (
    STABILITY_QUANTILE,
    STABILITY_THRESHOLD,
    contraction_of,
    convergence_warning,
    flush_denormal,
    measure_stability,
)
from oodguard.export.trajectory import TrajectoryFeatures
from oodguard.progress import progress_bar

__all__ = ["ExportReport", "ExportedGraphs", "check_outputs", "export_bundle", "export_graphs",
           "export_onnx", "rewrite_elu_nodes"]

log = logging.getLogger(__name__)



class ExportedGraphs(NamedTuple):
    """What :func:`export_graphs` makes from one tracing of each part."""

    model: bytes  # the bundle's model.onnx
    check: onnx.ModelProto  # the same graph with the trajectory and x̂ as extra outputs
    inspection: bytes  # inspection.onnx: (x, z) ▶ (E(x), D(z), E(D(z)))


def export_graphs(
    module: TrajectoryFeatures, example: torch.Tensor, *, rewrite_elu: bool | None = None,
    preprocess: nn.Module | None = None,
) -> ExportedGraphs:
    """``(bundle model bytes, check model, inspection graph bytes)``.

    The check model computes the trajectory and ``x̂`` as extra outputs (see
    :func:`oodguard.export.graphs.trajectory_model`: the encoder, decoder and feature head
    traced once each); the bundle graph is the same graph with only the ``features`` output —
    so the parity check sees exactly the nodes the bundle runs. The inspection graph calls the
    same traced encoder and decoder (:func:`oodguard.export.graphs.inspection_model`).

    ``rewrite_elu`` replaces every ``Elu`` node by an equal expression, faster at large batches
    and slower at small ones; ``None`` does so only where the plain ``Elu`` would not be batch
    invariant. The graph keeps one path for every batch size (see
    :mod:`oodguard.export.rewrite`). ``preprocess`` (raw ``x`` ▶ model space) becomes the
    graph's first nodes; ``example`` is then a raw input.
    """
    traced = trace_parts(module, example, preprocess)
    check = trajectory_model(traced, module.steps, len(module.feature_names))
    if rewrite_elu is None:
        rewrite_elu = not elu_is_batch_invariant(check)
    elif not rewrite_elu and not elu_is_batch_invariant(check):
        log.warning("rewrite_elu=False with Elu widths that are not multiples of 16: scores "
                    "may change in their last bits with the batch size")
    if rewrite_elu and not check.functions:
        rewrite_elu_nodes(check)
    model = features_only(check)
    inspection = inspection_model(traced)
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.checker.check_model(inspection, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"onnx.checker rejected the exported graph: {err}") from err
    return ExportedGraphs(model.SerializeToString(), check, inspection.SerializeToString())


def export_onnx(
    module: TrajectoryFeatures, example: torch.Tensor, *, rewrite_elu: bool | None = None
) -> bytes:
    """Export the trajectory module with a dynamic batch axis; returns the model bytes,
    checked by ``onnx.checker`` (full check, with shape inference). See :func:`export_graphs`
    for ``rewrite_elu``.
    """
    return export_graphs(module, example, rewrite_elu=rewrite_elu).model


def _session(data: bytes) -> Any:
    """An ONNX Runtime CPU session that treats denormals as zero (as the runtime engine does;
    see :mod:`oodguard.export.stability`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.add_session_config_entry(DENORMAL_AS_ZERO_KEY, "1")
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def check_outputs(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """ONNX Runtime's ``(features, trajectory [T+1, N, d], x̂)`` from a check model."""
    sess = _session(model.SerializeToString())
    return tuple(sess.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}))


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
    rewrite_elu: bool | None = None,
    knn_k: int = DEFAULT_KNN_K,
    max_bank: int = DEFAULT_MAX_BANK,
    progress: bool | None = None,
    latent: Latent = None,
    split: str | None = None,
    preprocess: Any = None,
    max_steps: int = 500,
    max_codes: int | None = None,
    n_reference: int = DEFAULT_REFERENCE_ROWS,
    training: Mapping[str, Any] | None = None,
) -> ExportReport:
    """Export a trained autoencoder to an (uncalibrated) bundle directory.

    Parameters
    ----------
    path : directory to write (atomically)
    x_train : ndarray of float32, shape (N, *input_shape)
        Training inputs, scaled as in training (or raw, with ``preprocess``): attractors are
        discovered from their codes.
    encoder, decoder : nn.Module
        Or ``model``: with ``encode``/``decode`` methods, with ``encoder``/``decoder``
        submodules (PyOD, the adapters of :mod:`oodguard.export.adapters`), or an
        ``nn.Sequential`` split after the layer named ``split``. Codes of any shape are
        flattened to ``(N, d)`` for the dynamics and reshaped for the decoder inside the graph
        (``manifest.dynamics["model"]["latent_shape"]``). Modules in training mode are exported
        from an eval-mode copy, with a warning. float64/float16/bfloat16 models are exported as
        float32 and the graph is measured against the model as given
        (``manifest.parity["source"]``).
    latent : None, "mean", int, str or callable
        Which part of the encoder's output is the code: a tensor or a
        ``torch.distributions`` distribution (its mean) need nothing; for a VAE's
        ``(mu, logvar)`` pass ``latent="mean"`` or ``0``; a dict key, or
        ``lambda out: ...`` (see :data:`oodguard.export.autoencoder.Latent`).
    split : str, optional
        With an ``nn.Sequential`` ``model``: the name of the encoder's last layer.
    preprocess : None, nn.Module, (mean, std) or a fitted StandardScaler
        Input preprocessing applied first inside the graph, so the bundle takes raw inputs as
        ``x_train`` holds them (see :mod:`oodguard.export.preprocess`).
    max_steps, max_codes : int
        Attractor discovery's step budget per code, and the most training codes it iterates
        (a seeded subsample beyond it; default all). See
        :func:`oodguard.export.attractors.discover_attractors`.
    steps : int
        ``T``, the number of latent steps fused into the graph.
    x_check : ndarray, optional
        Inputs for the parity check; default up to 256 training inputs and 64 uniform-noise
        inputs over the training range (so off-distribution paths are checked too).
    parity_rtol, parity_atol : float, optional
        Parity tolerance (see :mod:`oodguard.export.parity`). The bundle is not written when
        the one-step map or the features of one and the same trajectory differ beyond it;
        whole trajectories are compared too and recorded per feature in
        ``manifest.dynamics["stability"]`` (see :mod:`oodguard.export.stability`).
        Default ``DEFAULT_RTOL``/``DEFAULT_ATOL``, or ``FP16_RTOL``/``FP16_ATOL`` with
        ``precision="float16"``.
    precision : "float32" or "float16"
        ``"float16"`` runs the encoder and decoder in half precision inside the graph (for
        GPUs with fast fp16); inputs, the trajectory between steps and the features stay
        float32, so the bundle's signature is unchanged. Parity is then checked against the
        same half-precision module in torch, with the looser fp16 tolerance, and the worst
        deviation from the float32 features is recorded in the manifest
        (``parity.fp16_max_abs_diff_vs_fp32``).
    rewrite_elu : bool or None
        Replace every ``Elu`` by ``Max(x, Exp(Min(x, 0)) − 1)``: on the CPU ~1.2–1.7× faster
        from batch 256 on, ~1.85× slower at batch 1 (see :mod:`oodguard.export.rewrite`).
        ``None`` (default): only when some ``Elu`` width is not a multiple of 16, where the
        plain ``Elu`` would make scores depend on the batch. One form serves every batch size.
    knn_k, max_bank : int
        ``k`` of the ``latent_knn``/``terminal_knn`` features and the most training codes kept
        in their banks (a seeded subsample beyond it; see :mod:`oodguard.export.baselines`).
    progress : bool or None
        Progress bars for attractor discovery and the export's stages (the ONNX export alone
        takes seconds); default when stderr is a terminal and INFO is logged.
    n_reference : int
        Reference inputs stored in ``reference.npz`` with ONNX Runtime's features of them, so
        that the runtime can check at load that its execution provider reproduces them (see
        :mod:`oodguard.export.reference`); taken from the parity check's inputs.
    training : mapping, optional
        How the autoencoder was trained (a JSON object), recorded as
        ``manifest.dynamics["training"]``; :func:`oodguard.fit` passes its recipe and record.

    Raises
    ------
    ExportError
        The graph cannot be exported, fails ``onnx.checker`` or disagrees with torch; or a
        named mistake in the model (:mod:`oodguard.export.model_errors`: swapped or not
        composable modules, a reconstruction shaped unlike the input, an encoder output
        without ``latent=``, a model that is not deterministic, an unsupported dtype).
    """
    t0 = time.perf_counter()
    if not (isinstance(n_reference, int) and n_reference >= 1):
        raise parameter_error("n_reference", "an int >= 1", n_reference, owner="export_bundle")
    x_raw = np.asarray(x_train)
    if not (np.issubdtype(x_raw.dtype, np.floating) or np.issubdtype(x_raw.dtype, np.integer)):
        raise UnsupportedDtypeError(
            f"x_train has dtype {x_raw.dtype}; pass real numbers (float32 is what the bundle "
            "takes; float64 and integers are cast)"
        )
    x_raw = np.ascontiguousarray(x_raw, dtype=np.float32)
    if x_raw.ndim < 2 or len(x_raw) == 0:
        raise ExportError(f"x_train must be a non-empty batch (N, ...); got {x_raw.shape}")
    if not np.isfinite(x_raw).all():
        raise ExportError("x_train holds NaN or infinity (or values beyond float32's range)")
    ae, x_train = prepare_autoencoder(x_train=x_raw, model=model, encoder=encoder,
                                      decoder=decoder, latent=latent, split=split,
                                      preprocess=preprocess)
    enc, dec = ae.encoder, ae.decoder
    report = discover_attractors(
        enc, dec, x_train, n_noise=n_noise, rel_tol=rel_tol,
        rel_merge_radius=rel_merge_radius, max_attractors=max_attractors, seed=seed,
        progress=progress, max_steps=max_steps, max_codes=max_codes,
    )
    stages = progress_bar(len(_STAGES), "export", log, progress=progress, unit="stage")
    stage = _stage_marker(stages)
    if precision not in ("float32", "float16"):
        raise parameter_error("precision", "'float32' or 'float16'", precision,
                              owner="export_bundle")
    half = precision == "float16"
    parity_rtol = parity_rtol if parity_rtol is not None else (FP16_RTOL if half else DEFAULT_RTOL)
    parity_atol = parity_atol if parity_atol is not None else (FP16_ATOL if half else DEFAULT_ATOL)
    stage("latent baselines")
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
    x_check_given = x_check is not None
    if x_check is None:
        rng = np.random.default_rng(seed)
        lo, hi = float(x_raw.min()), float(x_raw.max())
        noise = rng.uniform(lo, hi, size=(64, *x_raw.shape[1:])).astype(np.float32)
        x_check = np.concatenate([x_raw[:256], noise])
    x_check = np.ascontiguousarray(x_check, dtype=np.float32)
    x_check_model = to_model_space(ae.preprocess, x_check)
    train_rows = np.zeros(len(x_check), dtype=bool)
    train_rows[: min(256, len(x_train))] = True
    if x_check_given:
        train_rows[:] = True
    log.info("exporting the trajectory graph (T=%d, K=%d)", steps, len(report.attractors))
    with flush_denormal():
        stage("torch.onnx.export")
        graphs = export_graphs(module, torch.from_numpy(x_check[: min(len(x_check), 4)]),
                               rewrite_elu=rewrite_elu, preprocess=ae.preprocess)
        data, check = graphs.model, graphs.check
        # The check model is the bundle graph plus two outputs: its features are the bundle's.
        stage("parity check")
        parity, onnx_features, onnx_x_hat = _verify(module, check, x_check, x_check_model,
                                                    train_rows, parity_rtol, parity_atol)
        with torch.inference_mode():
            ref = module(torch.from_numpy(x_check_model)).numpy()
        stage("stability")
        stability = measure_stability(module.feature_names, ref, onnx_features, train_rows,
                                      atol=parity_atol)
        stage("contraction")
        contraction = contraction_of(baselines.bank_steps, steps=steps, tol=report.tol)
        stable = np.array([stability[n]["stable"] for n in module.feature_names])
        rows = reference_rows(ref, onnx_features, train_rows, stable, rtol=parity_rtol,
                              atol=parity_atol, n=n_reference)
        session = _session(data)
        reference = reference_file(
            x_check[rows], lambda xs: session.run(None, {INPUT_NAME: xs})[0],
            module.feature_names, stability, rtol=parity_rtol, atol=parity_atol)
    if len(rows) < n_reference:
        log.warning("only %d of the %d check inputs qualify as reference inputs (finite, and "
                    "stable features that agree between torch and ONNX Runtime): %s holds %d "
                    "rows instead of %d", len(rows), len(x_check), REFERENCE_FILE, len(rows),
                    n_reference)
    warnings: list[str] = []
    unstable = [k for k, v in stability.items() if not v["stable"]]
    if unstable:
        warnings.append(f"features unstable under float32 round-off (whole trajectories, ONNX "
                        f"Runtime vs torch): {unstable}; calibration leaves them out")
    transient = convergence_warning(contraction)
    if transient:
        warnings.append(transient)
    for w in warnings:
        log.warning("%s", w)
    parity_doc = _parity_doc(parity, module32 if half else None, onnx_features, x_check_model)
    if ae.source is not None:
        parity_doc["source"] = source_parity(ae, x_check_model, onnx_x_hat)
    manifest = Manifest(
        input=InputSpec(name=INPUT_NAME, shape=tuple(x_raw.shape[1:])),
        output_name=OUTPUT_NAME,
        feature_names=module.feature_names,
        steps=steps,
        attractor_count=len(report.attractors),
        latent_dim=int(report.attractors.shape[1]),
        convergence_tol=report.tol,
        parity=parity_doc,
        versions=_versions(data),
        dynamics={"baselines": baselines.to_dict(), "contraction": contraction,
                  "stability": stability,
                  "stability_rule": {"quantile": STABILITY_QUANTILE,
                                     "threshold": STABILITY_THRESHOLD,
                                     "scale": "IQR over training rows"},
                  "attractor_nonfinite_dropped": report.n_nonfinite,
                  "discovery": report.record(),
                  "model": ae.record(),
                  **({"training": dict(training)} if training is not None else {})},
    )
    stage("write")
    files = {MODEL_FILE: data, REFERENCE_FILE: reference,
             **inspection_files(enc, dec, x_train, x_raw, report, graphs.inspection, steps=steps,
                                seed=seed)}
    out = write_bundle(path, manifest, files, overwrite=overwrite)
    stage(None)
    return ExportReport(out, report, parity, baselines, dict(manifest.dynamics), len(data),
                        time.perf_counter() - t0, tuple(warnings))


_STAGES = ("latent baselines", "torch.onnx.export", "parity check", "stability", "contraction",
           "write")


def _stage_marker(bar: Any) -> Any:
    """``stage(name)`` completes the previous stage on ``bar`` and names the next;
    ``stage(None)`` completes the last and closes the bar."""
    started = [False]

    def stage(name: str | None) -> None:
        if started[0]:
            bar.update()
        started[0] = True
        if name is None:
            bar.close()
        else:
            bar.set_description_str(f"export: {name}")

    return stage


def _verify(module: TrajectoryFeatures, check: onnx.ModelProto, x: np.ndarray,
            x_model: np.ndarray, train_rows: np.ndarray, rtol: float,
            atol: float) -> tuple[ParityReport, np.ndarray, np.ndarray]:
    """The deterministic parity check on the check model; raises when any input fails.
    ``x`` goes to the graph, ``x_model`` (``x`` after the preprocessing) to torch. Returns the
    report and ONNX Runtime's features and ``x̂`` of ``x``."""
    outputs = check_outputs(check, x)
    parity = check_same_trajectory(module, x_model, *outputs, rtol=rtol, atol=atol)
    if not parity.ok:
        bad = parity.feature_failed.any(axis=1) | parity.step_failed
        raise ExportError(
            "ONNX Runtime disagrees with torch on the same trajectory (the one-step map "
            f"z ▶ E(D(z)) or the features of a given trajectory): {parity.describe()}; "
            f"failing inputs: {int((bad & train_rows).sum())} of {int(train_rows.sum())} "
            f"training inputs, {int((bad & ~train_rows).sum())} of {int((~train_rows).sum())} "
            "uniform-noise inputs. The bundle was not written. A kernel or an exported formula "
            "differs; pass parity_rtol=/parity_atol= only if the differences above are "
            "acceptable (or x_check= to check other inputs)"
        )
    log.info("parity ok on %d inputs; max |diff| %s; one-step map %.2g", parity.n,
             {k: f"{v:.2g}" for k, v in parity.max_abs_diff.items()},
             parity.one_step_max_abs_diff)
    return parity, outputs[0], outputs[2]


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
