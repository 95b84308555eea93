"""The trajectory graph with an ONNX ``Loop`` instead of ``T`` unrolled steps (benchmark only).

Three pieces are exported from torch and stitched together with ``onnx.helper``:

- head ``x ▶ (z0, x̂ = D(z0), z1 = E(x̂))``,
- a ``Loop`` with constant trip count ``T − 1`` whose body is one step ``z ▶ E(D(z))``; the
  carried value is ``z`` and the scan output stacks ``z2 … zT`` time-major ``[T−1, N, d]``,
- tail: :meth:`TrajectoryFeatures.features` on ``[z0; z1; scan]``.

The weights of the step are initialisers of the outer graph (the body reads them from the
enclosing scope), so the graph holds one copy of ``E`` and ``D`` instead of ``T``.
"""

from __future__ import annotations

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from oodguard.export.exporter import INPUT_NAME, OUTPUT_NAME, rewrite_elu_nodes
from oodguard.export.trajectory import TrajectoryFeatures


class _Head(nn.Module):
    def __init__(self, m: TrajectoryFeatures) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z0 = self.m.encoder(x)
        x_hat = self.m.decoder(z0)
        return z0, x_hat, self.m.encoder(x_hat)


class _Step(nn.Module):
    def __init__(self, m: TrajectoryFeatures) -> None:
        super().__init__()
        self.m = m

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.m.encoder(self.m.decoder(z))  # type: ignore[no-any-return]


class _Tail(nn.Module):
    def __init__(self, m: TrajectoryFeatures) -> None:
        super().__init__()
        self.m = m

    def forward(
        self, x: torch.Tensor, x_hat: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor,
        zs: torch.Tensor,
    ) -> torch.Tensor:
        traj = torch.cat([z0[None], z1[None], zs], dim=0)
        return self.m.features(x, x_hat, traj)  # type: ignore[no-any-return]


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], dyn: dict[str, dict[int, object]],
            names: list[str], outs: list[str], prefix: str) -> onnx.ModelProto:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(module, args, input_names=names, output_names=outs,
                                 dynamo=True, dynamic_shapes=dyn, verbose=False)
    model = prog.model_proto
    rewrite_elu_nodes(model)  # as export_onnx does for the unrolled graph
    return onnx.compose.add_prefix(model, prefix)


def loop_model(module: TrajectoryFeatures, example: torch.Tensor) -> bytes:
    """Serialized ONNX model ``x [N, ...] ▶ features [N, F]`` built around one ``Loop``."""
    steps = module.steps
    batch = torch.export.Dim("batch", min=1)
    with torch.inference_mode():
        z0, x_hat, z1 = _Head(module)(example)
        zs = torch.stack([z1] * (steps - 1))
    head = _export(_Head(module), (example,), {"x": {0: batch}}, ["x"], ["z0", "xh", "z1"],
                   "h_")
    step = _export(_Step(module), (z1,), {"z": {0: batch}}, ["z"], ["zn"], "s_")
    tail = _export(
        _Tail(module), (example, x_hat, z0, z1, zs),
        {"x": {0: batch}, "x_hat": {0: batch}, "z0": {0: batch}, "z1": {0: batch},
         "zs": {1: batch}},
        ["x", "xh", "z0", "z1", "zs"], ["f"], "t_",
    )
    for part in (head, step, tail):
        if part.functions:
            raise RuntimeError("the exported pieces hold local functions; inline them first")

    def rename(nodes: list[onnx.NodeProto], mapping: dict[str, str]) -> list[onnx.NodeProto]:
        for node in nodes:
            for i, name in enumerate(node.input):
                if name in mapping:
                    node.input[i] = mapping[name]
            for i, name in enumerate(node.output):
                if name in mapping:
                    node.output[i] = mapping[name]
        return nodes

    head_nodes = rename(list(head.graph.node), {"h_x": INPUT_NAME})
    d = int(z0.shape[1])
    body_nodes = rename(list(step.graph.node), {"s_z": "b_z", "s_zn": "b_zn"})
    body_nodes += [
        helper.make_node("Identity", ["b_cond"], ["b_cond_out"]),
        helper.make_node("Identity", ["b_zn"], ["b_scan"]),
    ]
    fz = helper.make_tensor_value_info
    body = helper.make_graph(
        body_nodes, "step",
        [fz("b_iter", TensorProto.INT64, []), fz("b_cond", TensorProto.BOOL, []),
         fz("b_z", TensorProto.FLOAT, ["N", d])],
        [fz("b_cond_out", TensorProto.BOOL, []), fz("b_zn", TensorProto.FLOAT, ["N", d]),
         fz("b_scan", TensorProto.FLOAT, ["N", d])],
    )
    trip = helper.make_tensor("loop_trip", TensorProto.INT64, [], [steps - 1])
    loop = helper.make_node("Loop", ["loop_trip", "", "h_z1"], ["loop_zT", "loop_zs"], body=body)
    tail_nodes = rename(
        list(tail.graph.node),
        {"t_x": INPUT_NAME, "t_xh": "h_xh", "t_z0": "h_z0", "t_z1": "h_z1", "t_zs": "loop_zs",
         "t_f": OUTPUT_NAME},
    )
    graph = helper.make_graph(
        [*head_nodes, loop, *tail_nodes], "trajectory_loop",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                       ["N", *example.shape[1:]])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT,
                                       ["N", len(module.feature_names)])],
        initializer=[*head.graph.initializer, *step.graph.initializer,
                     *tail.graph.initializer, trip],
    )
    opsets = {}
    for part in (head, step, tail):
        for o in part.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(k, v) for k, v in opsets.items()],
        producer_name="oodguard-bench-loop",
    )
    model.ir_version = head.ir_version
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()  # type: ignore[no-any-return]
