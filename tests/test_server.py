"""The HTTP service as a real ``oodguard serve`` subprocess, called by tritonclient and httpx."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from _serving import metric_value, serving, tool

from oodguard import Guard

MAX_BODY = 100_000
MAX_ROWS = 256


@pytest.fixture(scope="module")
def server(bundle):  # type: ignore[no-untyped-def]
    with serving(bundle, "--name", "g", "--max-wait-ms", "20", "--max-batch", "64",
                 "--max-body-bytes", str(MAX_BODY), "--max-request-rows", str(MAX_ROWS)) as (
            url, proc):
        yield url, proc


@pytest.fixture(scope="module")
def reference(bundle):  # type: ignore[no-untyped-def]
    return Guard.load(bundle, registry=None)


def metrics(url: str) -> str:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


def infer_body(x: np.ndarray, **extra: object) -> bytes:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                       "data": x.ravel().tolist()}], **extra}
    return json.dumps(doc).encode()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infers_the_same_scores_as_the_guard(server, reference, data, binary) -> None:
    url, _ = server
    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("g")
        assert not client.is_model_ready("nope")
        meta = client.get_model_metadata("g")
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
        x = np.concatenate([data["test"][:24], data["noise"][:8]])
        inp = triton.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [triton.InferRequestedOutput(n, binary_data=binary)
                for n in ("score", "p_value", "is_ood", "features")]
        res = client.infer("g", [inp], outputs=outs, request_id="r1")
    finally:
        client.close()
    want = reference.check(x)
    assert res.get_response()["id"] == "r1"
    np.testing.assert_array_equal(res.as_numpy("score"), want.score)
    np.testing.assert_array_equal(res.as_numpy("p_value"), want.p_value)
    np.testing.assert_array_equal(res.as_numpy("is_ood"), want.is_ood)
    np.testing.assert_array_equal(res.as_numpy("features"), want.features)
    assert 0 < want.is_ood.sum() < len(x)  # both verdicts occur


def test_default_outputs_and_a_non_finite_row(server, reference, data) -> None:
    url, _ = server
    x = data["test"][:3].copy()
    x[1, 4] = np.inf
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 16],
                                   "data": x.tolist()}]})  # nested data, inf as Infinity
    r = httpx.post(url + "/v2/models/g/versions/1/infer", content=body, timeout=10)
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert list(outs) == ["score", "p_value", "is_ood"]
    # +inf is not JSON: the largest finite float64 stands for it (docs/serving.md)
    assert outs["is_ood"]["data"][1] is True
    assert outs["score"]["data"][1] == np.finfo(np.float64).max
    assert outs["p_value"]["data"][0] == reference.check(x[:1]).p_value[0]


def _chunks(n: int):  # type: ignore[no-untyped-def]
    for _ in range(n):
        yield b" " * 10_000


BIN_HEAD = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16],
                                   "parameters": {"binary_data_size": 100}}]}).encode()
GOOD = infer_body(np.full((2, 16), 0.5, np.float32))

# (id, path, body, headers, status, reason, rows counted in the refusal metric): the whole
# samples of the bundle's shape the request carried (at least 1), never the rows it claims
BAD = [
    ("malformed-json", "/v2/models/g/infer", b"{not json", {}, 400, "json", 1),
    ("not-an-object", "/v2/models/g/infer", b"[1, 2]", {}, 400, "protocol", 1),
    ("no-inputs", "/v2/models/g/infer", b'{"outputs": []}', {}, 400, "protocol", 1),
    ("wrong-input-name", "/v2/models/g/infer", GOOD.replace(b'"x"', b'"y"'), {}, 400,
     "protocol", 2),
    ("wrong-datatype", "/v2/models/g/infer", GOOD.replace(b"FP32", b"INT32"), {}, 400, "dtype", 2),
    ("wrong-shape", "/v2/models/g/infer", infer_body(np.zeros((2, 5), np.float32)), {}, 400,
     "shape", 1),  # 10 values: no whole sample of 16
    ("wrong-rank", "/v2/models/g/infer", infer_body(np.zeros(16, np.float32)), {}, 400, "rank", 1),
    ("data-count", "/v2/models/g/infer", GOOD.replace(b'"shape": [2, 16]', b'"shape": [3, 16]'),
     {}, 400, "shape", 2),  # claims 3, carries 2
    ("strings", "/v2/models/g/infer", json.dumps({"inputs": [{"name": "x", "datatype": "FP32",
     "shape": [1, 16], "data": ["a"] * 16}]}).encode(), {}, 400, "type", 1),
    ("unknown-output", "/v2/models/g/infer", infer_body(np.zeros((1, 16), np.float32),
     outputs=[{"name": "logits"}]), {}, 400, "protocol", 1),
    ("bad-header-length", "/v2/models/g/infer", GOOD, {"Inference-Header-Content-Length": "x"},
     400, "protocol", 1),
    ("binary-size", "/v2/models/g/infer", BIN_HEAD + b"\0" * 100,
     {"Inference-Header-Content-Length": str(len(BIN_HEAD))}, 400, "shape", 1),  # 25 values
    ("too-many-rows", "/v2/models/g/infer", infer_body(np.zeros((MAX_ROWS + 1, 16), np.float32)),
     {}, 413, "batch_size", MAX_ROWS),  # counted rows are capped at max_request_rows
    ("body-too-large", "/v2/models/g/infer", b" " * (MAX_BODY + 1), {}, 413, "body_size", 1),
    ("chunked-too-large", "/v2/models/g/infer", _chunks, {}, 413, "body_size", 1),
    ("compressed", "/v2/models/g/infer", GOOD, {"Content-Encoding": "gzip"}, 415, "encoding", 1),
    ("unknown-model", "/v2/models/other/infer", GOOD, {}, 404, "model", 1),
    ("unknown-version", "/v2/models/g/versions/7/infer", GOOD, {}, 404, "model", 1),
]


def test_each_bad_request_gets_its_4xx_and_the_service_keeps_serving(server) -> None:
    url, proc = server
    before = metrics(url)
    with httpx.Client(base_url=url, timeout=10) as client:
        for case, path, body, headers, status, reason, _ in BAD:
            content = body(11) if callable(body) else body
            r = client.post(path, content=content, headers=headers)
            assert r.status_code == status, (case, r.text)
            assert r.headers["content-type"] == "application/json", case
            doc = r.json()
            assert doc["reason"] == reason and len(doc["error"]) > 10, (case, doc)
            ok = client.post("/v2/models/g/infer", content=GOOD)
            assert ok.status_code == 200, (case, ok.text)
        # routing errors: JSON too, not counted as refused inputs
        assert client.put("/v2/health/live").status_code == 405
        r = client.get("/v2/nowhere")
        assert r.status_code == 404 and r.json()["reason"] == "route"
    after = metrics(url)
    for reason in {c[5] for c in BAD}:
        want = sum(c[6] for c in BAD if c[5] == reason)
        got = (metric_value(after, "oodguard_inputs_refused_total", reason=reason)
               - metric_value(before, "oodguard_inputs_refused_total", reason=reason))
        assert got == want, reason
    assert proc.popen.poll() is None
    assert "Traceback" not in proc.output


def test_concurrent_requests_are_coalesced(server, data) -> None:
    url, _ = server
    before = metrics(url)
    n = 48
    bodies = [infer_body(data["test"][i : i + 1]) for i in range(n)]
    with httpx.Client(base_url=url, timeout=30,
                      limits=httpx.Limits(max_connections=n)) as client, \
            ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(lambda b: client.post("/v2/models/g/infer", content=b).status_code,
                              bodies))
    assert codes == [200] * n
    after = metrics(url)

    def delta(name: str) -> float:
        return metric_value(after, name, guard="g") - metric_value(before, name, guard="g")

    assert delta("oodguard_batch_size_sum") == n  # every row scored exactly once
    calls = delta("oodguard_batch_size_count")
    assert 1 <= calls < n / 2, calls  # coalesced: far fewer guard calls than requests


def test_promtool_accepts_the_served_metrics(server) -> None:
    url, _ = server
    httpx.post(url + "/v2/models/g/infer", content=GOOD, timeout=10)
    httpx.post(url + "/v2/models/g/infer", content=b"{", timeout=10)
    text = metrics(url)
    assert 'oodguard_inputs_total{guard="g",verdict="in"}' in text
    out = subprocess.run([tool("promtool"), "check", "metrics"], input=text.encode(),
                         capture_output=True, timeout=30)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        out.stdout.decode() + out.stderr.decode())


def test_sigterm_finishes_in_flight_requests(bundle) -> None:
    with serving(bundle, "--max-wait-ms", "1500", "--max-batch", "1000") as (url, proc):
        got: list[httpx.Response] = []
        t = threading.Thread(target=lambda: got.append(
            httpx.post(url + "/v2/models/default/infer", content=GOOD, timeout=30)))
        t.start()
        time.sleep(0.4)  # the request now waits in the batcher for company
        t0 = time.monotonic()
        code = proc.stop()
        t.join(10)
        assert got and got[0].status_code == 200, got
        assert len(got[0].json()["outputs"][0]["data"]) == 2
        assert code == 0, proc.output
        assert time.monotonic() - t0 < 10
        assert proc.lines[-1] == "oodguard serve: stopped"


async def _burst(url: str, n: int, proc) -> tuple[list[object], int, object]:  # type: ignore[no-untyped-def]
    """``n`` requests already sent when SIGTERM arrives, none of them accepted yet.

    The server is stopped (SIGSTOP) while ``n`` connections each send one infer request: the
    kernel completes the connections and buffers the requests, so at the signal every request
    sits in the accept backlog or a socket buffer — where a server that simply closes its
    listener resets them. Then SIGTERM, SIGCONT, and readiness is asked on a keep-alive
    connection opened before. Returns each request's status (or error), how many were
    answered before the signal, and the readiness status after it.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = (f"POST /v2/models/default/infer HTTP/1.1\r\nHost: t\r\n"
               f"Content-Length: {len(GOOD)}\r\n\r\n").encode() + GOOD
    written = [0]
    all_written = asyncio.Event()

    async def read_status(reader: asyncio.StreamReader) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length: *(\d+)", head)
        await reader.readexactly(int(m.group(1)) if m else 0)
        return int(head.split()[1])

    async def one() -> object:
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError as err:
            return f"connect: {err}"
        try:
            writer.write(request)
            await writer.drain()
            written[0] += 1
            if written[0] == n:
                all_written.set()
            return await asyncio.wait_for(read_status(reader), 60)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as err:
            return repr(err)
        finally:
            writer.close()

    probe_r, probe_w = await asyncio.open_connection(host, int(port))
    ready_req = b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n"
    probe_w.write(ready_req)
    assert await read_status(probe_r) == 200
    proc.popen.send_signal(signal.SIGSTOP)
    try:
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.wait_for(all_written.wait(), 60)
        answered = sum(t.done() for t in tasks)
        proc.popen.send_signal(signal.SIGTERM)
    finally:
        proc.popen.send_signal(signal.SIGCONT)
    await asyncio.sleep(0.05)
    probe_w.write(ready_req)
    try:
        ready: object = await read_status(probe_r)
    except (OSError, asyncio.IncompleteReadError) as err:
        ready = repr(err)
    probe_w.close()
    return list(await asyncio.gather(*tasks)), answered, ready


def test_sigterm_with_500_requests_in_flight_loses_none(bundle) -> None:
    n = 520
    with serving(bundle, "--max-wait-ms", "200", "--max-batch", "1024") as (url, proc):
        statuses, answered, ready = asyncio.run(_burst(url, n, proc))
        code = proc.popen.wait(60)
    assert answered == 0  # every request was in flight at the signal
    lost = [s for s in statuses if s != 200]
    assert not lost, (len(lost), lost[:3])
    assert ready == 503  # readiness fails at once
    assert code == 0 and proc.lines[-1] == "oodguard serve: stopped"
    assert "Traceback" not in proc.output


def test_serve_aggregates_metrics_in_multiprocess_mode(bundle, data, tmp_path) -> None:
    mpdir = tmp_path / "mp"
    mpdir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mpdir)}
    with serving(bundle, "--name", "mp", env=env) as (url, _):
        x = np.concatenate([data["test"][:6], data["noise"][:4]])
        r = httpx.post(url + "/v2/models/mp/infer", content=infer_body(x), timeout=10)
        assert r.status_code == 200
        n_ood = sum(r.json()["outputs"][2]["data"])
        text = metrics(url)
    assert list(mpdir.glob("counter_*.db"))  # values went through the multiprocess files
    assert metric_value(text, "oodguard_inputs_total", guard="mp", verdict="ood") == n_ood
    assert metric_value(text, "oodguard_inputs_total", guard="mp") == 10
    # gauges aggregated (max), not one series per process — but the drift evidence, one series
    # per process on purpose: the alert averages the processes' martingales (docs/drift.md)
    assert all(ln.startswith("oodguard_drift_evidence_log10{")
               for ln in text.splitlines() if 'pid="' in ln)
    assert text.count("oodguard_bundle_info{") == 1
