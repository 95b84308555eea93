"""The embedding guard: an autoencoder on a classifier's feature layer, in one ONNX graph that
takes the classifier's own input.

The graph runs the classifier up to ``layer`` (:class:`LayerTap`, the export's input
preprocessing, so it is the graph's first nodes), iterates an autoencoder trained on those
embeddings (:func:`oodguard.training.fit.fit_autoencoder`), and computes the trajectory
features; the classifier's logits add two candidate features in the same graph and the same
calibration (:data:`CLASSIFIER_FEATURES`):

- ``msp``: maximum softmax probability ``max_c softmax(f(x))_c`` (Hendrycks & Gimpel 2017;
  *lower* = more OOD — the calibration learns the direction);
- ``energy``: ``−logsumexp_c f(x)_c`` (Liu et al. 2020; higher = more OOD).

The logits come from a second pass of the classifier in the graph (the tap stops at the layer,
the head needs the whole forward); both are checked against torch before the bundle is written.
"""

from __future__ import annotations

import copy
import dataclasses
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
from oodguard.errors import ExportError, parameter_error
from oodguard.export import export_bundle
from oodguard.export.graphs import INPUT_NAME, OUTPUT_NAME, torch_export
from oodguard.export.parity import DEFAULT_ATOL, DEFAULT_RTOL
from oodguard.export.reference import reference_file
from oodguard.export.stability import measure_stability
from oodguard.training.recipe import Recipe
from oodguard.training.trainer import MAX_DISCOVERY_CODES, fit_autoencoder

__all__ = ["CLASSIFIER_FEATURES", "ClassifierScores", "LayerTap", "add_classifier_scores", "embed",
           "export_embedding_guard", "graft_classifier_scores"]


CLASSIFIER_FEATURES = ("msp", "energy")


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._out.clear()
        self.model(x)
        out = self._out[-1]
        self._out.clear()
        return out.reshape(out.shape[0], -1)


class ClassifierScores(nn.Module):
    """``x ▶ [msp, energy]`` (``(N, 2)``) from the classifier's logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ExportError("model(x) must return logits shaped (N, classes) for the msp "
                              "and energy features")
        msp = torch.softmax(logits, dim=1).max(dim=1).values
        energy = -torch.logsumexp(logits, dim=1)
        return torch.stack([msp, energy], dim=1)


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
    """The bundle graph with ``head``'s two columns (same input ``x``) appended to its
    ``features`` output."""
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
        dim[1].dim_value += 2
    try:
        onnx.checker.check_model(out, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"onnx.checker rejected the grafted classifier graph: {err}") from err
    return out


def export_embedding_guard(
    path: str | os.PathLike[str], model: nn.Module, layer: str, x_train: np.ndarray, *,
    arch: str = "auto", latent: int | None = None, recipe: Recipe | None = None,
    steps: int = 32, seed: int = 0, progress: bool | None = None,
) -> dict[str, Any]:
    """Write an uncalibrated embedding-guard bundle to ``path`` (see the module); returns the
    manifest's training record."""
    clf = copy.deepcopy(model).float().cpu().eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    scores = ClassifierScores(copy.deepcopy(clf))  # before the tap hooks into clf
    tap = LayerTap(clf, layer)
    emb = embed(tap, x_train)
    ae, pre, record = fit_autoencoder(emb, arch=arch, latent=latent, recipe=recipe, seed=seed,
                                      progress=progress)
    record["embedding"] = {"model": type(model).__name__, "layer": layer,
                           "dim": int(emb.shape[1]), "extra_features": list(CLASSIFIER_FEATURES)}
    preprocess = nn.Sequential(tap, pre) if pre is not None else tap
    export_bundle(path, model=ae, x_train=x_train, preprocess=preprocess, steps=steps, seed=seed,
                  progress=progress, training=record, max_codes=MAX_DISCOVERY_CODES,
                  overwrite=True)
    add_classifier_scores(path, scores, x_train, seed=seed)
    return record


def add_classifier_scores(path: str | os.PathLike[str], scores: ClassifierScores,
                          x_train: np.ndarray, *, seed: int = 0) -> None:
    """Append ``msp`` and ``energy`` to the bundle at ``path``: graft, check against torch,
    re-measure the reference inputs, rewrite the manifest."""
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
    for j, name in enumerate(CLASSIFIER_FEATURES):
        diff, bad = compare_values(ref[:, j].astype(np.float64), got[:, -2 + j], DEFAULT_RTOL,
                                   DEFAULT_ATOL)
        if bad.any():
            raise ExportError(f"the graph's {name} differs from torch's by up to "
                              f"{float(diff.max()):.3g} (beyond the parity tolerance)")
    stability = dict(man.dynamics.get("stability", {}))
    stability.update(measure_stability(CLASSIFIER_FEATURES, ref, got[:, -2:],
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
