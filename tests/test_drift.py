"""The drift monitor (oodguard.drift): the calibration-conditional bound, the false-alarm
guarantee on seeded exchangeable streams, detection, batch invariance, the average-run-length
detectors, thread and fork safety, and the guard's ``drift=``."""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import pytest
from prometheus_client import generate_latest

from oodguard import Guard, InvalidParameterError
from oodguard.decisions import conformal_p_values
from oodguard.drift import (
    KAPPAS,
    DriftMonitor,
    DriftSettings,
    conditional_p_values,
    log_power_mixture,
)


def _binomial_upper_99(k_max_rate: float, runs: int) -> int:
    """Largest alarm count consistent, at 99 %, with a true rate of ``k_max_rate``."""
    mean = k_max_rate * runs
    return int(math.ceil(mean + 2.576 * math.sqrt(runs * k_max_rate * (1 - k_max_rate))))


# -- the bound ----------------------------------------------------------------------------
def test_conditional_values_lie_above_the_marginal_ones_and_end_at_one() -> None:
    n = 300
    b = conditional_p_values(n, 0.01)
    p = np.arange(1, n + 2) / (n + 1)
    assert b.shape == (n + 1,)
    assert np.all(b >= p - 1e-15) and np.all(np.diff(b) >= 0) and b[-1] == 1.0
    # variance-scaled: the shift is far smaller near 0 than in the middle
    assert b[0] - p[0] < (b[n // 2] - p[n // 2]) / 3


def test_the_bound_holds_for_the_calibration_set_with_probability_one_minus_delta() -> None:
    """Uniform order statistics of n draws, 4 000 sets: V_(i) ≤ b[i − 1] for all i at once
    fails in at most δ of them (binomial 99 % margin)."""
    rng = np.random.default_rng(0)
    n, delta, sets = 200, 0.05, 4000
    b = conditional_p_values(n, delta)[:-1]
    v = np.sort(rng.random((sets, n)), axis=1)
    broken = int((v > b).any(axis=1).sum())
    assert broken <= _binomial_upper_99(delta, sets)


def test_bound_refuses_bad_parameters() -> None:
    with pytest.raises(InvalidParameterError, match="'delta' parameter.*Got 0"):
        conditional_p_values(10, 0)
    with pytest.raises(InvalidParameterError, match="'n' parameter"):
        conditional_p_values(0, 0.1)


def test_power_mixture_is_the_mean_of_the_power_martingales() -> None:
    """log M from (t, Σ −log p̃) equals the mean over the powers of Π κ·p̃^(κ−1)."""
    rng = np.random.default_rng(9)
    pt = rng.random(50)
    direct = np.mean([np.prod(k * pt ** (k - 1)) for k in KAPPAS])
    assert log_power_mixture(50, float(-np.log(pt).sum())) == pytest.approx(math.log(direct))
    assert log_power_mixture(0, 0.0) == pytest.approx(0.0)


def test_the_restart_weights_sum_to_at_most_one() -> None:
    from oodguard.drift.restart import WEIGHT_NORMALIZER

    k = np.arange(1, 10**6 + 1, dtype=np.float64)
    total = float(np.sum(1.0 / ((k + 1) * np.log(k + 1) ** 2))) + 1.0 / math.log(10**6)
    assert total <= WEIGHT_NORMALIZER


# -- the guarantee and the power ----------------------------------------------------------
def _stream_p_values(rng: np.random.Generator, n: int, t: int) -> np.ndarray:
    cal = np.sort(rng.standard_normal(n))
    return conformal_p_values(cal, rng.standard_normal(t))


@pytest.mark.parametrize("statistic", ["restarting", "martingale"])
def test_false_alarms_stay_below_epsilon_on_exchangeable_streams(statistic: str) -> None:
    """200 independent (calibration set, stream) pairs, 5 000 rows in batches of 1–64."""
    rng = np.random.default_rng(1)
    runs, alarms, raw_alarms = 200, 0, 0
    for _ in range(runs):
        p = _stream_p_values(rng, 500, 5000)
        m = DriftMonitor(500, DriftSettings(statistic=statistic))
        i = 0
        while i < len(p):
            k = int(rng.integers(1, 65))
            m.update(p[i:i + k])
            i += k
        alarms += m.alarm
        s = np.cumsum(-np.log(p))
        raw_alarms += any(log_power_mixture(t, float(s[t - 1])) >= math.log(25)
                          for t in range(100, 5001, 100))
    assert alarms <= _binomial_upper_99(0.05, runs)
    # the same bets on the raw p-values (shared calibration set) alarm far more often
    assert raw_alarms > alarms


def test_a_ten_percent_mixture_of_extreme_rows_is_caught() -> None:
    rng = np.random.default_rng(2)
    delays = []
    for _ in range(40):
        cal = np.sort(rng.standard_normal(1000))
        s = rng.standard_normal(4000)
        mix = rng.random(4000) < 0.1
        s[mix] = 5.0 + rng.random(int(mix.sum()))
        m = DriftMonitor(1000, 0.05)
        m.update(conformal_p_values(cal, s))
        delays.append(m.state().rows_at_alarm or 10**9)
    assert np.median(delays) < 1000 and np.mean(np.array(delays) < 10**9) >= 0.9


def test_evidence_and_alarm_do_not_depend_on_the_batching() -> None:
    rng = np.random.default_rng(3)
    cal = np.sort(rng.standard_normal(400))
    s = np.concatenate([rng.standard_normal(300), rng.standard_normal(700) + 1.5])
    p = conformal_p_values(cal, s)
    states = []
    for size in (1, 7, 64, 1000):
        m = DriftMonitor(400, 0.05)
        for i in range(0, len(p), size):
            m.update(p[i:i + size])
        states.append((m._s, m.state()))
    assert all(st == states[0] for st in states)
    assert states[0][1].alarm and states[0][1].rows_at_alarm is not None


def test_reset_starts_again_and_keeps_the_alarm_count() -> None:
    m = DriftMonitor(100, 0.05)
    m.update(np.full(200, 1 / 101))
    assert m.alarm and m.alarms == 1 and m.evidence > m.threshold
    m.reset()
    fresh = DriftMonitor(100, 0.05).evidence  # log10 ½ for the restarting mixture
    assert not m.alarm and m.evidence == fresh and m.state().rows == 0 and m.alarms == 1
    m.update(np.full(200, 1 / 101))
    assert m.alarms == 2


@pytest.mark.parametrize("statistic", ["shiryaev_roberts", "cusum"])
def test_run_length_detectors_keep_their_average_run_length_bound(statistic: str) -> None:
    """R_t − t is a supermartingale for Shiryaev–Roberts (and CUSUM ≤ SR), so
    P(alarm within m rows) ≤ m/A: here at most 0.2 (binomial 99 % margin) over 100 streams."""
    rng = np.random.default_rng(4)
    runs, alarms = 100, 0
    for _ in range(runs):
        p = _stream_p_values(rng, 300, 1000)
        m = DriftMonitor(300, DriftSettings(statistic=statistic, arl=5000.0))
        m.update(p)
        alarms += m.alarm
    assert alarms <= _binomial_upper_99(0.2, runs)


def test_restarts_and_run_length_detectors_forget_a_calm_past_the_martingale_does_not() -> None:
    rng = np.random.default_rng(5)
    cal = np.sort(rng.standard_normal(500))
    calm = conformal_p_values(cal, rng.standard_normal(20000))
    shift = rng.standard_normal(1500)
    shift[rng.random(1500) < 0.2] = 6.0
    shifted = conformal_p_values(cal, shift)
    sr = DriftMonitor(500, DriftSettings(statistic="shiryaev_roberts", arl=1e4))
    mart = DriftMonitor(500, DriftSettings(statistic="martingale"))
    restarting = DriftMonitor(500, 0.05)  # the default
    for m in (sr, mart, restarting):
        m.update(calm)
        m.update(shifted)
    assert sr.alarm and restarting.alarm and not mart.alarm


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(InvalidParameterError, match="'false_alarm' parameter of DriftSettings"):
        DriftSettings(false_alarm=1.5)
    with pytest.raises(InvalidParameterError, match="'statistic' parameter"):
        DriftSettings(statistic="page")
    with pytest.raises(InvalidParameterError, match="'arl' parameter"):
        DriftSettings(statistic="cusum")
    with pytest.raises(InvalidParameterError, match="'arl' parameter"):
        DriftSettings(arl=100.0)
    s = DriftSettings(false_alarm=0.05)
    assert s.delta == pytest.approx(0.01) and s.threshold_log10 == pytest.approx(math.log10(25))
    assert DriftSettings.from_dict(s.to_dict()) == s


# -- threads and fork ---------------------------------------------------------------------
def test_concurrent_updates_lose_no_row() -> None:
    m = DriftMonitor(200, 0.05)
    p = np.full(1, 0.5)

    def work() -> None:
        for _ in range(2000):
            m.update(p)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.state().rows == 16000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_monitor_whose_lock_was_held_at_fork_works_in_the_child() -> None:
    m = DriftMonitor(100, 0.05)
    m.update(np.array([0.5]))
    m._lock.acquire()  # another thread of the parent holds it at the fork
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                m.update(np.array([0.5]))
                code = 0 if m.state().rows == 2 else 2
            finally:
                os._exit(code)
    finally:
        m._lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# -- the guard ----------------------------------------------------------------------------
def test_guard_drift_watches_the_stream_without_touching_scores(bundle, data, registry) -> None:  # type: ignore[no-untyped-def]
    plain = Guard.load(bundle, registry=None, providers="cpu")
    g = Guard.load(bundle, registry=registry, providers="cpu", drift=0.05)
    assert plain.drift is None and g.drift is not None
    for i in range(0, len(data["test"]), 50):
        a, b = plain.check(data["test"][i:i + 50]), g.check(data["test"][i:i + 50])
        assert a.score.tobytes() == b.score.tobytes() and a.p_value.tobytes() == b.p_value.tobytes()
    assert not g.drift.alarm
    text = generate_latest(registry).decode()
    assert 'oodguard_drift_alarm{guard="default"} 0.0' in text
    assert 'oodguard_drift_alarms_total{guard="default"} 0.0' in text
    for row in data["noise"]:
        g.check(row[None])
    assert g.drift.alarm and g.drift.evidence >= g.drift.threshold
    text = generate_latest(registry).decode()
    assert 'oodguard_drift_alarm{guard="default"} 1.0' in text
    assert 'oodguard_drift_alarms_total{guard="default"} 1.0' in text
    assert "oodguard_drift_evidence_log10" in text
    g.drift.reset()
    assert not g.drift.alarm


def test_guard_refuses_a_bad_drift(bundle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameterError, match="'drift' parameter of Guard"):
        Guard.load(bundle, registry=None, providers="cpu", drift=1.0)


def test_multiprocess_mode_exports_one_evidence_series_per_process(bundle, data,
                                                                   tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Under PROMETHEUS_MULTIPROC_DIR every process writes its monitor's state after each
    check; the evidence stays one series per process (the alert averages them)."""
    import subprocess
    import sys
    import textwrap

    from oodguard.metrics import multiprocess_registry

    child = textwrap.dedent("""
        import sys
        import numpy as np
        from oodguard import Guard
        guard = Guard.load(sys.argv[1], name="mp", providers="cpu", drift=0.05)
        for row in np.load(sys.argv[2]):
            guard.check(row[None])
        print(int(guard.drift.alarm))
        """)
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mpdir)}
    alarms = []
    for i, x in enumerate([data["test"][:50], data["noise"]]):
        np.save(tmp_path / f"x{i}.npy", x)
        out = subprocess.run(
            [sys.executable, "-c", child, str(bundle), str(tmp_path / f"x{i}.npy")],
            env=env, capture_output=True, text=True, timeout=120, check=True)
        alarms.append(int(out.stdout.strip()))
    assert alarms == [0, 1]
    text = generate_latest(multiprocess_registry(str(mpdir))).decode()
    evidence = [ln for ln in text.splitlines() if ln.startswith("oodguard_drift_evidence_log10{")]
    assert len(evidence) == 2 and all('pid="' in ln for ln in evidence)
    assert 'oodguard_drift_alarms_total{guard="mp"} 1.0' in text
    assert 'oodguard_drift_alarm{guard="mp"} 1.0' in text
