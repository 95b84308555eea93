"""Graph rewrites and export options made for speed keep the features (no timings)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from oodguard.export.exporter import export_onnx, rewrite_elu_nodes  # noqa: E402
from oodguard.export.trajectory import TrajectoryFeatures  # noqa: E402

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _run(data: bytes, x: np.ndarray, *, intra_op_threads: int = 0) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads  # 0: ONNX Runtime's default (all cores)
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_elu_rewrite_is_exact(alpha: float) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Elu", ["x"], ["y"], alpha=alpha)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    before = model.SerializeToString()
    replaced = rewrite_elu_nodes(model)
    assert replaced == (1 if alpha <= 1 else 0)  # alpha > 1 is not a max of the two branches
    onnx.checker.check_model(model, full_check=True)
    x = np.linspace(-30, 30, 1000, dtype=np.float32).reshape(200, 5)
    x[0] = [0.0, -0.0, 1e-8, -1e-8, -88.0]
    np.testing.assert_allclose(_run(model.SerializeToString(), x), _run(before, x),
                               rtol=1e-6, atol=2e-7)
    ops = [n.op_type for n in model.graph.node]
    assert ("Elu" in ops) == (alpha > 1)


def test_exported_graph_has_one_path_for_every_batch_size(autoencoder, data) -> None:  # type: ignore[no-untyped-def]
    """No ``If`` on the batch size: both forms are single-path and each row's features are
    bit-identical whatever the batch (the plain and rewritten forms round differently, which is
    why they may not be mixed by batch size)."""
    from oodguard.export.autoencoder import as_encoder_decoder

    enc, dec = as_encoder_decoder(model=autoencoder)
    module = TrajectoryFeatures(enc, dec, torch.randn(5, 3), steps=6, tol=1e-3).eval()
    x = np.ascontiguousarray(np.concatenate([data["test"][:300], data["noise"][:32]]))
    plain = export_onnx(module, torch.from_numpy(x[:4]))  # the default
    fast = export_onnx(module, torch.from_numpy(x[:4]), rewrite_elu=True)
    ops = {name: {n.op_type for n in onnx.load_from_string(d).graph.node}
           for name, d in (("plain", plain), ("fast", fast))}
    assert "If" not in ops["plain"] | ops["fast"]
    assert "Elu" in ops["plain"] and "Elu" not in ops["fast"]
    with torch.inference_mode():
        ref = module(torch.from_numpy(x)).numpy()
    for data_ in (fast, plain):
        # One intra-op thread, as the engine runs it: with several, ONNX Runtime splits some
        # kernels by the batch size and rows may change in their last bits (measured: 11 of
        # 1 000 demo rows at batch 256 with 2 threads; see oodguard.engine).
        whole = _run(data_, x, intra_op_threads=1)
        np.testing.assert_allclose(whole, ref, rtol=1e-4, atol=1e-5)
        for rows in (1, 7, 40, 64):
            parts = np.concatenate([_run(data_, x[i : i + rows], intra_op_threads=1)
                                    for i in range(0, len(x), rows)])
            np.testing.assert_array_equal(parts.view(np.int32), whole.view(np.int32))


def test_time_major_trajectory_is_the_batch_first_one_transposed(autoencoder, data) -> None:  # type: ignore[no-untyped-def]
    from oodguard.export.autoencoder import as_encoder_decoder

    enc, dec = as_encoder_decoder(model=autoencoder)
    module = TrajectoryFeatures(enc, dec, torch.randn(4, 3), steps=5, tol=1e-3).eval()
    x = torch.from_numpy(data["test"][:10])
    with torch.inference_mode():
        tm, _ = module.time_major(x)
        bf, _ = module.trajectory(x)
        z = enc(x)
    assert tm.shape == (6, 10, 3) and bf.shape == (10, 6, 3)
    torch.testing.assert_close(bf, tm.transpose(0, 1))
    torch.testing.assert_close(tm[0], z)


def test_float16_export_records_its_deviation(autoencoder, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from oodguard.bundle import MODEL_FILE, read_bundle
    from oodguard.engine import Engine
    from oodguard.export import export_bundle

    # Loose tolerance on purpose: fp16 trajectories may settle on slightly different fixed
    # points (see FP16_RTOL in oodguard.export.parity); the deviation is recorded instead.
    export_bundle(tmp_path / "b16", model=autoencoder, x_train=data["train"], steps=8,
                  precision="float16", parity_rtol=0.5, parity_atol=0.5)
    b = read_bundle(tmp_path / "b16")
    parity = b.manifest.parity
    assert parity["precision"] == "float16"
    dev = parity["fp16_max_abs_diff_vs_fp32"]
    assert set(dev) == set(b.manifest.feature_names)
    assert dev["recon_error"] < 1e-2
    types = {i.data_type for i in onnx.load_from_string(
        b.files[MODEL_FILE]).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    feats = Engine(b.files[MODEL_FILE], b.manifest, providers="cpu").run(data["test"][:16])
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    json.dumps(dict(parity))  # the manifest stays plain JSON


def test_float16_is_the_only_other_precision(autoencoder, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from oodguard.export import export_bundle

    with pytest.raises(ValueError,
                       match="The 'precision' parameter of export_bundle must be "
                             "'float32' or 'float16'. Got 'int8' instead."):
        export_bundle(tmp_path / "b", model=autoencoder, x_train=data["train"], steps=4,
                      precision="int8")


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a CUDA device")
def test_float16_bundle_on_cuda_matches_cpu(autoencoder, data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from oodguard.bundle import MODEL_FILE, read_bundle
    from oodguard.engine import Engine
    from oodguard.export import export_bundle

    export_bundle(tmp_path / "b16", model=autoencoder, x_train=data["train"], steps=8,
                  precision="float16", parity_rtol=0.5, parity_atol=0.5)
    b = read_bundle(tmp_path / "b16")
    x = data["test"][:64]
    cpu = Engine(b.files[MODEL_FILE], b.manifest, providers="cpu").run(x)
    gpu = Engine(b.files[MODEL_FILE], b.manifest, providers="cuda").run(x)
    np.testing.assert_allclose(gpu, cpu, rtol=5e-2, atol=5e-2)


def test_unaligned_elu_widths_are_rewritten_for_batch_invariance() -> None:
    """ONNX Runtime's Elu rounds a tensor's last (size mod 16) elements differently: with a
    hidden width of 30 the plain graph changes rows' bits with the batch, so the default
    export rewrites it; the rewritten graph keeps every row's bits."""
    from torch import nn

    from oodguard.export.rewrite import elu_is_batch_invariant

    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(16, 30), nn.ELU(), nn.Linear(30, 3)).eval()
    dec = nn.Sequential(nn.Linear(3, 30), nn.ELU(), nn.Linear(30, 16), nn.Sigmoid()).eval()
    module = TrajectoryFeatures(enc, dec, torch.randn(4, 3), steps=5, tol=1e-3).eval()
    x = np.random.default_rng(0).uniform(0, 1, size=(257, 16)).astype(np.float32)
    auto = export_onnx(module, torch.from_numpy(x[:4]))
    plain = export_onnx(module, torch.from_numpy(x[:4]), rewrite_elu=False)
    assert not elu_is_batch_invariant(onnx.load_from_string(plain))
    assert "Elu" not in {n.op_type for n in onnx.load_from_string(auto).graph.node}

    def changed_rows(data: bytes) -> int:
        alone = np.concatenate([_run(data, x[i : i + 1], intra_op_threads=1)
                                for i in range(len(x))])
        batched = np.concatenate([_run(data, x[i : i + 40], intra_op_threads=1)
                                  for i in range(0, len(x), 40)])
        return int((batched.view(np.int32) != alone.view(np.int32)).any(axis=1).sum())

    assert changed_rows(auto) == 0
    assert changed_rows(plain) > 0  # the reason for the rule (if this ever fails, ORT changed)


@pytest.mark.parametrize("width", [13, 30, 100])
def test_unaligned_input_widths_keep_rows_bits(width: int) -> None:
    """An input width that is not a multiple of 16 (breast cancer's 30 features, wine's 13)
    made recon_error's mean change bits with a row's place in the batch (9 of 40 rows of an
    exported cancer AE; ONNX Runtime's reduction of a [N, 30] tensor rounds by the row's memory
    alignment). The graph pads the squared error to a multiple of 16 before summing."""
    from torch import nn

    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(width, 32), nn.ELU(), nn.Linear(32, 4)).eval()
    dec = nn.Sequential(nn.Linear(4, 32), nn.ELU(), nn.Linear(32, width)).eval()
    module = TrajectoryFeatures(enc, dec, torch.randn(4, 4), steps=5, tol=1e-3).eval()
    x = np.random.default_rng(0).normal(size=(257, width)).astype(np.float32)
    data = export_onnx(module, torch.from_numpy(x[:4]))
    alone = np.concatenate([_run(data, x[i : i + 1], intra_op_threads=1) for i in range(len(x))])
    for size in (7, 40, 257):
        batched = np.concatenate([_run(data, x[i : i + size], intra_op_threads=1)
                                  for i in range(0, len(x), size)])
        assert np.array_equal(batched.view(np.int32), alone.view(np.int32)), size
    with torch.no_grad():
        want = ((torch.from_numpy(x) - module.decoder(module.encoder(torch.from_numpy(x))))
                .pow(2).mean(dim=1)).numpy()
    np.testing.assert_allclose(alone[:, 0], want, rtol=1e-5)
