"""The classifier guard: an autoencoder's trajectory features and the classifier's own scores, in
one ONNX graph that takes the classifier's input.

The autoencoder (:func:`oodguard.training.trainer.fit_autoencoder`) learns, by
``autoencoder_on``:

- ``"input"`` (default): the classifier's inputs, as ``oodguard.fit`` without a classifier;
- ``"layer"``: the classifier's embeddings at ``layer``; the graph then runs the classifier up
  to that layer first (:class:`LayerTap`, the export's input preprocessing). Meant for inputs
  an autoencoder cannot learn well or cheaply (large images, many channels).

The default was chosen by measurement (docs/fit.md, "The classifier benchmark"): on the four
models of ``benchmarks/classifier_ood.py`` the input's autoencoder with the classifier's scores
gave a mean AUROC of 0.932 against 0.865 for the autoencoder on the embeddings as it was, and
0.899 against 0.830 on five classifiers held out of that choice. It costs more:
``benchmarks/embedding_graph.py``.

Either way the classifier adds three features in the same graph and the same calibration
(:data:`CLASSIFIER_FEATURES`; ``msp`` and ``energy`` are candidates of the selection,
``embedding_mahalanobis`` is a baseline it always keeps, with ``recon_error``, see
:func:`oodguard.calibration.selection.required_baselines`):

- ``msp``: maximum softmax probability ``max_c softmax(f(x))_c`` (Hendrycks & Gimpel 2017;
  *lower* = more OOD — the calibration learns the direction);
- ``energy``: ``−logsumexp_c f(x)_c`` (Liu et al. 2020; higher = more OOD);
- ``embedding_mahalanobis``: ``min_c (e − μ_c)ᵀ Σ⁺ (e − μ_c)`` on the layer's embedding ``e``
  (Lee et al. 2018, without input preprocessing; higher = more OOD): ``μ_c`` the mean of the
  training embeddings the classifier *predicts* as class ``c`` (its argmax, so no labels are
  needed), ``Σ`` their shared (tied) within-class covariance, ``Σ⁺`` its pseudo-inverse
  (:func:`class_gaussian`).

``f(x)`` and ``e`` come from one pass of the classifier in the graph (with
``autoencoder_on="layer"`` the preprocessing's tap runs the body too, and ONNX Runtime merges
the two: :func:`graft_classifier_scores`); the three columns are checked against torch before
the bundle is written.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import os
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper
from torch import nn

from oodguard.bundle import MODEL_FILE, REFERENCE_FILE, read_bundle, write_bundle
from oodguard.bundle.reference import compare_values
from oodguard.bundle.store import read_extras
from oodguard.engine import DENORMAL_AS_ZERO_KEY
from oodguard.errors import ExportError, check_parameter, parameter_error
from oodguard.export import export_bundle
from oodguard.export.graphs import INPUT_NAME, OUTPUT_NAME, torch_export
from oodguard.export.parity import DEFAULT_ATOL, DEFAULT_RTOL
from oodguard.export.reference import reference_file
from oodguard.export.stability import measure_stability
from oodguard.export.trajectory import aligned_log, aligned_row_sum
from oodguard.training.recipe import Recipe
from oodguard.training.trainer import MAX_DISCOVERY_CODES, fit_autoencoder

__all__ = ["AUTOENCODER_ON", "CLASSIFIER_FEATURES", "PRECISION_RCOND", "ClassifierScores",
           "LayerTap", "add_classifier_scores", "check_autoencoder_on", "check_logits",
           "class_gaussian", "embed",
           "export_embedding_guard", "graft_classifier_scores", "head_columns"]


CLASSIFIER_FEATURES = ("msp", "energy", "embedding_mahalanobis")
# What the classifier guard's autoencoder learns (see the module): the default first.
AUTOENCODER_ON = ("input", "layer")
# Directions along which the training embeddings' variance is below this share of the largest
# one are left out of Σ⁺ (numpy's pinv cut-off for a symmetric matrix, as rcond): dead ReLU
# units (variance exactly 0) carry no in-distribution spread to measure against, and whitening
# a direction 10⁶ times smaller than the largest would amplify float32 round-off ~10³-fold.
PRECISION_RCOND = 1e-6


class LayerTap(nn.Module):
    """``x ▶ model's layer output``, flattened to ``(N, d)``: the model's forward with a hook
    that keeps the named submodule's output (what ``model.named_modules()`` calls ``layer``)."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        modules = dict(model.named_modules())
        if not layer or layer not in modules:
            names = [n for n in modules if n]
            shown = names[:30] + (["..."] if len(names) > 30 else [])
            raise parameter_error("layer", f"a submodule name of {type(model).__name__} (as "
                                  f"model.named_modules() gives them: {shown})", layer,
                                  owner="oodguard.fit")
        self.model = model
        self.layer = layer
        self._out: list[torch.Tensor] = []
        modules[layer].register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise ExportError(f"layer {self.layer!r} returned {type(out).__name__}, not a "
                              "tensor; name a layer whose output is the embedding tensor")
        self._out.append(out)

    def embedding_and_output(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The layer's output flattened to ``(N, d)``, and the model's own output."""
        self._out.clear()
        y = self.model(x)
        out = self._out[-1]
        self._out.clear()
        return out.reshape(out.shape[0], -1), y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_and_output(x)[0]


def check_logits(logits: Any) -> torch.Tensor:
    """``logits`` if it is a tensor shaped ``(N, classes)``; else an :class:`ExportError`."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ExportError("model(x) must return logits shaped (N, classes) for the msp, energy "
                          "and embedding_mahalanobis features")
    return logits


class _Logits(nn.Module):
    """``x ▶ model(x)``, refused unless logits shaped ``(N, classes)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return check_logits(self.model(x))


def class_gaussian(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class-conditional Gaussian with tied covariance of Lee et al. (2018), in float64.

    Parameters
    ----------
    emb : ndarray (N, d) — training embeddings
    labels : ndarray (N,) of int — their classes (the classes that occur are used)

    Returns
    -------
    means : ndarray (C, d), float64 — ``μ_c`` per class that occurs, in sorted label order
    whitening : ndarray (r, d), float64 — ``W`` with ``WᵀW = Σ⁺``, the pseudo-inverse of the
        shared covariance ``Σ = (1/N) Σ_c Σ_{i∈c} (e_i − μ_c)(e_i − μ_c)ᵀ``; eigen-directions
        with variance ≤ :data:`PRECISION_RCOND` × the largest are left out (``r`` ≤ ``d``), so
        ``(e − μ_c)ᵀ Σ⁺ (e − μ_c) = ‖W (e − μ_c)‖²``.
    """
    e = np.asarray(emb, dtype=np.float64)
    y = np.asarray(labels)
    classes = np.unique(y)
    means = np.stack([e[y == c].mean(axis=0) for c in classes])
    centred = e - means[np.searchsorted(classes, y)]
    lam, vec = np.linalg.eigh(centred.T @ centred / len(e))
    keep = lam > PRECISION_RCOND * max(float(lam.max()), 0.0)
    if not keep.any():
        raise ExportError("the training embeddings do not vary within their predicted "
                          "classes; the layer's output cannot give a Mahalanobis distance")
    return means, vec[:, keep].T / np.sqrt(lam[keep])[:, None]


class ClassifierScores(nn.Module):
    """``x ▶ [msp, energy, embedding_mahalanobis]`` (``(N, 3)``, :data:`CLASSIFIER_FEATURES`)
    from one forward of the classifier: its logits and its layer's embedding ``e``.

    ``means`` ``(C, d)`` and ``whitening`` ``(r, d)`` are :func:`class_gaussian`'s;
    ``embedding_mahalanobis = min_c ‖W (e − μ_c)‖²``, computed as
    ``‖w‖² − 2 w·m_c + ‖m_c‖²`` with ``w = W (e − μ̄)`` and ``m_c = W (μ_c − μ̄)`` (``μ̄`` the
    mean of the class means; ``m_c`` and ``‖m_c‖²`` in float64, stored as float32): ``N × C``
    values per batch instead of ``N × C × d``, and the common offset removed before the
    float32 products so that it cannot swamp the distances."""

    centre: torch.Tensor
    whitening_t: torch.Tensor
    white_means_t: torch.Tensor
    white_sq: torch.Tensor

    def __init__(self, tap: LayerTap, means: np.ndarray, whitening: np.ndarray) -> None:
        super().__init__()
        self.tap = tap
        mu = np.asarray(means, dtype=np.float64)
        w = np.asarray(whitening, dtype=np.float64)
        centre = mu.mean(axis=0)
        white_means = (mu - centre) @ w.T  # (C, r)

        def const(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        self.register_buffer("centre", const(centre))
        self.register_buffer("whitening_t", const(w.T))
        self.register_buffer("white_means_t", const(white_means.T))
        self.register_buffer("white_sq", const((white_means**2).sum(axis=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb, out = self.tap.embedding_and_output(x)
        logits = check_logits(out)
        # Softmax, logsumexp and the squared norm as ONNX Runtime's reductions and Log would
        # compute them round a row by its place in the batch; the aligned forms do not.
        top = logits.max(dim=1).values
        total = aligned_row_sum(torch.exp(logits - top.unsqueeze(1)))  # Σ_c e^{f_c − max f}
        msp = 1.0 / total  # = max_c softmax(f)_c
        energy = -(top + aligned_log(total))  # = −logsumexp(f)
        w = (emb - self.centre) @ self.whitening_t  # (N, r)
        d2 = (aligned_row_sum(w * w).unsqueeze(1) - 2.0 * (w @ self.white_means_t)
              + self.white_sq)
        maha = d2.min(dim=1).values.clamp_min(0.0)  # ≥ 0 but for round-off
        return torch.stack([msp, energy, maha], dim=1)


@torch.inference_mode()
def embed(module: nn.Module, x: np.ndarray, batch: int = 512) -> np.ndarray:
    """``module(x)`` in batches, float32 numpy."""
    parts = [module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).numpy()
             for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.float32)


def _prefixed(graph: onnx.GraphProto, prefix: str, keep: set[str]) -> None:
    def ren(name: str) -> str:
        return name if (not name or name in keep) else prefix + name

    for node in graph.node:
        node.input[:] = [ren(n) for n in node.input]
        node.output[:] = [ren(n) for n in node.output]
        node.name = ren(node.name)
    for seq in (graph.initializer, graph.sparse_initializer):
        for init in seq:
            if hasattr(init, "name"):
                init.name = ren(init.name)
    for vi in (*graph.value_info, *graph.output):
        vi.name = ren(vi.name)


def graft_classifier_scores(model: onnx.ModelProto, head: onnx.ModelProto) -> onnx.ModelProto:
    """The bundle graph with ``head``'s columns (same input ``x``, one output ``(N, k)``)
    appended to its ``features`` output."""
    k = head_columns(head)
    h = onnx.ModelProto()
    h.CopyFrom(head)
    _prefixed(h.graph, "clf/", {INPUT_NAME})
    ops = {o.domain: o.version for o in model.opset_import}
    for o in h.opset_import:
        if ops.get(o.domain, o.version) != o.version:
            raise ExportError(f"the classifier graph uses opset {o.version} of domain "
                              f"{o.domain!r}, the trajectory graph {ops[o.domain]}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inner = "trajectory_features"
    for node in g.node:
        node.output[:] = [inner if n == OUTPUT_NAME else n for n in node.output]
        node.input[:] = [inner if n == OUTPUT_NAME else n for n in node.input]
    _share_initializers(g, h.graph)
    g.node.extend(h.graph.node)
    g.initializer.extend(h.graph.initializer)
    g.value_info.extend(h.graph.value_info)
    head_out = h.graph.output[0].name
    g.node.append(helper.make_node("Concat", [inner, head_out], [OUTPUT_NAME], axis=1,
                                   name="concat_classifier_features"))
    known = {o.domain for o in out.opset_import}
    out.opset_import.extend(o for o in h.opset_import if o.domain not in known)
    dim = g.output[0].type.tensor_type.shape.dim
    if len(dim) == 2 and dim[1].HasField("dim_value"):
        dim[1].dim_value += k
    try:
        onnx.checker.check_model(out, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"onnx.checker rejected the grafted classifier graph: {err}") from err
    return out


def _tensor_key(t: onnx.TensorProto) -> bytes:
    c = onnx.TensorProto()
    c.CopyFrom(t)
    c.name = ""
    return hashlib.sha256(c.SerializeToString()).digest()


def _share_initializers(graph: onnx.GraphProto, head: onnx.GraphProto) -> None:
    """Point ``head``'s nodes at ``graph``'s initializers wherever their contents are equal, and
    drop the copies: the classifier body that the graph's input preprocessing already runs then
    has the same node inputs in both places, and ONNX Runtime's common-subexpression elimination
    runs it once per batch instead of twice (the same bits: the same nodes on the same values).
    A head with subgraphs (``If``, ``Loop``) keeps its own initializers."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in head.node for a in n.attribute):
        return
    known = {_tensor_key(t): t.name for t in graph.initializer}
    rename: dict[str, str] = {}
    keep = []
    for t in head.initializer:
        same = known.get(_tensor_key(t))
        if same is None:
            keep.append(t)
        else:
            rename[t.name] = same
    if not rename:
        return
    del head.initializer[:]
    head.initializer.extend(keep)
    for node in head.node:
        node.input[:] = [rename.get(i, i) for i in node.input]


def head_columns(head: onnx.ModelProto) -> int:
    """How many feature columns ``head``'s one output ``(N, k)`` has (static ``k``)."""
    dims = head.graph.output[0].type.tensor_type.shape.dim
    if len(head.graph.output) != 1 or len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise ExportError("the classifier graph must have one output shaped (N, k) with a "
                          f"fixed k; it has {len(head.graph.output)} output(s), the first "
                          f"shaped {[d.dim_value or d.dim_param for d in dims]}")
    return int(dims[1].dim_value)


def check_autoencoder_on(value: object) -> None:
    """Refuse an ``autoencoder_on`` outside :data:`AUTOENCODER_ON`."""
    check_parameter(value in AUTOENCODER_ON, "autoencoder_on",
                    " or ".join(map(repr, AUTOENCODER_ON)), value, owner="oodguard.fit")


def export_embedding_guard(
    path: str | os.PathLike[str], model: nn.Module, layer: str, x_train: np.ndarray, *,
    autoencoder_on: str = "input", arch: str = "auto", latent: int | None = None,
    recipe: Recipe | None = None, steps: int = 32, seed: int = 0, progress: bool | None = None,
) -> dict[str, Any]:
    """Write an uncalibrated classifier-guard bundle to ``path`` (see the module); returns the
    manifest's training record."""
    check_autoencoder_on(autoencoder_on)
    clf = copy.deepcopy(model).float().cpu().eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    head_tap = LayerTap(copy.deepcopy(clf), layer)  # its own copy: taps hook into their model
    # The classes of the Mahalanobis feature: the classifier's own predictions (before the
    # tap below hooks into clf), so that the user needs no labels.
    labels = embed(_Logits(clf), x_train).argmax(axis=1)
    tap = LayerTap(clf, layer)
    emb = embed(tap, x_train)
    means, whitening = class_gaussian(emb, labels)
    scores = ClassifierScores(head_tap, means, whitening)
    if autoencoder_on == "layer":
        ae, pre, record = fit_autoencoder(emb, arch=arch, latent=latent, recipe=recipe,
                                          seed=seed, progress=progress)
        preprocess = nn.Sequential(tap, pre) if pre is not None else tap
    else:
        ae, preprocess, record = fit_autoencoder(x_train, arch=arch, latent=latent,
                                                 recipe=recipe, seed=seed, progress=progress)
    record["embedding"] = {
        "model": type(model).__name__, "layer": layer, "dim": int(emb.shape[1]),
        "autoencoder_on": autoencoder_on, "extra_features": list(CLASSIFIER_FEATURES),
        "mahalanobis": {"labels": "predicted", "classes": int(len(means)),
                        "rank": int(len(whitening)), "rcond": PRECISION_RCOND}}
    export_bundle(path, model=ae, x_train=x_train, preprocess=preprocess, steps=steps, seed=seed,
                  progress=progress, training=record, max_codes=MAX_DISCOVERY_CODES,
                  overwrite=True)
    add_classifier_scores(path, scores, x_train, seed=seed)
    return record


def add_classifier_scores(path: str | os.PathLike[str], scores: ClassifierScores,
                          x_train: np.ndarray, *, seed: int = 0) -> None:
    """Append :data:`CLASSIFIER_FEATURES` (``scores``' columns) to the bundle at ``path``:
    graft, check against torch, re-measure the reference inputs, rewrite the manifest."""
    source = read_bundle(path)
    man = source.manifest
    bundle_model = onnx.load_from_string(source.files[MODEL_FILE])
    example = torch.from_numpy(np.ascontiguousarray(x_train[: min(4, len(x_train))]))
    head = torch_export(scores, [example], [INPUT_NAME], ["classifier_scores"], [0],
                        "classifier's logits")
    merged = graft_classifier_scores(bundle_model, head)
    data = merged.SerializeToString()
    import onnxruntime as ort

    opts = ort.SessionOptions()  # as the exporter and the runtime engine run it
    opts.add_session_config_entry(DENORMAL_AS_ZERO_KEY, "1")
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x_train), size=min(256, len(x_train)), replace=False)
    x_check = np.ascontiguousarray(x_train[np.sort(rows)], dtype=np.float32)
    got = sess.run(None, {INPUT_NAME: x_check})[0]
    ref = embed(scores, x_check)
    k = len(CLASSIFIER_FEATURES)
    if ref.shape[1] != k or got.shape[1] != len(man.feature_names) + k:
        raise ExportError(f"the classifier's scores have {ref.shape[1]} columns and the "
                          f"grafted graph {got.shape[1]}; expected {k} and "
                          f"{len(man.feature_names)} + {k}")
    extra = got[:, -k:]
    for j, name in enumerate(CLASSIFIER_FEATURES):
        diff, bad = compare_values(ref[:, j].astype(np.float64), extra[:, j], DEFAULT_RTOL,
                                   DEFAULT_ATOL)
        if bad.any():
            raise ExportError(f"the graph's {name} differs from torch's by up to "
                              f"{float(diff.max()):.3g} (beyond the parity tolerance)")
    stability = dict(man.dynamics.get("stability", {}))
    stability.update(measure_stability(CLASSIFIER_FEATURES, ref, extra,
                                       np.ones(len(ref), dtype=bool), atol=DEFAULT_ATOL))
    names = (*man.feature_names, *CLASSIFIER_FEATURES)
    old = np.load(io.BytesIO(source.files[REFERENCE_FILE]))
    reference = reference_file(old["inputs"], lambda xs: sess.run(None, {INPUT_NAME: xs})[0],
                               names, stability, rtol=float(old["rtol"]),
                               atol=float(old["atol"]))
    manifest = dataclasses.replace(man, feature_names=names,
                                   dynamics={**man.dynamics, "stability": stability})
    write_bundle(path, manifest, {**source.files, MODEL_FILE: data, REFERENCE_FILE: reference,
                                  **read_extras(source)}, overwrite=True)
