"""The trajectory graph in ONNX: the encoder, the decoder and the features, each traced once.

The graph runs ``z0 = E(x)``, ``x̂ = D(z0)``, ``z1 = E(x̂)``, ``z_{t+1} = E(D(z_t))`` up to
``z_T`` and then the features (see :class:`oodguard.export.trajectory.TrajectoryFeatures`).
Tracing that module whole made ``torch.export`` trace the encoder ``T + 1`` and the decoder
``T`` times: a GRU autoencoder (whose recurrence is decomposed step by step, under a symbolic
batch) took 277 s to export at ``T = 32``. Here each of the encoder, the decoder, the optional
input preprocessing and the feature head is exported once, turned into a model-local ONNX function
whose weights are inputs (so the ``2T + 1`` calls share one copy of them), the calls are laid
out as nodes, and the functions are inlined: the bundle holds one flat graph, as before.
A module with a recurrent layer goes through the TorchScript exporter, which writes ONNX's own
``GRU``/``LSTM`` node (see :func:`_has_rnn`); every other part keeps the dynamo exporter.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx.inliner
import torch
from onnx import helper
from torch import nn

from oodguard.bundle import MODEL_FILE
from oodguard.errors import ExportError
from oodguard.export.trajectory import TrajectoryFeatures
from oodguard.inspect.latent_map import INSPECTION_INPUTS, INSPECTION_OUTPUTS

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "CHECK_OUTPUTS", "TracedParts", "compose_trajectory",
           "features_only", "inspection_model", "torch_export", "trace_parts",
           "trajectory_model"]

INPUT_NAME = "x"
OUTPUT_NAME = "features"
CHECK_OUTPUTS = ("_check_trajectory", "_check_x_hat")
_DOMAIN = "oodguard.local"


def strip_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node metadata (stack traces, FX node names, module paths):
    most of a transformer bundle's bytes, and no use to the runtime."""
    for g in (model.graph, *model.functions):
        for node in g.node:
            del node.metadata_props[:]
            node.doc_string = ""


def torch_export(module: nn.Module, args: Sequence[torch.Tensor], inputs: Sequence[str],
                 outputs: Sequence[str], batch_axes: Sequence[int], what: str,
                 legacy_opset: int | None = None) -> onnx.ModelProto:
    """``torch.onnx.export`` (dynamo) with one dynamic ``batch`` axis per input, quietly;
    metadata stripped, local functions inlined. Any failure is an :class:`ExportError`.

    ``legacy_opset`` uses the TorchScript exporter at that opset instead (see
    :func:`_has_rnn`)."""
    batch = torch.export.Dim("batch", min=1)
    # positional (a tuple), so the user's forward may name its argument anything
    dynamic: Any = tuple({axis: batch} for axis in batch_axes)
    options: dict[str, Any] = {"dynamo": True, "dynamic_shapes": dynamic}
    if legacy_opset is not None:
        axes = {name: {axis: "batch"} for name, axis in zip(inputs, batch_axes, strict=True)}
        axes |= {name: {0: "batch"} for name in outputs}
        options = {"dynamo": False, "dynamic_axes": axes, "opset_version": legacy_opset}
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
                    module, tuple(args), path, input_names=list(inputs),
                    output_names=list(outputs), external_data=False, verbose=False, **options,
                )
        except Exception as err:
            raise ExportError(
                f"torch.onnx.export failed for the {what} ({type(err).__name__}: {err}); the "
                "encoder/decoder must be traceable by torch.export (no data-dependent Python "
                "control flow, no NumPy inside forward)"
            ) from err
        finally:
            for lg, lvl in zip(noisy, levels, strict=True):
                lg.setLevel(lvl)
        model = onnx.load_from_string(Path(path).read_bytes())
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    strip_metadata(model)
    return model


def features_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with only the ``features`` output, and without the nodes only the extra outputs
    needed (none in practice: the trajectory and ``x̂`` feed the features)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    keep = [o for o in g.output if o.name == OUTPUT_NAME]
    del g.output[:]
    g.output.extend(keep)
    needed = {OUTPUT_NAME}
    nodes = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed.update(i for i in node.input if i)
    if len(nodes) != len(g.node):
        del g.node[:]
        g.node.extend(reversed(nodes))
    return out


def _has_rnn(module: nn.Module) -> bool:
    """Whether ``module`` holds a recurrent layer. ``torch.export`` decomposes ``nn.GRU`` /
    ``nn.LSTM`` into one cell per time step under a symbolic batch: 20–50 s for one GRU of 128
    steps, where the TorchScript exporter writes ONNX's own ``GRU``/``LSTM`` node in 0.3 s. Such
    modules (only they: other graphs keep the dynamo exporter) go through the TorchScript one."""
    return any(isinstance(m, nn.RNNBase) for m in module.modules())


class _Features(nn.Module):
    def __init__(self, module: TrajectoryFeatures) -> None:
        super().__init__()
        self.m = module

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor, traj: torch.Tensor) -> torch.Tensor:
        return self.m.features(x, x_hat, traj)


def _as_function(model: onnx.ModelProto, name: str) -> tuple[onnx.FunctionProto, list[Any]]:
    """``(function, initializers renamed "<name>.<init>")``; the function takes its weights as
    inputs after its own, so every call site shares the model's one copy."""
    g = model.graph
    inits = [i.name for i in g.initializer]
    produced = {o for n in g.node for o in n.output}
    nodes = list(g.node)
    outputs = []
    for o in g.output:
        if o.name in produced:
            outputs.append(o.name)
        else:  # an output that is an input or a weight: a function must produce it
            nodes.append(helper.make_node("Identity", [o.name], [f"{o.name}__out"]))
            outputs.append(f"{o.name}__out")
    fn = helper.make_function(_DOMAIN, name, [i.name for i in g.input] + inits, outputs, nodes,
                              list(model.opset_import))
    renamed = []
    for init in g.initializer:
        t = onnx.TensorProto()
        t.CopyFrom(init)
        t.name = f"{name}.{init.name}"
        renamed.append(t)
    return fn, renamed


class TracedParts:
    """The encoder, the decoder, the optional preprocessing and the feature head, each exported
    once (:func:`trace_parts`) and held as ONNX functions whose weights are shared inputs; the
    bundle graph and the inspection graph are both laid out from these calls."""

    def __init__(self, parts: dict[str, onnx.ModelProto], latent_dim: int,
                 model_shape: Sequence[int]) -> None:
        self.parts = parts
        self.latent_dim = latent_dim
        self.model_shape = tuple(model_shape)  # one sample after the preprocessing
        self.opsets: dict[str, int] = {}
        self.functions: list[onnx.FunctionProto] = []
        self.weights: list[Any] = []
        for name, part in parts.items():
            for op in part.opset_import:
                if self.opsets.setdefault(op.domain, op.version) != op.version:
                    raise ExportError(f"the {name} graph uses opset {op.domain or 'ai.onnx'} "
                                      f"{op.version}, another part {self.opsets[op.domain]}")
            fn, weights = _as_function(part, name)
            self.functions.append(fn)
            self.weights.extend(weights)

    @property
    def preprocessed(self) -> bool:
        return "P" in self.parts

    def call(self, name: str, args: list[str], out: str) -> onnx.NodeProto:
        """A node calling part ``name`` (``"E"``, ``"D"``, ``"P"`` or ``"F"``) on ``args``."""
        weights = [f"{name}.{i.name}" for i in self.parts[name].graph.initializer]
        return helper.make_node(name, args + weights, [out], domain=_DOMAIN)

    def encode(self, x: str, out: str) -> list[onnx.NodeProto]:
        """Nodes for ``out = E(P(x))`` (``P`` where there is a preprocessing)."""
        if not self.preprocessed:
            return [self.call("E", [x], out)]
        return [self.call("P", [x], f"{out}__model_x"), self.call("E", [f"{out}__model_x"], out)]

    def input_info(self, name: str) -> onnx.ValueInfoProto:
        """The raw input's type and shape (batch axis symbolic), renamed ``name``."""
        first = self.parts["P" if self.preprocessed else "E"].graph.input[0]
        info = onnx.ValueInfoProto()
        info.CopyFrom(first)
        info.name = name
        return info

    def model(self, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
              outputs: list[onnx.ValueInfoProto], constants: Sequence[Any] = (),
              name: str = "oodguard_trajectory") -> onnx.ModelProto:
        """One flat model from ``nodes`` (the calls inlined), holding the weights of the parts
        it calls only."""
        called = {n.op_type for n in nodes if n.domain == _DOMAIN}
        weights = [w for w in self.weights if w.name.split(".", 1)[0] in called]
        graph = helper.make_graph(nodes, name, inputs, outputs, [*weights, *constants])
        opset_import = [helper.make_opsetid(k, v) for k, v in self.opsets.items()]
        opset_import.append(helper.make_opsetid(_DOMAIN, 1))
        functions = [f for f in self.functions if f.name in called]
        model = helper.make_model(graph, opset_imports=opset_import, functions=functions,
                                  producer_name="oodguard")
        model.ir_version = max(p.ir_version for p in self.parts.values())
        flat = onnx.inliner.inline_local_functions(model)
        keep = [o for o in flat.opset_import if o.domain != _DOMAIN]
        del flat.opset_import[:]
        flat.opset_import.extend(keep)
        return flat


def trace_parts(module: TrajectoryFeatures, example: torch.Tensor,
                preprocess: nn.Module | None = None) -> TracedParts:
    """Export the parts of ``module`` once each. ``example`` is a raw input batch (N ≥ 2);
    ``preprocess`` (raw ▶ model space) runs first."""
    with torch.inference_mode():
        xm = preprocess(example) if preprocess is not None else example
        z = module.encoder(xm)
        traj, x_hat = module.time_major(xm)
    parts: dict[str, onnx.ModelProto] = {}
    parts["F"] = torch_export(_Features(module), [xm, x_hat, traj], ["x", "x_hat", "traj"],
                              [OUTPUT_NAME], [0, 0, 1], "feature head")
    opset = next(o.version for o in parts["F"].opset_import if o.domain in ("", "ai.onnx"))
    if preprocess is not None:
        parts["P"] = torch_export(preprocess, [example], ["x"], ["y"], [0], "input preprocessing")
    parts["E"] = torch_export(module.encoder, [xm], ["x"], ["z"], [0], "encoder",
                              opset if _has_rnn(module.encoder) else None)
    parts["D"] = torch_export(module.decoder, [z], ["z"], ["x_hat"], [0], "decoder",
                              opset if _has_rnn(module.decoder) else None)
    return TracedParts(parts, int(z.shape[1]), tuple(xm.shape[1:]))


def trajectory_model(traced: TracedParts, steps: int, n_features: int) -> onnx.ModelProto:
    """The check model: raw ``x`` ▶ ``(features, trajectory [T+1, N, d], x̂)``."""
    d = traced.latent_dim
    nodes = []
    x_in = INPUT_NAME
    if traced.preprocessed:
        nodes.append(traced.call("P", [INPUT_NAME], "x_model"))
        x_in = "x_model"
    nodes.append(traced.call("E", [x_in], "z_0"))
    nodes.append(traced.call("D", ["z_0"], CHECK_OUTPUTS[1]))
    nodes.append(traced.call("E", [CHECK_OUTPUTS[1]], "z_1"))
    for t in range(1, steps):
        nodes.append(traced.call("D", [f"z_{t}"], f"x_hat_{t}"))
        nodes.append(traced.call("E", [f"x_hat_{t}"], f"z_{t + 1}"))
    # cat, then reshape: as TrajectoryFeatures.time_major builds it
    nodes.append(helper.make_node("Concat", [f"z_{t}" for t in range(steps + 1)], ["z_all"],
                                  axis=0))
    shape = helper.make_tensor("traj_shape", onnx.TensorProto.INT64, [3], [steps + 1, -1, d])
    nodes.append(helper.make_node("Reshape", ["z_all", "traj_shape"], [CHECK_OUTPUTS[0]]))
    nodes.append(traced.call("F", [x_in, CHECK_OUTPUTS[1], CHECK_OUTPUTS[0]], OUTPUT_NAME))
    f32 = onnx.TensorProto.FLOAT
    outs = [
        helper.make_tensor_value_info(OUTPUT_NAME, f32, ["batch", n_features]),
        helper.make_tensor_value_info(CHECK_OUTPUTS[0], f32, [steps + 1, "batch", d]),
        helper.make_tensor_value_info(CHECK_OUTPUTS[1], f32, ["batch", *traced.model_shape]),
    ]
    return traced.model(nodes, [traced.input_info(INPUT_NAME)], outs, [shape])


def inspection_model(traced: TracedParts) -> onnx.ModelProto:
    """The inspection graph ``(x [n, ...], z [m, d]) ▶ (E(x), D(z), E(D(z)))``: the same
    encoder and decoder calls as the bundle graph, so it runs at any batch size wherever
    ``model.onnx`` does (``x`` is a raw input; ``D(z)`` is in model space)."""
    x, z = INSPECTION_INPUTS
    codes, decoded, stepped = INSPECTION_OUTPUTS
    nodes = [*traced.encode(x, codes), traced.call("D", [z], decoded),
             traced.call("E", [decoded], stepped)]
    x_info = traced.input_info(x)
    x_info.type.tensor_type.shape.dim[0].dim_param = "n"
    f32 = onnx.TensorProto.FLOAT
    d = traced.latent_dim
    z_info = helper.make_tensor_value_info(z, f32, ["m", d])
    outs = [
        helper.make_tensor_value_info(codes, f32, ["n", d]),
        helper.make_tensor_value_info(decoded, f32, ["m", *traced.model_shape]),
        helper.make_tensor_value_info(stepped, f32, ["m", d]),
    ]
    return traced.model(nodes, [x_info, z_info], outs, name="oodguard_inspection")


def compose_trajectory(module: TrajectoryFeatures, example: torch.Tensor,
                       preprocess: nn.Module | None = None) -> onnx.ModelProto:
    """The check model: raw ``x`` ▶ ``(features, trajectory [T+1, N, d], x̂)``.

    ``example`` is a raw input batch (N ≥ 2); ``preprocess`` (raw ▶ model space) runs first.
    """
    return trajectory_model(trace_parts(module, example, preprocess), module.steps,
                            len(module.feature_names))
