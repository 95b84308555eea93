"""Metrics: names and exposition (promtool), counts, bulk observe, multiprocess mode."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from oodguard import Guard, InvalidInputError
from oodguard.metrics import (
    NORMALIZED_SCORE_BUCKETS,
    REFUSAL_REASONS,
    BatchHistogram,
    multiprocess_registry,
    observe_many,
    render_latest,
    score_scale,
)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: apt-get install prometheus (scripts/test.sh does)")
    return path


def check_metrics(text: bytes) -> None:
    """``promtool check metrics`` passes with no warning at all."""
    out = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                         timeout=30)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        out.stdout.decode() + out.stderr.decode()
    )


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def without_created(text: bytes) -> list[str]:
    return [ln for ln in text.decode().splitlines() if "_created" not in ln]


# -- bulk observe ---------------------------------------------------------------------------
BOUNDS = (-2.0, -0.5, 0.0, 0.001, 0.05, 1.0, 3.0, 1e6)
values_st = st.lists(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True, width=64),
        st.sampled_from(BOUNDS),  # exactly on an edge: le is inclusive
    ),
    max_size=60,
)


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b or bool(np.isclose(a, b, rtol=1e-12, atol=0))


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(values_st, max_size=4), bounds=st.sampled_from([BOUNDS, BOUNDS[2:]]))
def test_observe_many_gives_the_same_exposition_as_observe(batches, bounds) -> None:
    """Both batch paths against ``Histogram.observe`` value by value. ``observe_many`` (the
    multiprocess path): bucket counts and counts identical, the running sum equal up to float
    rounding (a batch's sum is added with one atomic increment). ``BatchHistogram`` (the
    single-process path): the same exposition text, sums included."""
    bulk, loop, coll = CollectorRegistry(), CollectorRegistry(), CollectorRegistry()
    hb = Histogram("h", "h", ["guard"], buckets=bounds, registry=bulk).labels("a")
    hl = Histogram("h", "h", ["guard"], buckets=bounds, registry=loop).labels("a")
    hc = BatchHistogram("h", "h", bounds, coll).labels("a")
    for batch in batches:
        observe_many(hb, np.asarray(batch, dtype=np.float64))
        hc.observe_many(np.asarray(batch, dtype=np.float64))
        for v in batch:
            hl.observe(v)
    got, want, col = samples(bulk), samples(loop), samples(coll)
    assert got.keys() == want.keys() == col.keys()
    for key, value in want.items():
        if key[0].endswith("_created"):
            continue
        assert _same(got[key], value), key
        # the collector continues the running sum left to right: equal bit for bit
        assert col[key] == value or (np.isnan(col[key]) and np.isnan(value)), key
    assert without_created(generate_latest(coll)) == without_created(generate_latest(loop))


def test_observe_many_batch_sum_is_sequential_not_pairwise(registry) -> None:
    # Values whose pairwise and sequential float sums differ: a sum done with np.sum would not
    # match repeated observe() bit for bit on a fresh histogram.
    vals = np.array([1e16, 1.0, -1e16, 1.0] * 50 + [0.1] * 37)
    assert float(np.sum(vals)) != float(np.cumsum(vals)[-1])
    loop = CollectorRegistry()
    hb = Histogram("h", "h", buckets=(1.0,), registry=registry)
    hl = Histogram("h", "h", buckets=(1.0,), registry=loop)
    observe_many(hb, vals)
    for v in vals.tolist():
        hl.observe(v)
    assert samples(registry)[("h_sum", ())] == samples(loop)[("h_sum", ())]


def test_observe_many_loses_nothing_under_concurrency(registry) -> None:
    from concurrent.futures import ThreadPoolExecutor

    h = Histogram("h", "h", buckets=(0.5,), registry=registry)
    big, small = np.ones(100), np.ones(3)

    def work(i: int) -> None:
        for _ in range(50):
            observe_many(h, big if i % 2 else small)
            h.observe(1.0)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    want = 4 * 50 * (100 + 1) + 4 * 50 * (3 + 1)
    assert samples(registry)[("h_count", ())] == want
    assert samples(registry)[("h_sum", ())] == want


def test_batch_histogram_loses_nothing_under_concurrency(registry) -> None:
    from concurrent.futures import ThreadPoolExecutor

    fam = BatchHistogram("h", "h", (0.5,), registry)
    big, small = np.ones(100), np.ones(3)

    def work(i: int) -> None:
        child = fam.labels(f"g{i % 2}")  # two series, created concurrently
        for _ in range(50):
            child.observe_many(big if i % 2 else small)
            generate_latest(registry)  # scrapes interleaved with updates

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    s = samples(registry)
    assert s[("h_count", (("guard", "g1"),))] == s[("h_sum", (("guard", "g1"),))] == 4 * 50 * 100
    assert s[("h_count", (("guard", "g0"),))] == s[("h_sum", (("guard", "g0"),))] == 4 * 50 * 3
    assert s[("h_bucket", (("guard", "g0"), ("le", "0.5")))] == 0


def test_batch_histogram_queue_is_bounded_and_holds_copies(registry) -> None:
    from oodguard.metrics import collectors as _collectors

    child = BatchHistogram("h", "h", (0.5,), registry).labels("g")
    v = np.zeros(3)
    for _ in range(_collectors.FOLD_BATCHES - 1):
        child.observe_many(v)
    assert len(child._queued) == _collectors.FOLD_BATCHES - 1  # queued, not yet bucketed
    child.observe_many(v)
    assert child._queued == []  # folded without a scrape: the queue's memory is bounded
    big = np.zeros(_collectors.FOLD_VALUES)
    child.observe_many(big)
    assert child._queued == []
    v[:] = 9.0  # the caller reuses its array: what was observed must not change
    child.observe_many(np.ones(2))
    big[:] = 9.0
    s = samples(registry)
    n = 3 * _collectors.FOLD_BATCHES + _collectors.FOLD_VALUES
    assert s[("h_bucket", (("guard", "g"), ("le", "0.5")))] == n
    assert s[("h_count", (("guard", "g"),))] == n + 2
    assert s[("h_sum", (("guard", "g"),))] == 2.0


def test_batch_histogram_refuses_bad_buckets_and_duplicate_names(registry) -> None:
    with pytest.raises(ValueError, match="sorted"):
        BatchHistogram("h", "h", (1.0, 0.5), registry)
    with pytest.raises(ValueError, match="sorted"):
        BatchHistogram("h", "h", (), registry)
    BatchHistogram("h", "h", (1.0,), registry)
    with pytest.raises(ValueError, match="Duplicated"):  # the registry's own check
        Histogram("h", "h", buckets=(1.0,), registry=registry)


def test_guard_histograms_are_batch_collectors_in_single_process_mode(bundle, registry) -> None:
    """The per-input histograms skip prometheus_client's per-bucket locks here; the multiprocess
    test below covers the other mode, where they must be file-backed Histograms."""
    Guard.load(bundle, registry=registry, name="g")
    kinds = {type(c).__name__ for c in registry._collector_to_names}
    assert "BatchHistogram" in kinds


# -- a guard's metrics ----------------------------------------------------------------------
@pytest.fixture
def traffic(bundle, data, registry):  # type: ignore[no-untyped-def]
    guard = Guard.load(bundle, registry=registry, name="g1")
    x = np.concatenate([data["test"][:40], data["noise"][:20]])
    x[3, 0] = np.nan
    result = guard.check(x)
    with pytest.raises(InvalidInputError):
        guard.check(x[:, :5])
    with pytest.raises(InvalidInputError):
        guard.check(np.zeros(x.shape, np.int32))
    guard.wrap(lambda a: a.sum(axis=1))(x[:7])
    guard.metrics.observe_failure("RuntimeError")
    return guard, result


def test_counts_by_verdict_refusal_and_stage(traffic, registry) -> None:
    guard, r = traffic
    s = samples(registry)
    g = (("guard", "g1"),)
    n_ood = int(r.is_ood.sum())
    assert n_ood >= 15  # the noise rows and the NaN row
    assert len(guard.check(np.empty((0, 16), np.float32))) == 0  # an empty batch: no record
    total_ood = s[("oodguard_inputs_total", (("guard", "g1"), ("verdict", "ood")))]
    total_in = s[("oodguard_inputs_total", (("guard", "g1"), ("verdict", "in")))]
    assert total_in + total_ood == 60 + 7  # the wrapped call checked 7 more rows
    assert total_ood >= n_ood
    refused = {
        dict(k[1])["reason"]: v for k, v in s.items() if k[0] == "oodguard_inputs_refused_total"
    }
    # every known reason has a series from the start (0 until its first refusal)
    assert set(refused) == set(REFUSAL_REASONS)
    assert {r: v for r, v in refused.items() if v} == {
        "non_finite": 2.0, "shape": 60.0, "dtype": 60.0}  # NaN row seen twice
    # the NaN row's +inf score stays out of the score histogram; the p-value keeps all rows
    assert s[("oodguard_score_normalized_count", g)] == 67 - 2
    assert s[("oodguard_p_value_count", g)] == 67
    assert s[("oodguard_p_value_bucket", g + (("le", "0.05"),))] == total_ood
    assert s[("oodguard_batch_size_count", g)] == 2
    assert s[("oodguard_batch_size_sum", g)] == 67
    for stage in ("engine", "scoring", "total"):
        key = ("oodguard_guard_duration_seconds_count", (("guard", "g1"), ("stage", stage)))
        assert s[key] == 2
    assert s[("oodguard_model_duration_seconds_count", g)] == 1
    assert s[("oodguard_guard_failures_total", (("guard", "g1"), ("kind", "RuntimeError")))] == 1
    assert s[("oodguard_threshold_score", g)] == pytest.approx(guard.threshold)
    info = [k for k in s if k[0] == "oodguard_bundle_info"]
    assert len(info) == 1 and s[info[0]] == 1.0
    labels = dict(info[0][1])
    assert labels["alpha"] == "0.05" and labels["steps"] == "8" and len(labels["sha256"]) == 64
    assert labels["calibration_sha256"] == guard.bundle.sha256("calibration.json")
    assert labels["calibration_sha256"] != labels["sha256"]


def test_exposition_passes_promtool_without_warnings(traffic, registry) -> None:
    text, content_type = render_latest(registry)
    assert content_type.startswith("text/plain; version=0.0.4")
    check_metrics(text)


def test_registry_none_records_nothing(bundle, data) -> None:
    from prometheus_client import REGISTRY

    before = generate_latest(REGISTRY)
    guard = Guard.load(bundle, registry=None, name="off")
    assert guard.metrics is None
    guard.check(data["test"][:5])
    assert b'guard="off"' not in generate_latest(REGISTRY)
    assert b"oodguard_" not in before or b'guard="off"' not in before


def test_normalized_score_buckets_are_fixed_and_put_the_threshold_at_1(bundle, data,
                                                                      registry) -> None:
    """The score histogram's edges are the same for every bundle; a guard's raw score ``v``
    is exposed as ``(v − median) / (threshold − median)``, so the ``le="1"`` bucket counts the
    scores at or below the threshold and ``le="0"`` those at or below the median."""
    guard = Guard.load(bundle, registry=registry, name="n")
    x = np.concatenate([data["test"][:50], data["noise"][:30]])
    r = guard.check(x)
    s = samples(registry)
    edges = [float(dict(k[1])["le"]) for k in s if k[0] == "oodguard_score_normalized_bucket"]
    assert edges == [*NORMALIZED_SCORE_BUCKETS, float("inf")]
    med, scale = score_scale(guard.scorer.calibration_scores, guard.threshold)
    assert med == np.median(guard.scorer.calibration_scores) and scale == guard.threshold - med
    g = (("guard", "n"),)
    at = {e: s[("oodguard_score_normalized_bucket", g + (("le", floatToGoString(e)),))]
          for e in NORMALIZED_SCORE_BUCKETS}
    u = (r.score - med) / scale
    for e in NORMALIZED_SCORE_BUCKETS:
        assert at[e] == int((u <= e).sum()), e
    assert at[1.0] == int((r.score <= guard.threshold).sum()) == len(x) - r.n_ood
    assert ("oodguard_score_normalized_sum", g) not in s  # negative bounds: no _sum (as Histogram)


def test_score_scale_falls_back_when_the_threshold_is_not_above_the_median() -> None:
    cal = np.array([1.0, 2.0, 3.0, 4.0])
    assert score_scale(cal, 3.5) == (2.5, 1.0)
    assert score_scale(cal, 2.0) == (2.5, 3.0)  # threshold below the median: the range
    assert score_scale(cal, -np.inf) == (2.5, 3.0)
    assert score_scale(np.full(5, 7.0), 7.0) == (7.0, 1.0)


def test_two_bundles_in_one_registry_share_the_normalized_buckets(bundle, data,
                                                                  registry) -> None:
    """Differently calibrated guards (here: two alphas, so two thresholds) in one registry:
    each normalises by its own threshold, so ``le="1"`` means "at the threshold" for both."""
    a = Guard.load(bundle, registry=registry, name="a", alpha=0.05)
    b = Guard.load(bundle, registry=registry, name="b", alpha=0.2)
    assert a.threshold != b.threshold
    x = np.concatenate([data["test"][:60], data["noise"][:20]])
    ra, rb = a.check(x), b.check(x)
    s = samples(registry)
    for name, r in (("a", ra), ("b", rb)):
        below = s[("oodguard_score_normalized_bucket", (("guard", name), ("le", "1.0")))]
        assert below == len(x) - r.n_ood, name
# -- multiprocess mode ----------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from oodguard import Guard

    guard = Guard.load(sys.argv[1], name="mp")  # the default (global) registry
    r = guard.check(np.load(sys.argv[2]))
    print(int(r.is_ood.sum()))
    """
)


def test_multiprocess_mode_aggregates_two_processes(bundle, data, tmp_path) -> None:
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mpdir)}
    batches = [np.concatenate([data["test"][:30], data["noise"][:10]]),
               np.concatenate([data["test"][30:55], data["noise"][10:30]])]
    n_ood = []
    for i, x in enumerate(batches):
        np.save(tmp_path / f"x{i}.npy", x)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(bundle), str(tmp_path / f"x{i}.npy")],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )
        n_ood.append(int(out.stdout.strip()))
    assert len(list(mpdir.glob("*.db"))) >= 2  # each process wrote its own files

    reg = multiprocess_registry(str(mpdir))
    s = samples(reg)
    g = (("guard", "mp"),)
    assert s[("oodguard_inputs_total", (("guard", "mp"), ("verdict", "ood")))] == sum(n_ood)
    assert s[("oodguard_inputs_total", (("guard", "mp"), ("verdict", "in")))] == 85 - sum(n_ood)
    assert s[("oodguard_p_value_count", g)] == 85
    assert s[("oodguard_p_value_bucket", g + (("le", "0.05"),))] == sum(n_ood)
    assert s[("oodguard_batch_size_count", g)] == 2
    # gauges aggregate to one series (multiprocess_mode="max"), not one per pid
    assert len([k for k in s if k[0] == "oodguard_bundle_info"]) == 1
    assert len([k for k in s if k[0] == "oodguard_threshold_score"]) == 1
    check_metrics(render_latest(reg)[0])


def test_every_reason_the_code_counts_starts_at_zero() -> None:
    """The label values the runtime counts (``reason=`` of its errors, ``Dropped`` reasons,
    ``observe_*`` tokens) are all in the lists whose series start at 0, so a new reason cannot
    be added without its first event being lost to ``increase()``."""
    import re
    from pathlib import Path

    import oodguard
    from oodguard import metrics

    src = "\n".join(p.read_text() for p in Path(oodguard.__file__).parent.rglob("*.py"))
    known = {*metrics.REFUSAL_REASONS, *metrics.HTTP_REFUSAL_REASONS, *metrics.FAILURE_KINDS,
             *metrics.DROP_REASONS}
    counted = set(re.findall(r'reason="([a-z_]+)"', src))
    counted |= set(re.findall(r'observe_(?:failure|refused|dropped)\("([a-z_]+)"', src))
    drops = {re.findall(r',\s*"([a-z_]+)"\s*[,)]', src[m.end():m.end() + 300])[0]
             for m in re.finditer(r"\bDropped\((?=\d)", src)}
    assert drops == set(metrics.DROP_REASONS)
    assert len(counted) > 15 and counted <= known, counted - known


@settings(max_examples=100, deadline=None)
@given(values=values_st, bounds=st.sampled_from([BOUNDS, BOUNDS[2:], (1.0,)]))
def test_plain_families_expose_what_prometheus_client_does(values, bounds) -> None:
    """The guard's per-check series in single-process mode (plain Python numbers under one
    lock per guard) against ``Counter`` and ``Histogram``: the same exposition text."""
    import threading

    from prometheus_client import Counter

    from oodguard.metrics.collectors import PlainFamily

    plain, client = CollectorRegistry(), CollectorRegistry()
    lock = threading.Lock()
    pc = PlainFamily("c", "a counter", ["guard", "kind"], plain)
    ph = PlainFamily("h", "a histogram", ["guard"], plain, buckets=bounds)
    cc = Counter("c", "a counter", ["guard", "kind"], registry=client)
    ch = Histogram("h", "a histogram", ["guard"], buckets=bounds, registry=client)
    for kind in ("x", "y"):  # series exist (at 0) as soon as they are labelled
        pc.labels("g", kind, lock=lock)
        cc.labels("g", kind)
    for v in values:
        with lock:
            ph.labels("g", lock=lock).observe(v)
            if v == v and v >= 0:
                pc.labels("g", "x", lock=lock).total += v
        ch.labels("g").observe(v)
        if v == v and v >= 0:
            cc.labels("g", "x").inc(v)
    assert without_created(generate_latest(plain)) == without_created(generate_latest(client))
    assert set(samples(plain)) == set(samples(client))  # _created series included


def test_guard_metrics_plain_and_client_paths_agree(monkeypatch) -> None:
    """GuardMetrics in single-process mode (plain series, one lock) and on prometheus_client's
    metrics (the multiprocess path's objects) record the same checks identically."""
    from oodguard.metrics import guard_metrics as metrics

    regs = {}
    for mode in (False, True):
        monkeypatch.setattr(metrics, "multiprocess_mode", lambda mode=mode: mode)
        reg = regs[mode] = CollectorRegistry()
        m = metrics.GuardMetrics(reg, "g", score_scale=(0.5, 2.0), threshold=1.0,
                                 info={k: "1" for k in metrics.INFO_KEYS})
        for i in range(5):
            s = np.array([0.1 * i, 1.5, np.inf])
            m.observe_check(s, np.array([0.5, 0.01, 0.0]), 2, engine_s=1e-4 * i,
                            scoring_s=3e-5, total_s=2e-4 * i)
            m.observe_check(np.array([0.3 * i, np.inf]), np.array([0.2, 0.0]), 1, engine_s=2e-4,
                            scoring_s=1e-5, total_s=3e-3 * i)
            m.observe_check(np.array([1.0]), np.array([0.04]), 0, engine_s=0.3, scoring_s=0.1,
                            total_s=0.5)
        m.observe_model(0.01)
        m.observe_failure("timeout")
        m.observe_refused("shape", 3)
    assert isinstance(metrics._families[regs[False]].inputs, metrics.PlainFamily)
    assert not isinstance(metrics._families[regs[True]].inputs, metrics.PlainFamily)
    assert without_created(generate_latest(regs[False])) == without_created(
        generate_latest(regs[True]))


def test_the_installed_prometheus_client_is_in_the_adapters_range() -> None:
    """oodguard.metrics.prometheus_adapter reads prometheus_client's private attributes for
    the versions it names; the installed one is among them, others are refused by name."""
    from importlib.metadata import version

    from oodguard.errors import MissingDependencyError
    from oodguard.metrics import prometheus_adapter

    assert prometheus_adapter.check_version() == version("prometheus_client")
    with pytest.raises(MissingDependencyError,
                       match=r"supports prometheus_client >=0\.17,<0\.27 .*prometheus_client "
                             r"0\.27\.0 is installed"):
        prometheus_adapter.check_version("0.27.0")
    # the internals it reads are there in the installed version
    from prometheus_client import CollectorRegistry, Histogram

    child = Histogram("h", "h", buckets=(1.0,), registry=CollectorRegistry())
    assert prometheus_adapter.histogram_internals(child) is not None
