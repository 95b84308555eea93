"""The guard: every input outcome, the wrap policies, thread safety, metrics injection."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from oodguard import (
    FEATURE_NAMES,
    CheckResult,
    Guard,
    GuardFailure,
    InvalidInputError,
    InvalidParameterError,
    NonFiniteInputError,
    NotCalibratedError,
    OODInputError,
)


@pytest.fixture(scope="module")
def guard(bundle):  # type: ignore[no-untyped-def]
    return Guard.load(bundle, registry=None)


def test_check_returns_typed_result(guard, data) -> None:  # type: ignore[no-untyped-def]
    r = guard.check(data["test"][:50])
    assert isinstance(r, CheckResult) and len(r) == 50
    assert r.score.shape == r.p_value.shape == r.is_ood.shape == (50,)
    assert r.features.shape == (50, len(guard.feature_names))
    np.testing.assert_array_equal(r.is_ood, r.p_value <= guard.alpha)
    assert ((r.p_value > 0) & (r.p_value <= 1)).all()
    assert r.feature("recon_error").shape == (50,)
    with pytest.raises(KeyError, match="no feature 'nope'"):
        r.feature("nope")


def test_ood_scores_higher(guard, data) -> None:  # type: ignore[no-untyped-def]
    inside, noise = guard.check(data["test"]), guard.check(data["noise"])
    assert np.median(noise.score) > np.quantile(inside.score, 0.95)
    assert noise.is_ood.mean() > 0.9
    assert inside.is_ood.mean() < 0.12


def test_wrong_dtype(guard, data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match=r"got dtype int64. Scale the input") as e:
        guard.check(np.zeros((2, 16), dtype=np.int64))
    assert e.value.reason == "dtype"
    with pytest.raises(InvalidInputError, match="dtype <U1") as e:
        guard.check(np.array([["a"] * 16]))
    assert e.value.reason == "dtype"


def test_wrong_rank_and_single_sample_hint(guard, data) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match=r"rank 2\); got rank 1 .* add a batch axis") as e:
        guard.check(data["test"][0])
    assert e.value.reason == "rank"
    with pytest.raises(InvalidInputError, match="got rank 3"):
        guard.check(data["test"][None])


def test_wrong_shape(guard) -> None:  # type: ignore[no-untyped-def]
    msg = r"got shape \(3, 15\).*samples of shape \(16,\)"
    with pytest.raises(InvalidInputError, match=msg) as e:
        guard.check(np.zeros((3, 15), np.float32))
    assert e.value.reason == "shape"


def test_empty_batch_gives_empty_result(guard) -> None:  # type: ignore[no-untyped-def]
    r = guard.check(np.zeros((0, 16), np.float32))
    assert len(r) == 0 and r.features.shape == (0, len(guard.feature_names))
    assert r.is_ood.dtype == bool


def test_float64_and_lists_are_cast(guard, data) -> None:  # type: ignore[no-untyped-def]
    x = data["test"][:5]
    base = guard.check(x)
    np.testing.assert_array_equal(guard.check(x.astype(np.float64)).score, base.score)
    np.testing.assert_array_equal(guard.check(x.tolist()).score, base.score)
    # non-contiguous views are accepted
    xx = np.repeat(x, 2, axis=0)[::2]
    np.testing.assert_array_equal(guard.check(xx).score, base.score)


def test_non_finite_rows_are_flagged_others_unchanged(guard, data) -> None:  # type: ignore[no-untyped-def]
    x = data["test"][:6].copy()
    base = guard.check(x)
    x[1, 3] = np.nan
    x[4, 0] = np.inf
    r = guard.check(x)
    bad = np.array([False, True, False, False, True, False])
    assert np.isinf(r.score[bad]).all() and (r.p_value[bad] == 0).all() and r.is_ood[bad].all()
    assert np.isnan(r.features[bad]).all()
    np.testing.assert_allclose(r.score[~bad], base.score[~bad], rtol=1e-6)
    # float64 values beyond float32's range become inf and are flagged the same way
    big = data["test"][:2].astype(np.float64)
    big[0, 0] = 1e300
    assert np.isinf(guard.check(big).score[0])


def test_non_finite_raise_policy(bundle, data) -> None:  # type: ignore[no-untyped-def]
    g = Guard.load(bundle, registry=None, nonfinite="raise")
    x = data["test"][:3].copy()
    x[2, 2] = -np.inf
    with pytest.raises(NonFiniteInputError, match=r"1 of 3 rows hold NaN or infinity \(rows 2\)"):
        g.check(x)
    with pytest.raises(InvalidParameterError,
                       match=r"The 'nonfinite' parameter of Guard must be one of \('flag', "
                             r"'raise'\)\. Got 'drop' instead\."):
        Guard.load(bundle, registry=None, nonfinite="drop")


def test_uncalibrated_bundle(raw_bundle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotCalibratedError, match="calibrate it first"):
        Guard.load(raw_bundle, registry=None)


def test_alpha_override(bundle, data) -> None:  # type: ignore[no-untyped-def]
    strict = Guard.load(bundle, registry=None, alpha=0.01)
    loose = Guard.load(bundle, registry=None, alpha=0.2)
    assert strict.threshold > loose.threshold
    x = data["test"]
    assert strict.check(x).n_ood <= loose.check(x).n_ood
    with pytest.raises(InvalidParameterError,
                       match=r"The 'alpha' parameter of Guard must be None or a float in "
                             r"\[1/\(n\+1\), 1\).*Got 1e-05 instead\. Calibrate on more"):
        Guard.load(bundle, registry=None, alpha=1e-5)


def test_thread_safe(guard, data) -> None:  # type: ignore[no-untyped-def]
    batches = [data["test"][i : i + 7] for i in range(0, 140, 7)]
    serial = [guard.check(b).score for b in batches]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda b: guard.check(b).score, batches * 3))
    for i, s in enumerate(parallel):
        np.testing.assert_array_equal(s, serial[i % len(batches)])


def _predict(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).sum(axis=1, keepdims=True)


def test_wrap_flag(guard, data) -> None:  # type: ignore[no-untyped-def]
    x = np.concatenate([data["test"][:4], data["noise"][:2]])
    out = guard.wrap(_predict)(x)
    np.testing.assert_allclose(out.prediction, _predict(x))
    assert out.result is not None and out.result.is_ood[4:].all()


def test_wrap_raise(guard, data) -> None:  # type: ignore[no-untyped-def]
    calls = []
    model = guard.wrap(lambda x: calls.append(len(x)) or _predict(x), on_ood="raise")
    inside = data["test"][guard.check(data["test"]).p_value > guard.alpha][:4]
    with pytest.raises(OODInputError, match="2 of 6 inputs are out of distribution") as e:
        model(np.concatenate([data["noise"][:2], inside]))
    assert e.value.result.is_ood[:2].all() and calls == []  # the model never ran
    inside = inside[:3]
    assert model(inside).prediction.shape == (3, 1)


def test_wrap_fallback_reassembles_rows(guard, data) -> None:  # type: ignore[no-untyped-def]
    x = np.concatenate([data["test"][:2], data["noise"][:1], data["test"][2:3]])
    model = guard.wrap(_predict, on_ood="fallback", fallback=lambda x: np.full((len(x), 1), -1.0))
    out = model(x)
    ood = out.result.is_ood
    assert ood[2]
    np.testing.assert_allclose(out.prediction[ood], -1.0)
    np.testing.assert_allclose(out.prediction[~ood], _predict(x[~ood]))
    with pytest.raises(InvalidParameterError,
                       match=r"The 'fallback' parameter of Guard.wrap must be a callable "
                             r"exactly when on_ood='fallback'\. Got None instead\."):
        guard.wrap(_predict, on_ood="fallback")


@pytest.mark.parametrize("on_ood", ["flag", "raise", "fallback"])
def test_wrap_never_calls_the_model_with_an_empty_batch(guard, on_ood) -> None:  # type: ignore[no-untyped-def]
    """Many models refuse zero rows (scikit-learn raises): the wrapped model answers an empty
    batch itself, with an empty prediction and an empty result."""
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if not len(x):
            raise ValueError("Found array with 0 sample(s)")
        return np.zeros((len(x), 1))

    fallback = (lambda x: predict(x)) if on_ood == "fallback" else None
    out = guard.wrap(predict, on_ood=on_ood, fallback=fallback)(np.zeros((0, 16), np.float32))
    assert calls == [] and out.prediction.shape == (0,) and len(out.result) == 0


def test_guard_failure_fail_open_and_closed(bundle, data, registry, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    g = Guard.load(bundle, registry=registry, name="g1")

    def boom(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(g.engine, "run", boom)
    out = g.wrap(_predict, on_error="open")(data["test"][:3])
    assert out.result is None and out.prediction.shape == (3, 1)
    with pytest.raises(GuardFailure, match=r"guard 'g1': the engine failed on a batch of 3 rows "
                       r"\(RuntimeError: CUDA out of memory\)") as info:
        g.wrap(_predict, on_error="closed")(data["test"][:3])
    assert info.value.reason == "engine_error"
    assert isinstance(info.value.__cause__, RuntimeError)
    failures = registry.get_sample_value(
        "oodguard_guard_failures_total", {"guard": "g1", "kind": "engine_error"})
    assert failures == 2
    # invalid input is the caller's error under either policy
    with pytest.raises(InvalidInputError):
        g.wrap(_predict, on_error="open")(np.zeros((2, 3), np.float32))


def test_metrics_go_to_the_given_registry(bundle, data, registry) -> None:  # type: ignore[no-untyped-def]
    g = Guard.load(bundle, registry=registry, name="m")
    r = g.check(np.concatenate([data["test"][:20], data["noise"][:5]]))
    get = registry.get_sample_value
    assert get("oodguard_inputs_total", {"guard": "m", "verdict": "ood"}) == r.n_ood
    assert get("oodguard_inputs_total", {"guard": "m", "verdict": "in"}) == 25 - r.n_ood
    assert get("oodguard_score_normalized_count", {"guard": "m"}) == 25
    # the normalised score's bucket at 1 (the threshold) counts the in-distribution verdicts
    at_thr = get("oodguard_score_normalized_bucket", {"guard": "m", "le": "1.0"})
    assert at_thr == int((r.score <= g.threshold).sum()) == 25 - r.n_ood
    with pytest.raises(InvalidInputError):
        g.check(np.zeros((4, 2), np.float32))
    assert get("oodguard_inputs_refused_total", {"guard": "m", "reason": "shape"}) == 4


def test_missing_onnxruntime_says_what_to_install(bundle) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "import oodguard\n"
        f"oodguard.Guard.load({str(bundle)!r}, registry=None)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "MissingDependencyError" in p.stderr
    assert "pip install 'oodguard[cpu]'" in p.stderr and "'oodguard[gpu]'" in p.stderr


def _rewrite(bundle, tmp_path, *, shape=None, model=None):  # type: ignore[no-untyped-def]
    """A copy of the bundle, re-written (so hashes are valid) with a changed manifest/model."""
    from oodguard.bundle import MODEL_FILE, InputSpec, Manifest, read_bundle, write_bundle

    b = read_bundle(bundle)
    doc = b.manifest.to_dict()
    if shape is not None:
        doc["input"] = InputSpec(name="x", shape=shape).__dict__ | {"shape": list(shape)}
    files = dict(b.files)
    if model is not None:
        files[MODEL_FILE] = model
    return write_bundle(tmp_path / "b", Manifest.from_dict(doc), files)


def test_onnx_signature_must_match_manifest(bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from oodguard import BundleError

    path = _rewrite(bundle, tmp_path, shape=(15,))
    with pytest.raises(BundleError, match=r"input shape \['batch', 16\] does not match .* \[15\]"):
        Guard.load(path, registry=None)


def test_valid_hash_but_garbage_model(bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from oodguard import BundleError

    path = _rewrite(bundle, tmp_path, model=b"\x08\x07not a model")
    with pytest.raises(BundleError, match="ONNX Runtime could not load model.onnx"):
        Guard.load(path, registry=None)


def test_refusal_counts_rows_only_when_the_batch_axis_is_trustworthy(bundle, registry) -> None:  # type: ignore[no-untyped-def]
    g = Guard.load(bundle, registry=registry, name="r")
    for bad in (np.zeros((5, 3), np.float32), np.zeros(16, np.float32), np.zeros((2, 16), int)):
        with pytest.raises(InvalidInputError):
            g.check(bad)
    get = registry.get_sample_value
    assert get("oodguard_inputs_refused_total", {"guard": "r", "reason": "shape"}) == 5
    assert get("oodguard_inputs_refused_total", {"guard": "r", "reason": "rank"}) == 1
    assert get("oodguard_inputs_refused_total", {"guard": "r", "reason": "dtype"}) == 2


def test_fallback_merges_dtypes(guard, data) -> None:  # type: ignore[no-untyped-def]
    x = np.concatenate([data["test"][:2], data["noise"][:1]])
    model = guard.wrap(lambda x: np.ones((len(x), 1), np.float32), on_ood="fallback",
                       fallback=lambda x: np.full((len(x), 1), 7, np.int64))
    out = model(x).prediction
    assert out.dtype == np.float64 and out[2, 0] == 7


# -- engine faults: every one is a counted GuardFailure, and on_error decides -----------------
NF = len(FEATURE_NAMES)


def _faulty(kind: str, release: threading.Event | None = None):  # type: ignore[no-untyped-def]
    def run(x: np.ndarray, **_kw: object) -> object:
        n = len(x)
        if kind == "rows+1":
            return np.zeros((n + 1, NF), np.float32)
        if kind == "rows-1":
            return np.zeros((n - 1, NF), np.float32)
        if kind == "columns":
            return np.zeros((n, 3), np.float32)
        if kind == "dtype":
            return np.zeros((n, NF), np.float64)
        if kind == "not_an_array":
            return [[0.0] * NF] * n
        if kind == "raises":
            raise RuntimeError("device lost")
        if kind == "stall":
            assert release is not None
            release.wait(30)
            return np.zeros((n, NF), np.float32)
        raise AssertionError(kind)

    return run


FAULTS = {
    "rows+1": ("output_shape", rf"of shape \(4, {NF}\) for 3 input rows; expected float32 "
                               rf"features of shape \(3, {NF}\)"),
    "rows-1": ("output_shape", rf"of shape \(2, {NF}\) for 3 input rows"),
    "columns": ("output_shape", r"of shape \(3, 3\) for 3 input rows"),
    "dtype": ("output_dtype", r"features of dtype float64; expected float32"),
    "not_an_array": ("output_shape", r"returned list of shape None"),
    "raises": ("engine_error", r"the engine failed on a batch of 3 rows \(RuntimeError: "
                               r"device lost\)"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_engine_faults_are_counted_guard_failures(bundle, data, registry, monkeypatch,
                                                  fault) -> None:  # type: ignore[no-untyped-def]
    reason, message = FAULTS[fault]
    g = Guard.load(bundle, registry=registry, name="f")
    assert g.feature_names and len(g.feature_names) == NF
    monkeypatch.setattr(g.engine, "run", _faulty(fault))
    x = data["test"][:3]
    with pytest.raises(GuardFailure, match=message) as info:
        g.check(x)
    assert info.value.reason == reason
    calls: list[int] = []

    def predict(a: np.ndarray) -> np.ndarray:
        calls.append(len(a))
        return _predict(a)

    out = g.wrap(predict, on_error="open")(x)
    assert out.result is None and calls == [3]  # served unguarded, and counted
    with pytest.raises(GuardFailure, match=message):
        g.wrap(predict, on_error="closed")(x)
    assert calls == [3]  # closed: the model did not run
    get = registry.get_sample_value
    assert get("oodguard_guard_failures_total", {"guard": "f", "kind": reason}) == 3


def test_a_short_chunk_is_not_broadcast_over_its_rows(bundle, data) -> None:  # type: ignore[no-untyped-def]
    """numpy would silently copy one returned row into every row of a chunk's slice."""
    g = Guard.load(bundle, registry=None, providers="cpu", max_batch=4,
                   engine_options={"batch_threads": 1})
    real = g.engine._session

    class OneRow:
        def run(self, names, feeds, opts=None):  # type: ignore[no-untyped-def]
            return [real.run(names, feeds, opts)[0][:1]]

    g.engine._session = OneRow()
    with pytest.raises(GuardFailure, match=rf"of shape \(1, {NF}\) for 4 input rows") as info:
        g.check(data["test"][:10])
    assert info.value.reason == "output_shape"


def test_nan_features_of_finite_rows_are_flagged_and_counted(bundle, data, registry,
                                                            monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A NaN from the engine cannot be told from an input that overflows float32: the row is
    flagged OOD under either policy (never served as in-distribution) and counted."""
    g = Guard.load(bundle, registry=registry, name="nan")
    x = data["test"][:5]
    clean = g.check(x)
    run = g.engine.run

    def nan_row(a: np.ndarray, **kw: object) -> np.ndarray:
        out = run(a, **kw).copy()
        out[1, 2] = np.nan
        return out

    monkeypatch.setattr(g.engine, "run", nan_row)
    for on_error in ("open", "closed"):
        out = g.wrap(_predict, on_error=on_error)(x)
        assert out.result is not None
        assert out.result.is_ood[1] and out.result.score[1] == np.inf
        assert out.result.p_value[1] == 0.0
        others = [0, 2, 3, 4]
        np.testing.assert_array_equal(out.result.score[others], clean.score[others])
    assert registry.get_sample_value(
        "oodguard_guard_failures_total", {"guard": "nan", "kind": "output_nonfinite"}) == 2


def test_huge_finite_inputs_are_flagged_not_failures(guard) -> None:  # type: ignore[no-untyped-def]
    x = np.full((2, 16), 0.5, np.float32)
    x[1] = 3e38  # overflows inside the graph: NaN and inf features
    r = guard.check(x)
    assert r.is_ood[1] and r.score[1] == np.inf and np.isfinite(r.score[0])


def test_one_row_alone_or_in_a_batch_same_bits_and_metrics(bundle, data) -> None:  # type: ignore[no-untyped-def]
    """One path for every batch size: rows checked one at a time and together (an overflow row
    among them) get the same features, scores, p-values and verdicts bit for bit, and the
    per-input metrics (verdict counts, score and p-value histograms, failures) agree."""
    from prometheus_client import generate_latest

    regs = {"alone": CollectorRegistry(), "together": CollectorRegistry()}
    guards = {k: Guard.load(bundle, registry=r, name="g") for k, r in regs.items()}
    huge = np.full((1, 16), 3e38, np.float32)  # non-finite features from finite input
    rows = np.concatenate([data["test"][:6], data["noise"][:4], huge, data["test"][6:8]])
    alone = [guards["alone"].check(rows[i : i + 1]) for i in range(len(rows))]
    together = guards["together"].check(rows)
    for f in ("features", "score", "p_value", "is_ood"):
        got = np.concatenate([getattr(r, f) for r in alone])
        want = getattr(together, f)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), f
    assert together.is_ood[10] and together.score[10] == np.inf

    def text(r: CollectorRegistry) -> list[str]:
        return [ln for ln in generate_latest(r).decode().splitlines()
                if "_created" not in ln and not ln.startswith(
                    ("oodguard_guard_duration_seconds", "oodguard_batch_size",
                     "oodguard_score_normalized_sum"))]

    assert text(regs["alone"]) == text(regs["together"])
    assert regs["together"].get_sample_value(
        "oodguard_guard_failures_total", {"guard": "g", "kind": "output_nonfinite"}) == 1


# -- timeout -------------------------------------------------------------------------------
def test_a_stalled_engine_times_out_under_both_policies(bundle, data, registry,
                                                        monkeypatch) -> None:  # type: ignore[no-untyped-def]
    g = Guard.load(bundle, registry=registry, name="t", timeout_s=0.2)
    release = threading.Event()
    monkeypatch.setattr(g.engine, "run", _faulty("stall", release))
    x = data["test"][:3]
    try:
        t0 = time.monotonic()
        with pytest.raises(GuardFailure, match=r"did not answer within 0.2 s for a batch of 3 "
                                               r"rows \(timeout\)") as info:
            g.check(x)
        assert info.value.reason == "timeout" and time.monotonic() - t0 < 5
        out = g.wrap(_predict, on_error="open")(x)
        assert out.result is None and out.prediction.shape == (3, 1)
        with pytest.raises(GuardFailure, match="timeout"):
            g.wrap(_predict, on_error="closed", timeout_s=0.05)(x)
        # a per-call timeout overrides the guard's; None waits (released below)
        assert registry.get_sample_value(
            "oodguard_guard_failures_total", {"guard": "t", "kind": "timeout"}) == 3
    finally:
        release.set()


def test_abandoned_runs_are_bounded(bundle, data, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Stalled runs do not pile up: past MAX_ABANDONED a timed check fails at once, and
    once the stalled runs finish, checks work again."""
    from oodguard.engine.timed import MAX_ABANDONED

    g = Guard.load(bundle, registry=None, timeout_s=0.05)
    release = threading.Event()
    stalled = _faulty("stall", release)
    monkeypatch.setattr(g.engine, "run", stalled)
    x = data["test"][:3]
    try:
        for _ in range(MAX_ABANDONED):
            with pytest.raises(GuardFailure, match="did not answer within"):
                g.check(x)
        t0 = time.monotonic()
        with pytest.raises(GuardFailure, match=r"earlier checks timed out and their engine "
                                               r"runs have not finished"):
            g.check(x)
        assert time.monotonic() - t0 < 0.05  # refused at once, nothing queued
        assert g._timed.pool is not None
        assert len(g._timed.pool._threads) == MAX_ABANDONED  # one per stalled run
    finally:
        release.set()
    monkeypatch.undo()
    deadline = time.monotonic() + 10
    while g._timed.abandoned and time.monotonic() < deadline:
        time.sleep(0.01)
    assert g._timed.abandoned == 0
    assert len(g.check(x, timeout_s=10)) == 3
    g.close()


def test_concurrent_timed_checks_do_not_queue_behind_each_other(bundle, data) -> None:  # type: ignore[no-untyped-def]
    """16 callers whose engine runs each take 0.5 s, with a 1.5 s timeout: none times out
    (with one thread per 4 callers they would wait 2 s)."""
    g = Guard.load(bundle, registry=None, timeout_s=1.5)
    run = g.engine.run

    def slow(x: np.ndarray, **kw: object) -> np.ndarray:
        time.sleep(0.5)
        return run(x, **kw)

    g.engine.run = slow  # type: ignore[method-assign]
    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(lambda _: len(g.check(data["test"][:3])), range(16)))
    assert results == [3] * 16
    g.close()


def test_a_timed_check_gives_the_untimed_bits(bundle, data) -> None:  # type: ignore[no-untyped-def]
    g = Guard.load(bundle, registry=None)
    x = np.concatenate([data["test"], data["noise"]])
    np.testing.assert_array_equal(g.check(x, timeout_s=30).score, g.check(x).score)
    g.close()


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_bad_timeouts_are_refused(bundle, guard, bad) -> None:  # type: ignore[no-untyped-def]
    msg = r"The 'timeout_s' parameter must be a positive number of seconds or None\. Got "
    with pytest.raises(ValueError, match=msg):
        Guard.load(bundle, registry=None, timeout_s=bad)
    with pytest.raises(ValueError, match=msg):
        guard.check(np.zeros((1, 16), np.float32), timeout_s=bad)


# -- FDR -----------------------------------------------------------------------------------
def test_fdr_decisions_are_benjamini_hochberg_over_finite_rows(guard, data) -> None:  # type: ignore[no-untyped-def]
    from oodguard.decisions import benjamini_hochberg

    x = np.concatenate([data["test"][:60], data["noise"][:20]])
    x[3, 0] = np.nan
    r = guard.check(x, fdr=0.1)
    assert r.rule == "bh" and r.fdr == 0.1
    finite = np.ones(len(x), bool)
    finite[3] = False
    want = np.ones(len(x), bool)
    want[finite] = benjamini_hochberg(r.p_value[finite], 0.1)
    np.testing.assert_array_equal(r.is_ood, want)
    assert r.is_ood[3]
    plain = guard.check(x)
    assert plain.rule == "alpha" and plain.fdr is None
    np.testing.assert_array_equal(plain.is_ood, plain.p_value <= guard.alpha)
    np.testing.assert_array_equal(plain.p_value, r.p_value)  # scores do not depend on the rule
    model = guard.wrap(_predict, on_ood="raise", fdr=0.1)
    with pytest.raises(OODInputError, match=r"BH at FDR 0.1"):
        model(x)


def test_fdr_controls_false_discoveries_on_generated_batches(guard, data) -> None:  # type: ignore[no-untyped-def]
    """Batches of 40 in-distribution and 10 noise rows (fixed seed, 200 batches): the mean
    share of in-distribution rows among flagged ones stays below q = 0.1 (+0.03 tolerance
    for 200 batches), and every OOD-only batch flags most noise rows."""
    rng = np.random.default_rng(0)
    pool_in, pool_out = data["test"], data["noise"]
    fdp = []
    for _ in range(200):
        xi = pool_in[rng.choice(len(pool_in), 40, replace=False)]
        xo = pool_out[rng.choice(len(pool_out), 10, replace=False)]
        r = guard.check(np.concatenate([xi, xo]), fdr=0.1)
        flagged = r.is_ood.sum()
        fdp.append(r.is_ood[:40].sum() / max(flagged, 1))
    assert np.mean(fdp) <= 0.1 + 0.03


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.1"])
def test_bad_fdr_is_refused(guard, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameterError,
                       match=r"The 'fdr' parameter must be a float in \(0, 1\) or None\. Got "):
        guard.check(np.zeros((1, 16), np.float32), fdr=bad)
    with pytest.raises(ValueError, match=r"'fdr' parameter must be a float in \(0, 1\)"):
        guard.wrap(_predict, fdr=bad)


def test_errors_module_imports_nothing_from_the_package() -> None:
    import ast
    from pathlib import Path

    import oodguard.errors

    tree = ast.parse(Path(oodguard.errors.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.split(".")[0] == "oodguard"]
    # and it loads on its own, outside the package
    import importlib.util

    spec = importlib.util.spec_from_file_location("_errors_alone", oodguard.errors.__file__)
    assert spec is not None and spec.loader is not None
    alone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(alone)
    assert issubclass(alone.GuardFailure, RuntimeError)
