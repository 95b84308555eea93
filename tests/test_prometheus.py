"""A real Prometheus scrapes a real ``oodguard serve``; known traffic read back via PromQL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from _serving import Proc, free_port, serving, tool, wait_ready

from oodguard import Guard
from oodguard.metrics import NORMALIZED_SCORE_BUCKETS, P_VALUE_BUCKETS, score_scale


def prom_quantile(q: float, bounds: tuple[float, ...], cumulative: list[float]) -> float:
    """PromQL's ``histogram_quantile`` (linear interpolation inside the bucket; the last
    finite bound when the rank falls in ``+Inf``), for the expected value."""
    rank = q * cumulative[-1]
    b = next(i for i, c in enumerate(cumulative) if c >= rank)
    if b == len(cumulative) - 1:
        return bounds[-1]
    start = 0.0 if b == 0 else bounds[b - 1]
    below = 0.0 if b == 0 else cumulative[b - 1]
    return start + (bounds[b] - start) * (rank - below) / (cumulative[b] - below)


def query(prom: str, expr: str) -> list[dict]:  # type: ignore[type-arg]
    r = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    doc = r.json()
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def poll(prom: str, expr: str, want: object, convert, timeout: float = 30):  # type: ignore[no-untyped-def]
    """Query until ``convert(result) == want`` (scrapes arrive every second); the last value."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = convert(query(prom, expr))
        if got == want:
            return got
        time.sleep(0.5)
    return got


@pytest.fixture
def prometheus(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start Prometheus on loopback; the test writes its scrape target with ``target(url)``."""
    procs: list[Proc] = []

    def start(target: str) -> str:
        port = free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "oodguard",
                                "static_configs": [{"targets": [target]}]}],
        }))
        proc = Proc([tool("prometheus"), f"--config.file={cfg}",
                     f"--storage.tsdb.path={tmp_path / 'data'}",
                     f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"])
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/-/ready", timeout=30)
        return url

    yield start
    for p in procs:
        p.stop()


def test_prometheus_reads_back_known_traffic(bundle, data, prometheus) -> None:
    ref = Guard.load(bundle, registry=None)
    r_test, r_noise = ref.check(data["test"]), ref.check(data["noise"])
    x_in = data["test"][~r_test.is_ood][:40]
    x_ood = data["noise"][r_noise.is_ood][:25]
    n, m = len(x_in), len(x_ood)
    assert (n, m) == (40, 25)
    x = np.concatenate([x_in, x_ood])[np.random.default_rng(0).permutation(n + m)]

    with serving(bundle, "--name", "pg") as (url, _):
        prom = prometheus(url.removeprefix("http://"))
        for i in range(0, n + m, 5):  # 13 requests of 5 rows
            part = x[i : i + 5]
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(part.shape),
                                "data": part.ravel().tolist()}]}
            assert httpx.post(url + "/v2/models/pg/infer", json=body, timeout=10).is_success

        def by_verdict(res):  # type: ignore[no-untyped-def]
            return {s["metric"]["verdict"]: float(s["value"][1]) for s in res}

        got = poll(prom, 'sum by (verdict) (oodguard_inputs_total{guard="pg"})',
                   {"in": n, "ood": m}, by_verdict)
        assert got == {"in": n, "ood": m}

        def quantiles_match(metric: str, values: np.ndarray, buckets: tuple[float, ...]) -> None:
            """Prometheus's histogram_quantile of ``metric`` equals the one computed here."""
            bounds = (*buckets, float("inf"))
            cumulative = [float((values <= b).sum()) for b in bounds]
            for q in (0.25, 0.5, 0.9):
                res = query(prom, f'histogram_quantile({q}, sum by (le) '
                                  f'({metric}_bucket{{guard="pg"}}))')
                assert float(res[0]["value"][1]) == pytest.approx(
                    prom_quantile(q, bounds, cumulative), rel=1e-9), (metric, q)

        quantiles_match("oodguard_p_value", np.concatenate(
            [ref.check(x_in).p_value, ref.check(x_ood).p_value]), P_VALUE_BUCKETS)
        # the score in threshold units, on the buckets every bundle shares
        med, scale = score_scale(ref.scorer.calibration_scores, ref.threshold)
        u = (np.concatenate([ref.check(x_in).score, ref.check(x_ood).score]) - med) / scale
        quantiles_match("oodguard_score_normalized", u, NORMALIZED_SCORE_BUCKETS)
        above = query(prom, 'sum(oodguard_score_normalized_count{guard="pg"}) - '
                            'sum(oodguard_score_normalized_bucket{guard="pg",le="1.0"})')
        assert float(above[0]["value"][1]) == m  # above the threshold = the OOD verdicts
        frac = query(prom, 'sum(oodguard_p_value_bucket{guard="pg",le="0.05"}) / '
                           'sum(oodguard_p_value_count{guard="pg"})')
        assert float(frac[0]["value"][1]) == pytest.approx(m / (n + m), rel=1e-12)
        up = query(prom, 'up{job="oodguard"}')
        assert float(up[0]["value"][1]) == 1.0
