"""Same input, same bits: a row's features, score and p-value do not depend on the batch it
arrives in, how the engine cuts the batch, or which (or how many) threads run it."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oodguard import Guard
from oodguard.bundle import MODEL_FILE, read_bundle

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def guard(bundle):  # type: ignore[no-untyped-def]
    return Guard.load(bundle, registry=None, providers="cpu")


@pytest.fixture(scope="module")
def rows(data) -> np.ndarray:  # type: ignore[no-untyped-def]
    """In-distribution, near and far rows; tiled to a few thousand (distinct by a tiny shift,
    so that equal bits cannot come from equal rows)."""
    base = np.concatenate([data["test"], data["noise"], data["train"][:100]])
    reps = [base + np.float32(1e-3 * k) for k in range(4)]
    return np.ascontiguousarray(np.clip(np.concatenate(reps), 0, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def alone(guard, rows):  # type: ignore[no-untyped-def]
    """Every row scored on its own (batch 1): the reference bits."""
    parts = [guard.check(rows[i : i + 1]) for i in range(len(rows))]
    return (np.concatenate([r.features for r in parts]),
            np.concatenate([r.score for r in parts]),
            np.concatenate([r.p_value for r in parts]))


def _same_bits(result, alone, sl=slice(None)) -> None:  # type: ignore[no-untyped-def]
    features, score, p = alone
    np.testing.assert_array_equal(result.features.view(np.int32), features[sl].view(np.int32))
    np.testing.assert_array_equal(result.score.view(np.int64), score[sl].view(np.int64))
    np.testing.assert_array_equal(result.p_value.view(np.int64), p[sl].view(np.int64))


def test_the_graph_has_one_path(bundle) -> None:  # type: ignore[no-untyped-def]
    """The exported graph holds no If: every batch size takes the same nodes."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(read_bundle(bundle).files[MODEL_FILE])
    assert "If" not in {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("batch", [7, 40, 256, 1000])
def test_rows_score_the_same_bits_in_any_batch(guard, rows, alone, batch) -> None:  # type: ignore[no-untyped-def]
    for start in range(0, len(rows), batch):
        _same_bits(guard.check(rows[start : start + batch]), alone, slice(start, start + batch))


def test_the_whole_set_in_one_batch(guard, rows, alone) -> None:  # type: ignore[no-untyped-def]
    assert len(rows) > 2000
    _same_bits(guard.check(rows), alone)


@pytest.mark.parametrize("max_batch,batch_threads", [(1, 1), (13, 1), (64, 2), (300, 2)])
def test_chunking_and_batch_threads_do_not_change_bits(bundle, rows, alone, max_batch,
                                                       batch_threads) -> None:  # type: ignore[no-untyped-def]
    g = Guard.load(bundle, registry=None, providers="cpu", max_batch=max_batch,
                   engine_options={"batch_threads": batch_threads})
    g.engine._row_seconds = 1.0  # pretend rows are slow: every batch is split over the threads
    _same_bits(g.check(rows), alone)
    g.close()


def test_sixteen_threads_get_the_bits_of_one(bundle, rows, alone) -> None:  # type: ignore[no-untyped-def]
    """16 threads score random slices of the set at once (split batches, concurrent callers)."""
    g = Guard.load(bundle, registry=None, providers="cpu", max_batch=50,
                   engine_options={"batch_threads": 4})
    g.engine._row_seconds = 1e-4
    mismatches: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(12):
                a = int(rng.integers(0, len(rows) - 1))
                b = int(rng.integers(a + 1, min(len(rows), a + 400) + 1))
                r = g.check(rows[a:b])
                if not (np.array_equal(r.score.view(np.int64), alone[1][a:b].view(np.int64))
                        and np.array_equal(r.features.view(np.int32),
                                           alone[0][a:b].view(np.int32))):
                    mismatches.append((a, b))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    g.close()
    assert not any(t.is_alive() for t in threads)
    assert not errors and not mismatches


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_row_in_any_company(guard, rows, alone, data) -> None:  # type: ignore[no-untyped-def]
    """A row keeps its bits among any other rows, at any position."""
    i = data.draw(st.integers(0, len(rows) - 1), label="row")
    company = data.draw(st.lists(st.integers(0, len(rows) - 1), min_size=0, max_size=80),
                        label="company")
    pos = data.draw(st.integers(0, len(company)), label="position")
    idx = np.array([*company[:pos], i, *company[pos:]], dtype=np.intp)
    r = guard.check(rows[idx])
    assert r.score[pos].tobytes() == alone[1][i].tobytes()
    assert r.p_value[pos].tobytes() == alone[2][i].tobytes()
    assert r.features[pos].tobytes() == alone[0][i].tobytes()
