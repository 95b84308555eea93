"""The guard on Ray Serve (a local 2-CPU cluster in the test process): the tritonclient call of
the service test gets the same outputs as ``guard.check``; refusals and ``/metrics`` behave as
in ``oodguard serve``, since the routes are the service's own."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from _ray_cluster import local_cluster
from _serving import free_port, metric_value, wait_ready
from ray import serve

from oodguard import Guard
from oodguard.integrations.ray import guard_app
from oodguard.serve import ServeConfig


@pytest.fixture(scope="module")
def url(bundle):  # type: ignore[no-untyped-def]
    with local_cluster(num_cpus=2):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            app = guard_app(bundle, name="g",
                            config=ServeConfig(max_batch=64, max_wait_ms=20,
                                               max_request_rows=256),
                            num_replicas=1, ray_actor_options={"num_cpus": 0.5},
                            guard_options={"providers": "cpu"})
            serve.run(app, name="oodguard", route_prefix="/")
            base = f"http://127.0.0.1:{port}"
            wait_ready(base + "/v2/health/ready", timeout=60)
            yield base
        finally:
            serve.shutdown()


@pytest.fixture(scope="module")
def reference(bundle) -> Guard:  # type: ignore[no-untyped-def]
    return Guard.load(bundle, registry=None)


def triton_infer(url: str, x: np.ndarray, *, binary: bool, request_id: str) -> dict:  # type: ignore[type-arg]
    """The service test's tritonclient call: every output, by name."""
    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("g") and not client.is_model_ready("nope")
        meta = client.get_model_metadata("g")
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
        inp = triton.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [triton.InferRequestedOutput(n, binary_data=binary)
                for n in ("score", "p_value", "is_ood", "features")]
        res = client.infer("g", [inp], outputs=outs, request_id=request_id)
    finally:
        client.close()
    assert res.get_response()["id"] == request_id
    return {n: res.as_numpy(n) for n in ("score", "p_value", "is_ood", "features")}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_gets_the_guards_outputs(url, reference, data, binary) -> None:
    x = np.concatenate([data["test"][:24], data["noise"][:8]])
    got = triton_infer(url, x, binary=binary, request_id="r1")
    want = reference.check(x)
    np.testing.assert_array_equal(got["score"], want.score)
    np.testing.assert_array_equal(got["p_value"], want.p_value)
    np.testing.assert_array_equal(got["is_ood"], want.is_ood)
    np.testing.assert_array_equal(got["features"], want.features)
    assert 0 < want.is_ood.sum() < len(x)


def test_concurrent_requests_are_batched_and_each_gets_its_rows(url, reference, data) -> None:
    xs = [data["test"][i * 3:(i + 1) * 3] for i in range(12)] + [data["test"][100:300]]

    def one(x: np.ndarray) -> np.ndarray:
        return triton_infer(url, x, binary=True, request_id="c")["score"]

    def counts() -> tuple[float, float, float]:
        text = httpx.get(url + "/metrics", timeout=10).text
        return (metric_value(text, "oodguard_batch_size_count", guard="g"),
                metric_value(text, "oodguard_batch_size_sum", guard="g"),
                metric_value(text, "oodguard_inputs_total", guard="g"))

    before = counts()
    with ThreadPoolExecutor(6) as pool:
        scores = list(pool.map(one, xs))
    for x, s in zip(xs, scores, strict=True):
        np.testing.assert_array_equal(s, reference.check(x).score)
    calls, rows, inputs = (a - b for a, b in zip(counts(), before, strict=True))
    # the replica's own registry counts every row once, in at most one guard call a request
    assert rows == inputs == sum(map(len, xs))
    assert 1 <= calls <= len(xs), calls


def test_refusals_are_the_services(url) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 8], "data": [0.0] * 16}]}
    r = httpx.post(url + "/v2/models/g/infer", json=body, timeout=10)
    assert r.status_code == 400 and r.json()["reason"] == "shape", r.text
    assert "The bundle was exported for samples of shape [16]" in r.json()["error"]
    big = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [300, 16],
                       "data": [0.0] * 4800}]}
    r = httpx.post(url + "/v2/models/g/infer", json=big, timeout=10)
    assert r.status_code == 413 and r.json()["reason"] == "batch_size"
    r = httpx.get(url + "/v2/models/other", timeout=10)
    assert r.status_code == 404 and r.json()["reason"] == "model"
    text = httpx.get(url + "/metrics", timeout=10).text
    # the rows carried (16 values: one sample of 16), not the 2 the shape claims
    assert metric_value(text, "oodguard_inputs_refused_total", guard="g", reason="shape") == 1
    assert metric_value(text, "oodguard_inputs_refused_total", guard="g",
                        reason="batch_size") == 256


def test_fdr_verdicts_are_the_ones_metrics_count(url, reference, data) -> None:
    """A request with ``parameters.fdr`` beside one without, through ``@serve.batch``: each
    client gets its verdicts (BH for the first), and ``/metrics`` counts exactly those."""
    with_fdr = np.concatenate([data["test"][:100], data["noise"][:5]])
    plain = data["test"][100:150]
    q = 0.01
    bh = reference.check(with_fdr, fdr=q).is_ood
    assert bh.sum() != reference.check(with_fdr).is_ood.sum(), "pick rows where BH differs"

    def body(x: np.ndarray, **params: float) -> dict:  # type: ignore[type-arg]
        return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                            "data": x.ravel().tolist()}], "parameters": params}

    def ood() -> float:
        text = httpx.get(url + "/metrics", timeout=10).text
        return metric_value(text, "oodguard_inputs_total", guard="g", verdict="ood")

    before = ood()
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda b: httpx.post(url + "/v2/models/g/infer", json=b,
                                                     timeout=30),
                                [body(with_fdr, fdr=q), body(plain)]))
    verdicts = []
    for r in answers:
        assert r.status_code == 200, r.text
        verdicts.append(np.asarray(r.json()["outputs"][2]["data"], dtype=bool))
    np.testing.assert_array_equal(verdicts[0], bh)
    assert ood() - before == sum(int(v.sum()) for v in verdicts)


def test_guard_options_may_not_take_the_replicas_registry(bundle) -> None:
    with pytest.raises(ValueError, match="must not set 'registry'"):
        guard_app(bundle, guard_options={"registry": None})
