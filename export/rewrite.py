"""Graph rewrites of the exported trajectory graph, made for speed and checked for equality.

ONNX Runtime's CPU ``Elu`` kernel evaluates the exponential one element at a time: 1.9 ns per
element against 0.7 ns for ``Max(x, Exp(Min(x, 0)) − 1)`` in four vectorised nodes (measured
on [4096, 32]); in the demo autoencoder's graph at batch 4096 ``Elu`` took as long as every
``Gemm`` together. But each extra node costs about 0.3 µs per call whatever the batch, and the
rewrite also undoes ONNX Runtime's ``Gemm``+``Elu`` fusion, so at batch 1 the rewritten graph
took 170 µs against 88 µs (T = 32).

One graph path, always. An earlier version kept both forms behind an ``If`` on the batch size;
the two forms round differently (the ``Elu`` kernel's exponential is not the ``Exp`` node's),
so a row's score depended on the batch it arrived in (22 of 1 792 digits changed p-value
between the branches). Each form on its own is batch invariant: on ONNX Runtime 1.32's CPU
provider every row's features were bit-identical at batch 1, 7, 40, 256 and 5 000 for the demo
model (T = 32), plain and rewritten alike (``tests/test_determinism.py`` keeps checking it).
The exporter therefore applies :func:`rewrite_elu_nodes` to the whole graph or not at all
(``export_bundle(rewrite_elu=...)``: the plain graph is ~1.85× faster at batch 1, the rewritten
one ~1.2–1.7× faster at batch 256–4 096 on one thread; see ``docs/performance.md``). The plain
``Elu`` is batch invariant only when each row it sees holds a multiple of
:data:`INVARIANT_ELU_WIDTH` elements (see :func:`elu_is_batch_invariant`); by default
(``rewrite_elu=None``) the exporter keeps the plain form exactly then, and rewrites otherwise.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

__all__ = ["INVARIANT_ELU_WIDTH", "elu_is_batch_invariant", "rewrite_elu_nodes"]

# ONNX Runtime's CPU Elu (Eigen) rounds the last (size mod packet) elements of its tensor with a
# scalar exp that differs from the vectorised one, so a row's bits depend on the batch unless
# every row holds a multiple of the packet (16 floats with AVX-512, which covers 8 and 4).
# Measured on single Elu nodes, batches 3/7/40/257 against batch 1: width 16 no row changed;
# widths 6 and 30 changed 22 and 16 of 257 rows. Exp, Sigmoid, Tanh, Sqrt (MLAS): none.
INVARIANT_ELU_WIDTH = 16


def rewrite_elu_nodes(model: onnx.ModelProto) -> int:
    """Replace each ``Elu(x; alpha ≤ 1)`` of the main graph by
    ``Max(x, alpha·(Exp(Min(x, 0)) − 1))``.

    The two are equal for ``0 < alpha ≤ 1`` (``alpha·(eˣ − 1) ≥ x`` for ``x ≤ 0`` and
    ``= 0 < x`` otherwise), but ONNX Runtime's CPU ``Elu`` kernel evaluates the exponential
    one element at a time (1.9 ns/element against 0.7 ns for the four vectorised ops, measured
    on [4096, 32]); in the demo autoencoder's graph ``Elu`` took as long as every ``Gemm``
    together. Returns the number of nodes replaced; the model is changed in place.
    """
    graph = model.graph
    if not any(n.op_type == "Elu" for n in graph.node):
        return 0
    # The constants must have the element type of each Elu's input (float16 exports).
    inferred = onnx.shape_inference.infer_shapes(model).graph
    elem = {v.name: v.type.tensor_type.elem_type
            for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    nodes: list[onnx.NodeProto] = []
    replaced = 0
    consts: dict[tuple[float, int], str] = {}

    def const(value: float, dtype: int) -> str:
        if (value, dtype) not in consts:
            name = f"_elu_const_{len(consts)}"
            graph.initializer.append(helper.make_tensor(name, dtype, [], [value]))
            consts[value, dtype] = name
        return consts[value, dtype]

    for node in graph.node:
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
        dtype = elem.get(node.input[0], TensorProto.UNDEFINED) if node.input else 0
        if (node.op_type != "Elu" or node.domain not in ("", "ai.onnx") or not 0 < alpha <= 1
                or dtype not in (TensorProto.FLOAT, TensorProto.FLOAT16)):
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        t = f"{node.name or y}_elu"
        mk = onnx.helper.make_node
        nodes += [
            mk("Min", [x, const(0.0, dtype)], [f"{t}_neg"], name=f"{t}_min"),
            mk("Exp", [f"{t}_neg"], [f"{t}_exp"], name=f"{t}_exp"),
            mk("Sub", [f"{t}_exp", const(1.0, dtype)], [f"{t}_em1"], name=f"{t}_sub"),
        ]
        if alpha != 1.0:
            nodes.append(mk("Mul", [f"{t}_em1", const(alpha, dtype)], [f"{t}_scaled"],
                            name=f"{t}_mul"))
        nodes.append(mk("Max", [x, f"{t}_scaled" if alpha != 1.0 else f"{t}_em1"], [y],
                        name=f"{t}_max"))
        replaced += 1
    if replaced:
        del graph.node[:]
        graph.node.extend(nodes)
    return replaced


def elu_is_batch_invariant(model: onnx.ModelProto) -> bool:
    """Whether every ``Elu`` of the main graph sees rows of a known width that is a multiple
    of :data:`INVARIANT_ELU_WIDTH` (True when there is no ``Elu``)."""
    elus = [n for n in model.graph.node if n.op_type == "Elu"]
    if not elus:
        return True
    inferred = onnx.shape_inference.infer_shapes(model).graph
    dims = {v.name: v.type.tensor_type.shape.dim for v in [*inferred.value_info, *inferred.input]}
    for node in elus:
        d = dims.get(node.input[0])
        if d is None or len(d) < 2:
            return False
        width = 1
        for dim in list(d)[1:]:
            if not dim.HasField("dim_value"):
                return False
            width *= int(dim.dim_value)
        if width % INVARIANT_ELU_WIDTH:
            return False
    return True
