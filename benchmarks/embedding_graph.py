"""What the classifier guard's graph costs around its classifier, and what sharing the body saves.

The classifier guard's graph (``oodguard.fit(..., model=clf, layer=...)``) runs the classifier
for ``msp``, ``energy`` and ``embedding_mahalanobis`` beside the autoencoder's trajectory. With
``autoencoder_on="layer"`` the autoencoder learns the layer's embeddings, so the graph also runs
the classifier up to that layer first; the graft points the second copy at the first copy's
weights, so ONNX Runtime's common-subexpression elimination runs the body once. This script
measures, in one process and interleaved (one thread, batches 1 and 256):

- ``classifier``: the classifier alone, exported to ONNX (what the deployed model costs);
- ``guard graph (AE on input)``: the default bundle's graph (a conv autoencoder on the images);
- ``guard graph (AE on layer)``: the ``autoencoder_on="layer"`` bundle's graph as written (body
  shared);
- ``body twice``: that graph with the head's copy of the weights restored (what it cost before
  the sharing): the A/B of the mechanism, the same nodes otherwise.

The classifier is a small CNN on 1×32×32 inputs with a heavier body (four 3×3 convolutions, 32–64
channels) so that the body's cost is visible beside the trajectory's; random data, seeded.

    python benchmarks/embedding_graph.py --out benchmarks/results/embedding_graph.json
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ROOT,
    format_table,
    machine_info,
    summarise,
    time_interleaved,
    write_json,
)


def _classifier() -> Any:
    from torch import nn

    class HeavyCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                nn.Linear(64 * 8 * 8, 64), nn.ReLU())
            self.head = nn.Linear(64, 10)

        def forward(self, x: Any) -> Any:
            return self.head(self.body(x))

    return HeavyCNN().eval()


def body_twice(model_bytes: bytes) -> bytes:
    """The graph with every initializer the grafted head shares with the preprocessing copied
    back under a name of its own (the graph before the sharing)."""
    import onnx

    m = onnx.load_from_string(model_bytes)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    copies: dict[str, str] = {}
    for node in g.node:
        if not node.name.startswith("clf/"):
            continue
        for k, name in enumerate(node.input):
            if name in inits and not name.startswith("clf/"):
                if name not in copies:
                    t = onnx.TensorProto()
                    t.CopyFrom(inits[name])
                    t.name = copies[name] = "clf/copy/" + name
                    g.initializer.append(t)
                node.input[k] = copies[name]
    return m.SerializeToString()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=6.0, help="seconds of timing per batch size")
    p.add_argument("--out", type=Path,
                   default=ROOT / "benchmarks" / "results" / "embedding_graph.json")
    a = p.parse_args(argv)
    import onnxruntime as ort
    import torch

    import oodguard
    from oodguard.bundle import MODEL_FILE
    from oodguard.engine import DENORMAL_AS_ZERO_KEY
    from oodguard.training import Recipe

    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (900, 1, 32, 32)).astype(np.float32)
    clf = _classifier()
    buf = io.BytesIO()
    torch.onnx.export(clf, (torch.from_numpy(x[:2]),), buf, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    with tempfile.TemporaryDirectory() as tmp:
        files = {on: oodguard.fit(x[:600], x[600:], out=Path(tmp) / on, model=clf,
                                  layer="body", autoencoder_on=on, recipe=Recipe(max_epochs=3),
                                  registry=None, progress=False).bundle.files[MODEL_FILE]
                 for on in ("input", "layer")}
    shared = files["layer"]
    graphs = {"classifier": buf.getvalue(), "guard graph (AE on input)": files["input"],
              "guard graph (AE on layer)": shared, "body twice": body_twice(shared)}
    sessions = {}
    for name, data in graphs.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.add_session_config_entry(DENORMAL_AS_ZERO_KEY, "1")
        sessions[name] = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    a_out = sessions["guard graph (AE on layer)"].run(None, {"x": x[:64]})[0]
    b_out = sessions["body twice"].run(None, {"x": x[:64]})[0]
    same_bits = bool(np.array_equal(a_out.view(np.uint32), b_out.view(np.uint32)))
    rows = []
    for batch in (1, 256):
        xb = np.ascontiguousarray(x[:batch])
        lat = time_interleaved({n: (lambda s=s, xb=xb: s.run(None, {"x": xb}))
                                for n, s in sessions.items()}, budget_s=a.budget)
        for name in sessions:
            rows.append({"batch": batch, "graph": name, **summarise(lat[name], batch)})
    print(format_table(rows, [("batch", "batch", "d"), ("graph", "graph", "s"),
                              ("p50_ms", "p50 ms", ".3f"), ("p99_ms", "p99 ms", ".3f"),
                              ("samples_per_s", "samples/s", ",.0f")]))
    print(f"guard graph (AE on layer) and body twice give the same bits: {same_bits}")
    doc = {"benchmark": "embedding_graph", "machine": machine_info(), "rows": rows,
           "same_bits": same_bits}
    write_json(a.out, doc)
    print(f"wrote {a.out}")
    return doc


if __name__ == "__main__":
    main()
