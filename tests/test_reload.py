"""Recalibration without a restart (oodguard.serve.reload): the atomic swap, the metrics and
the drift monitor after it, and a server under 64 concurrent clients while its calibration is
swapped 10 times — no error, and every response from exactly one calibration."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from _serving import metric_value, serving
from conftest import make_data
from prometheus_client import generate_latest

from oodguard import Guard
from oodguard.bundle import CALIBRATION_FILE
from oodguard.serve import BundleWatcher, LiveGuard

N_CALIBRATIONS = 4
SWAPS = 10
CLIENTS = 64


@pytest.fixture(scope="module")
def calibrations(tmp_path_factory, raw_bundle) -> list[Path]:  # type: ignore[no-untyped-def]
    """Four calibrations of one model, each on its own fresh validation draw."""
    from oodguard.calibration import calibrate

    root = tmp_path_factory.mktemp("calibrations")
    out = []
    for k in range(N_CALIBRATIONS):
        calibrate(raw_bundle, make_data(600, seed=100 + k), alpha=0.05, out=root / f"cal{k}",
                  select="all", combine="max")
        out.append(root / f"cal{k}")
    return out


def point(link: Path, target: Path) -> None:
    """Atomically repoint the symlink ``link`` at ``target``."""
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def info_hashes(text: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.labels["calibration_sha256"] for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == "oodguard_bundle_info"}


def test_a_swap_serves_the_new_calibration_resets_drift_and_shows_its_hash(
        calibrations, registry, tmp_path, data) -> None:  # type: ignore[no-untyped-def]
    link = tmp_path / "served"
    point(link, calibrations[0])

    def load(path: Path) -> Guard:
        return Guard.load(path, registry=registry, providers="cpu", drift=0.05)

    live = LiveGuard(load(link))
    first = live.current
    assert live.drift is not None
    live.check(data["noise"])  # evidence piles up and the alarm rises
    assert live.drift.alarm and live.drift.alarms == 1
    watcher = BundleWatcher(live, link, load, poll_s=None)
    assert not watcher.reload_if_changed()  # nothing changed
    point(link, calibrations[1])
    assert watcher.reload_if_changed()
    assert live.current is not first and live.swaps == 1
    new_hash = live.current.bundle.sha256(CALIBRATION_FILE)
    assert info_hashes(generate_latest(registry).decode()) == {new_hash}
    assert not live.drift.alarm and live.drift.state().rows == 0 and live.drift.alarms == 1
    want = Guard.load(calibrations[1], registry=None, providers="cpu").check(data["test"])
    np.testing.assert_array_equal(live.check(data["test"]).p_value, want.p_value)
    assert watcher.reload_if_changed(force=True)  # SIGHUP reloads even when unchanged
    assert info_hashes(generate_latest(registry).decode()) == {new_hash}


def test_a_broken_or_different_bundle_leaves_the_current_guard_serving(
        calibrations, bundle, registry, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    link = tmp_path / "served"
    point(link, calibrations[0])
    live = LiveGuard(Guard.load(link, registry=None, providers="cpu"))
    current = live.current
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    watcher = BundleWatcher(live, link, lambda p: Guard.load(p, registry=None,
                                                            providers="cpu"), poll_s=None)
    point(link, broken)
    assert not watcher.reload_if_changed()
    assert live.current is current and "the current guard keeps serving" in caplog.text

    class Other:  # a bundle whose input differs
        input_spec = "something else"

    with pytest.raises(ValueError, match="differs from the served one"):
        live.swap(Other())  # type: ignore[arg-type]


@pytest.mark.slow
def test_64_clients_see_no_error_and_no_mixed_calibration_over_10_swaps(
        calibrations, tmp_path, data) -> None:  # type: ignore[no-untyped-def]
    link = tmp_path / "served"
    point(link, calibrations[0])
    pool = np.ascontiguousarray(data["test"][:256])
    expected = [Guard.load(c, registry=None, providers="cpu").check(pool).p_value
                for c in calibrations]
    hashes = [Guard.load(c, registry=None, providers="cpu").bundle.sha256(CALIBRATION_FILE)
              for c in calibrations]
    stop = threading.Event()
    outcomes: list[tuple[int, int | None]] = []  # (status, calibration index or None)
    lock = threading.Lock()

    def client(seed: int, url: str) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=60) as http:
            for _ in range(400):  # bounded
                if stop.is_set():
                    return
                i = int(rng.integers(0, len(pool) - 8))
                x = pool[i:i + 4]
                body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                    "data": x.ravel().tolist()}]}
                r = http.post(url + "/v2/models/default/infer", json=body)
                got = None
                if r.status_code == 200:
                    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
                    p = np.asarray(out["p_value"], dtype=np.float64)
                    match = [k for k, e in enumerate(expected)
                             if np.array_equal(p, e[i:i + 4])]
                    got = match[0] if match else -1
                with lock:
                    outcomes.append((r.status_code, got))

    with serving(link, "--reload-poll-s", "0.2") as (url, proc):
        threads = [threading.Thread(target=client, args=(k, url)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        served = [0]
        try:
            for swap in range(1, SWAPS + 1):
                k = swap % N_CALIBRATIONS
                time.sleep(0.3)
                point(link, calibrations[k])
                if swap % 2:
                    os.kill(proc.popen.pid, signal.SIGHUP)  # at once; else the poll finds it
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    text = httpx.get(url + "/metrics", timeout=10).text
                    if info_hashes(text) == {hashes[k]}:
                        break
                    time.sleep(0.05)
                else:
                    raise AssertionError(f"swap {swap}: bundle_info never showed {hashes[k]}")
                served.append(k)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
        meta = httpx.get(url + "/v2/models/default", timeout=10).json()
        text = httpx.get(url + "/metrics", timeout=10).text
    statuses = [s for s, _ in outcomes]
    seen = {c for _, c in outcomes}
    assert len(outcomes) >= CLIENTS and statuses.count(200) == len(statuses), set(statuses)
    assert -1 not in seen  # no response mixes calibrations (or matches none)
    assert len(seen) >= 2  # responses came from several calibrations
    assert len(served) == SWAPS + 1
    # the drift monitor started again with the last calibration
    assert meta["parameters"]["drift"]["rows"] < metric_value(text, "oodguard_inputs_total")
    print(f"\n{len(outcomes)} responses, by calibration: "
          f"{ {k: [c for _, c in outcomes].count(k) for k in sorted(seen)} }")
