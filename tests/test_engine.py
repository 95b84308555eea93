"""The engine: chunking, batch threads, session options, io-binding, providers (no timings)."""

from __future__ import annotations

import numpy as np
import pytest

from oodguard.bundle import MODEL_FILE, read_bundle
from oodguard.engine import Engine, resolve_providers
from oodguard.errors import InvalidParameterError

ort = pytest.importorskip("onnxruntime")
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a CUDA device")


@pytest.fixture(scope="module")
def parts(raw_bundle):  # type: ignore[no-untyped-def]
    b = read_bundle(raw_bundle)
    return b.files[MODEL_FILE], b.manifest


@pytest.fixture(scope="module")
def x(data) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.ascontiguousarray(np.concatenate([data["test"], data["noise"]]))


def _engine(parts, **kw):  # type: ignore[no-untyped-def]
    model, manifest = parts
    return Engine(model, manifest, providers="cpu", **kw)


def test_chunking_gives_the_features_of_one_call(parts, x) -> None:  # type: ignore[no-untyped-def]
    whole = _engine(parts, batch_threads=1).run(x)
    for max_batch in (1, 7, 64, len(x) - 1):
        chunked = _engine(parts, max_batch=max_batch, batch_threads=1).run(x)
        assert chunked.shape == whole.shape and chunked.dtype == np.float32
        # Rows are independent; only the kernel's blocking may round differently.
        np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_batch_threads_split_large_batches_and_agree(parts, x) -> None:  # type: ignore[no-untyped-def]
    serial = _engine(parts, batch_threads=1).run(x)
    eng = _engine(parts, batch_threads=2, max_batch=100)
    eng.run(x[:64])  # the first single-threaded call gives the per-row estimate
    eng._row_seconds = 1.0  # pretend rows are slow so that the batch is split
    calls: list[int] = []
    run_chunk = eng._run_chunk

    def spy(xc, out, *rest):  # type: ignore[no-untyped-def]
        calls.append(len(xc))
        return run_chunk(xc, out, *rest)

    eng._run_chunk = spy  # type: ignore[method-assign]
    got = eng.run(x)
    eng.close()
    assert len(calls) > 1 and sum(calls) == len(x) and max(calls) <= 100
    assert eng._pool is None
    np.testing.assert_allclose(got, serial, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("threads", "rows", "row_us", "want"),
    [
        (2, 256, 0.0, 1),  # no estimate yet: never split
        (2, 256, 2.0, 1),  # 0.5 ms expected: below the split threshold
        (2, 256, 4.0, 2),  # 1 ms: both threads
        (1, 4096, 4.0, 1),  # one thread allowed
        (16, 256, 4.0, 3),  # 1 ms over 16 threads: only 3 get >= 0.3 ms of work each
        (16, 40, 100.0, 2),  # 4 ms, but 40 rows give only 2 chunks of >= 16 rows
        (16, 65536, 4.0, 16),
    ],
)
def test_split_rule_gives_each_thread_enough_work(parts, threads, rows, row_us, want) -> None:  # type: ignore[no-untyped-def]
    eng = _engine(parts, batch_threads=threads)
    eng._row_seconds = row_us * 1e-6
    assert eng._workers_for(rows) == want


def test_the_caller_runs_chunks_and_concurrent_callers_agree(parts, x) -> None:  # type: ignore[no-untyped-def]
    import threading
    from concurrent.futures import ThreadPoolExecutor

    serial = _engine(parts, batch_threads=1).run(x)
    eng = _engine(parts, batch_threads=2)
    eng._row_seconds = 1e-3  # every batch here is split
    threads: set[str] = set()
    run_chunk = eng._run_chunk

    def spy(xc, out, *rest):  # type: ignore[no-untyped-def]
        threads.add(threading.current_thread().name)
        return run_chunk(xc, out, *rest)

    eng._run_chunk = spy  # type: ignore[method-assign]
    with ThreadPoolExecutor(4, thread_name_prefix="caller") as pool:
        results = list(pool.map(lambda _: eng.run(x), range(12)))
    eng.close()
    for got in results:
        np.testing.assert_allclose(got, serial, rtol=1e-5, atol=1e-6)
    assert any(t.startswith("caller") for t in threads)  # callers take chunks themselves
    assert any(t.startswith("oodguard") for t in threads)  # and hand some to the pool


def test_an_error_in_a_chunk_propagates_after_every_chunk_finished(parts, x) -> None:  # type: ignore[no-untyped-def]
    import threading
    import time

    eng = _engine(parts, batch_threads=2, max_batch=32)
    eng._row_seconds = 1e-3
    running = threading.Semaphore(0)
    finished: list[int] = []
    run_chunk = eng._run_chunk

    failed: list[int] = []

    def flaky(xc, out, *rest):  # type: ignore[no-untyped-def]
        if threading.current_thread().name.startswith("oodguard"):
            failed.append(len(xc))
            raise RuntimeError("chunk failed")
        running.release()
        time.sleep(0.01)  # the caller's chunks are slow: the helper fails first
        out = run_chunk(xc, out)
        finished.append(len(xc))
        return out

    eng._run_chunk = flaky  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="chunk failed"):
        eng.run(x)
    eng.close()
    # the caller drained every remaining chunk before run() raised
    assert running.acquire(timeout=0) and sum(finished) + sum(failed) == len(x)


def test_small_batches_stay_on_the_calling_thread(parts, x) -> None:  # type: ignore[no-untyped-def]
    eng = _engine(parts, batch_threads=4)
    eng.run(x[:1])
    assert eng._pool is None  # batch 1 never hands off to a thread
    eng.run(x[:64])
    assert eng._row_seconds > 0


def test_thread_and_session_options_are_applied(parts) -> None:  # type: ignore[no-untyped-def]
    eng = _engine(parts, intra_op_threads=3, inter_op_threads=2, spinning=False)
    opts = eng.session_options
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 2
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert eng.batch_threads >= 1
    default = _engine(parts)
    assert default.session_options.intra_op_num_threads == 1
    assert _engine(parts, batch_threads=3).batch_threads == 3


@pytest.mark.parametrize("key", ["intra_op_threads", "inter_op_threads", "batch_threads",
                                 "max_batch", "cuda_graph_batch"])
@pytest.mark.parametrize("bad", [0, -1, 2.5, "2", True])
def test_bad_engine_options_are_refused(parts, key, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameterError,
                       match=f"The '{key}' parameter of Engine must be a positive int or "
                             "None\\. Got"):
        _engine(parts, **{key: bad})


def test_io_binding_on_cpu_matches_run(parts, x) -> None:  # type: ignore[no-untyped-def]
    plain = _engine(parts, io_binding=False, batch_threads=1).run(x)
    eng = _engine(parts, io_binding=True, batch_threads=1, max_batch=50)
    assert eng.io_binding
    bound = eng.run(x)
    np.testing.assert_allclose(eng.run(x[:50]), plain[:50], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bound, plain, rtol=1e-5, atol=1e-6)


def test_cuda_graph_needs_cuda(parts) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameterError,
                       match="'cuda_graph_batch' parameter of Engine must be None unless"):
        _engine(parts, cuda_graph_batch=8)


def test_guard_forwards_engine_options(bundle) -> None:  # type: ignore[no-untyped-def]
    from oodguard import Guard

    g = Guard.load(bundle, registry=None, engine_options={"batch_threads": 1, "io_binding": True})
    assert g.engine.batch_threads == 1 and g.engine.io_binding
    assert len(g.check(np.full((3, 16), 0.5, np.float32))) == 3


def test_provider_resolution_on_this_machine() -> None:
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    auto = resolve_providers("auto")
    assert auto[-1] == "CPUExecutionProvider"
    assert (auto[0] == "CUDAExecutionProvider") == HAS_CUDA


@needs_gpu
def test_cuda_engine_matches_cpu(parts, x) -> None:  # type: ignore[no-untyped-def]
    model, manifest = parts
    cpu = Engine(model, manifest, providers="cpu").run(x)
    gpu = Engine(model, manifest, providers="cuda")
    assert gpu.providers[0] == "CUDAExecutionProvider" and gpu.io_binding
    assert gpu.batch_threads == 1
    np.testing.assert_allclose(gpu.run(x), cpu, rtol=1e-3, atol=1e-4)


@needs_gpu
def test_cuda_graph_replays_fixed_batches(parts, x) -> None:  # type: ignore[no-untyped-def]
    model, manifest = parts
    cpu = Engine(model, manifest, providers="cpu").run(x[:32])
    eng = Engine(model, manifest, providers="cuda", cuda_graph_batch=32)
    for _ in range(3):  # replays reuse the captured buffers
        np.testing.assert_allclose(eng.run(x[:32]), cpu, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(eng.run(x[:5]), cpu[:5], rtol=1e-3, atol=1e-4)  # other sizes


def test_a_first_call_above_max_batch_still_learns_the_row_cost(parts, x) -> None:  # type: ignore[no-untyped-def]
    eng = _engine(parts, batch_threads=2, max_batch=100)
    assert eng._row_seconds == 0.0
    eng.run(x)  # chunked, serial: the timings of the chunks give the estimate
    assert eng._row_seconds > 0


def test_denormals_are_flushed_to_zero(parts) -> None:  # type: ignore[no-untyped-def]
    from oodguard.engine import DENORMAL_AS_ZERO_KEY

    eng = _engine(parts)
    assert DENORMAL_AS_ZERO_KEY == "session.set_denormal_as_zero"
    assert eng.session_options.get_session_config_entry(DENORMAL_AS_ZERO_KEY) == "1"


def test_a_graph_that_switches_on_the_batch_size_is_loaded_with_a_warning(parts, caplog) -> None:  # type: ignore[no-untyped-def]
    """Bundles of older versions hold an If on the batch size (two Elu forms that round
    differently); they still load, but the engine says their scores are not batch invariant."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    model_bytes, manifest = parts
    assert _engine(parts).batch_invariant
    model = onnx.load_from_string(model_bytes)
    model.graph.initializer.append(
        helper.make_tensor("_switch_min_rows", TensorProto.INT64, [1], [64]))
    with caplog.at_level("WARNING", logger="oodguard.engine"):
        eng = Engine(model.SerializeToString(), manifest, providers="cpu")
    assert not eng.batch_invariant
    assert "switches Elu forms on the batch size" in caplog.text
    assert "Re-export the bundle for batch-invariant scores" in caplog.text


def test_intra_op_threads_give_up_batch_invariance_with_a_warning(parts, caplog) -> None:  # type: ignore[no-untyped-def]
    with caplog.at_level("WARNING", logger="oodguard.engine"):
        eng = _engine(parts, intra_op_threads=2)
    assert not eng.batch_invariant
    assert "intra_op_threads=2: ONNX Runtime splits some kernels" in caplog.text
    assert _engine(parts, intra_op_threads=1).batch_invariant


def test_a_graph_whose_rows_depend_on_the_batch_is_detected_at_load(parts, caplog) -> None:  # type: ignore[no-untyped-def]
    """The load-time probe scores synthetic rows alone and in a batch of 67: a graph ending in
    a Log (Eigen rounds a tensor's tail differently) over 9 features per row is caught."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    model_bytes, manifest = parts
    model = onnx.load_from_string(model_bytes)
    out = manifest.output_name
    producer = next(n for n in model.graph.node if out in n.output)
    producer.output[list(producer.output).index(out)] = "pre_log"
    model.graph.node.extend([helper.make_node("Abs", ["pre_log"], ["pre_abs"]),
                             helper.make_node("Log", ["pre_abs"], [out])])
    with caplog.at_level("WARNING", logger="oodguard.engine"):
        eng = Engine(model.SerializeToString(), manifest, providers="cpu")
    assert not eng.batch_invariant
    assert "gives a row different bits alone and in a batch" in caplog.text
    assert "splits some kernels over threads" not in caplog.text  # one warning, the right one
