"""The service in process: protocol parsing, the batcher, token, failures, configuration."""

from __future__ import annotations

import asyncio
import json
import warnings

import numpy as np
import pytest
from _serving import metric_value, strict_json

from oodguard import Guard
from oodguard.bundle import InputSpec
from oodguard.results import CheckResult
from oodguard.serve import (
    Batcher,
    ProtocolError,
    ServeConfig,
    create_app,
    encode_response,
    parse_infer,
)
from oodguard.serve.protocol import HEADER_LENGTH

with warnings.catch_warnings():  # starlette 1.x prefers httpx2; httpx is what we ship
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SPEC = InputSpec(name="x", shape=(4,))


def body(x: np.ndarray, **extra: object) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}], **extra}).encode()


# -- protocol -------------------------------------------------------------------------------
def test_parse_binary_and_json_requests_agree() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4],
                                   "parameters": {"binary_data_size": 48}}],
                       "outputs": [{"name": "features", "parameters": {"binary_data": True}},
                                   {"name": "score"}], "id": "a"}).encode()
    req = parse_infer(head + x.tobytes(), header_length=str(len(head)), spec=SPEC, max_rows=10)
    np.testing.assert_array_equal(req.x, x)
    assert req.outputs == (("features", True), ("score", False)) and req.id == "a"
    req2 = parse_infer(body(x), header_length=None, spec=SPEC, max_rows=10)
    np.testing.assert_array_equal(req2.x, x)
    assert req2.outputs == (("score", False), ("p_value", False), ("is_ood", False))


@pytest.mark.parametrize(
    ("doc", "status", "reason", "message"),
    [
        (b"\xff", 400, "json", "not valid JSON"),
        ({"inputs": []}, 400, "protocol", "exactly one tensor"),
        ({"inputs": [{"name": "x", "datatype": "FP16", "shape": [1, 4], "data": [0] * 4}]},
         400, "dtype", "must be 'FP32'; got 'FP16'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, -4], "data": [0] * 4}]},
         400, "shape", "non-negative integers"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [[0] * 4, [0]]}]},
         400, "type", "rectangular"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [True] * 4}]},
         400, "type", "only JSON numbers"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [11, 4], "data": [0] * 44}]},
         413, "batch_size", "at most 10 rows"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]},
         400, "protocol", "needs 'data'"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                      "data": [True, 0.5, 0.5, 0.5]}]}, 400, "type", "no true/false"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5] * 4}],
          "parameters": {"binary_data_output": "false"}}, 400, "protocol",
         "'binary_data_output' must be a JSON boolean"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5] * 4}],
          "parameters": {"fdr": float("nan")}}, 400, "protocol", r"'fdr' must be a number in"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [10 ** 40, 5],
                      "data": [0.5] * 4}]}, 400, "shape", "must be \\[N, 4\\]"),
        (b'{"inputs": ' + b"[" * 33 + b"]" * 33 + b"}", 400, "json", "deeper than 32"),
        (b'{"inputs": [1' + b"0" * 64 + b"]}", 400, "json", "longer than 64 characters"),
    ],
)
def test_parse_refusals(doc, status, reason, message) -> None:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(ProtocolError, match=message) as info:
        parse_infer(raw, header_length=None, spec=SPEC, max_rows=10)
    assert (info.value.status, info.value.reason) == (status, reason)
    assert 1 <= info.value.rows <= 10  # never more than max_rows, whatever the shape claims


def test_binary_response_layout() -> None:
    r = CheckResult(np.array([1.5, np.inf]), np.array([0.5, 0.0]), np.array([False, True]),
                    np.zeros((2, 3), np.float32), ("a", "b", "c"), 0.05, 2.0)
    req = parse_infer(body(np.zeros((2, 4)), parameters={"binary_data_output": True}),
                      header_length=None, spec=SPEC, max_rows=10)
    content, headers = encode_response("m", req, r)
    n = int(headers[HEADER_LENGTH])
    doc = strict_json(content[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    assert sizes == [16, 16, 2] and len(content) == n + 34
    assert np.frombuffer(content[n : n + 16], "<f8").tolist() == [1.5, np.inf]
    assert content[-2:] == b"\x00\x01"


# -- batcher --------------------------------------------------------------------------------
def fake_check(calls: list[int]):  # type: ignore[no-untyped-def]
    def check(x: np.ndarray) -> CheckResult:
        calls.append(len(x))
        s = x[:, 0].astype(np.float64)
        return CheckResult(s, s, s > 0, x, ("f",) * x.shape[1], 0.05, 1.0)

    return check


@pytest.mark.parametrize(("enabled", "max_batch", "want"),
                         [(True, 64, [10]), (True, 4, [4, 4, 2]), (False, 64, [1] * 10)])
def test_batcher_coalesces_up_to_max_batch(enabled, max_batch, want) -> None:
    calls: list[int] = []

    async def run() -> list[CheckResult]:
        b = Batcher(fake_check(calls), max_batch=max_batch, max_wait_s=0.5, enabled=enabled)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit(np.full((1, 2), i, np.float32))
                                          for i in range(10)))
        finally:
            await b.stop()

    results = asyncio.run(run())
    assert sorted(calls) == sorted(want)
    assert [r.score.tolist() for r in results] == [[float(i)] for i in range(10)]


def test_batcher_validates_its_parameters() -> None:
    with pytest.raises(ValueError, match="max_batch must be >= 1. Got 0"):
        Batcher(fake_check([]), max_batch=0, max_wait_s=0)
    with pytest.raises(ValueError, match="max_wait_s must be >= 0"):
        Batcher(fake_check([]), max_batch=1, max_wait_s=-1)


# -- the app --------------------------------------------------------------------------------
@pytest.fixture
def guard(bundle, registry):  # type: ignore[no-untyped-def]
    return Guard.load(bundle, registry=registry, name="t")


def test_bearer_token_guards_model_routes_only(guard, registry, data) -> None:
    app = create_app(guard, ServeConfig(token="s3cret", max_wait_ms=0), registry=registry)
    good = body(data["test"][:2])
    with TestClient(app) as client:
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/metrics").status_code == 200
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
            r = client.post("/v2/models/t/infer", content=good, headers=headers)
            assert r.status_code == 401 and r.json()["reason"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        assert client.get("/v2/models/t").status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert client.get("/v2/models/t", headers=ok).status_code == 200
        r = client.post("/v2/models/t/infer", content=good, headers=ok)
        assert r.status_code == 200, r.text
        text = client.get("/metrics").text
    # not input refusals: a client without the token cannot move the refusal alert
    assert metric_value(text, "oodguard_inputs_refused_total") == 0
    assert metric_value(text, "oodguard_http_requests_dropped_total", reason="unauthorized") == 3
    assert metric_value(text, "oodguard_inputs_total", guard="t") == 2


def test_engine_failure_is_a_json_500_counted_as_guard_failure(guard, registry, data,
                                                               monkeypatch) -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost")

    monkeypatch.setattr(guard.engine, "run", broken)
    app = create_app(guard, ServeConfig(max_wait_ms=0), registry=registry)
    with TestClient(app, raise_server_exceptions=False) as client:
        x = data["test"][:2]
        r = client.post("/v2/models/t/infer", content=body(x))
        assert r.status_code == 500 and r.json() == {
            "error": "the guard failed: engine_error", "reason": "guard_failure"}
        assert client.get("/v2/health/live").status_code == 200
        text = client.get("/metrics").text
    assert metric_value(text, "oodguard_guard_failures_total", kind="engine_error") == 1


def test_an_unexpected_error_is_counted_as_internal(guard, registry, data,
                                                   monkeypatch) -> None:
    """An error that is not a GuardFailure (a bug) counts as kind="internal", a series that
    exists at 0 from the start, rather than under its class name, whose first event no
    ``increase()`` would see."""
    def broken(x: np.ndarray) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(guard, "check", broken)
    app = create_app(guard, ServeConfig(max_wait_ms=0), registry=registry)
    with TestClient(app, raise_server_exceptions=False) as client:
        before = client.get("/metrics").text
        assert 'kind="internal"' in before
        r = client.post("/v2/models/t/infer", content=body(data["test"][:2]))
        assert r.status_code == 500 and r.json()["error"] == "the guard failed: internal"
        text = client.get("/metrics").text
    assert metric_value(text, "oodguard_guard_failures_total", kind="internal") == 1
    assert "KeyError" not in text


def test_not_ready_before_startup_and_no_metrics_without_registry(guard) -> None:
    client = TestClient(create_app(guard, ServeConfig()))  # no `with`: lifespan never ran
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/metrics").status_code == 404


def test_serve_config_is_validated_and_hides_the_token() -> None:
    with pytest.raises(ValueError, match="max_batch must be a positive int. Got 0"):
        ServeConfig(max_batch=0)
    with pytest.raises(ValueError, match="port must be in"):
        ServeConfig(port=70000)
    with pytest.raises(TypeError):
        ServeConfig("127.0.0.1")  # type: ignore[misc]  # keyword-only
    c = ServeConfig(token="s3cret")
    assert "s3cret" not in repr(c) and c.to_dict()["token"] == "***"


def test_serve_without_the_extra_or_with_an_empty_token_env_says_why(bundle) -> None:
    import os
    import subprocess
    import sys

    code = ("import sys; sys.modules['starlette'] = None\n"
            "from oodguard.cli import main\n"
            f"sys.exit(main(['serve', {str(bundle)!r}]))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "needs the serve extra: pip install 'oodguard[serve,cpu]'" in p.stderr
    env = {k: v for k, v in os.environ.items() if k != "OODGUARD_TEST_TOKEN"}
    p = subprocess.run([sys.executable, "-m", "oodguard.cli", "serve", str(bundle),
                        "--token-env", "OODGUARD_TEST_TOKEN"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 2
    assert "--token-env OODGUARD_TEST_TOKEN: that variable is unset or empty" in p.stderr


def test_a_large_json_request_is_parsed_off_the_loop_and_scored(guard, registry, data) -> None:
    x = np.concatenate([data["test"], data["noise"]])  # 900 rows, ~300 KB of JSON
    content = body(x)
    assert len(content) > 64 * 1024
    with TestClient(create_app(guard, ServeConfig(), registry=registry)) as client:
        r = client.post("/v2/models/t/infer", content=content)
    assert r.status_code == 200, r.text
    score = r.json()["outputs"][0]["data"]
    np.testing.assert_array_equal(score, Guard.load(guard.bundle.path, registry=None)
                                  .check(x).score)


def test_fdr_parameter_applies_benjamini_hochberg_to_each_requests_rows_only(
        guard, registry, data) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from oodguard.decisions import benjamini_hochberg

    a = np.concatenate([data["test"][:40], data["noise"][:10]])  # some OOD rows
    b = data["test"][40:80]  # in-distribution only
    q = 0.2
    # 1 s for company: requests without fdr would be coalesced; these two are not, since
    # the BH verdicts of a row depend on every row it is tested with
    app = create_app(guard, ServeConfig(max_wait_ms=1000, max_batch=256), registry=registry)
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
        before = client.get("/metrics").text
        futures = [pool.submit(client.post, "/v2/models/t/infer",
                               content=body(x, parameters={"fdr": q})) for x in (a, b)]
        responses = [f.result() for f in futures]
        after = client.get("/metrics").text
    assert (metric_value(after, "oodguard_batch_size_count")
            - metric_value(before, "oodguard_batch_size_count")) == 2  # one check each
    reference = Guard.load(guard.bundle.path, registry=None)
    for x, r in zip((a, b), responses, strict=True):
        assert r.status_code == 200, r.text
        out = {o["name"]: o["data"] for o in r.json()["outputs"]}
        p = np.asarray(out["p_value"])
        np.testing.assert_array_equal(p, reference.check(x).p_value)
        # BH over this request's p-values alone, not over both requests' rows
        np.testing.assert_array_equal(out["is_ood"], benjamini_hochberg(p, q))
    both = benjamini_hochberg(reference.check(np.concatenate([a, b])).p_value, q)
    flagged_a = np.asarray(responses[0].json()["outputs"][2]["data"])
    assert flagged_a.sum() > 0  # the noise rows are found
    assert not np.array_equal(flagged_a, both[: len(a)]) or not np.array_equal(
        responses[1].json()["outputs"][2]["data"], both[len(a):]), (
        "this data does not tell per-request BH from batch-wide BH; pick other rows")


@pytest.mark.parametrize("batching", [True, False])
def test_metrics_count_the_verdicts_clients_received_with_and_without_fdr(
        guard, registry, data, batching) -> None:
    """/metrics counts the verdicts each client received: the BH verdicts of a request with
    ``fdr``, the per-row alpha verdicts of one without, even when both arrive together."""
    from concurrent.futures import ThreadPoolExecutor

    with_fdr = np.concatenate([data["test"][:100], data["noise"][:5]])
    plain = data["test"][100:150]
    q = 0.01
    reference = Guard.load(guard.bundle.path, registry=None)
    alpha_verdicts = reference.check(with_fdr).is_ood
    bh_verdicts = reference.check(with_fdr, fdr=q).is_ood
    assert alpha_verdicts.sum() != bh_verdicts.sum(), "pick rows where BH and alpha differ"
    app = create_app(guard, ServeConfig(max_wait_ms=500, batching=batching),
                     registry=registry)
    requests = [body(with_fdr, parameters={"fdr": q}), body(plain), body(plain[:3])]
    with TestClient(app) as client, ThreadPoolExecutor(3) as pool:
        before = client.get("/metrics").text
        futures = [pool.submit(client.post, "/v2/models/t/infer", content=c) for c in requests]
        responses = [f.result() for f in futures]
        after = client.get("/metrics").text
    verdicts = []
    for r in responses:
        assert r.status_code == 200, r.text
        verdicts.append(np.asarray(r.json()["outputs"][2]["data"], dtype=bool))
    np.testing.assert_array_equal(verdicts[0], bh_verdicts)

    def rise(verdict: str) -> float:
        return (metric_value(after, "oodguard_inputs_total", guard="t", verdict=verdict)
                - metric_value(before, "oodguard_inputs_total", guard="t", verdict=verdict))

    received_ood = int(sum(v.sum() for v in verdicts))
    received = sum(len(v) for v in verdicts)
    assert rise("ood") == received_ood
    assert rise("in") == received - received_ood


def test_refusals_count_the_rows_a_request_carried_never_the_rows_it_claims(
        guard, registry) -> None:
    """Eight requests whose shape claims 10**15 to 10**400 rows, each body holding one value:
    the refusal counter rises by 8 (one carried row each), not by the claims (which once added
    4103) nor by max_request_rows per request."""
    exponents = (15, 16, 20, 40, 63, 64, 300, 400)
    bodies = [b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1' + b"0" * k + b',16],'
              b'"data":[0.5]}]}' for k in exponents]
    app = create_app(guard, ServeConfig(), registry=registry)  # max_request_rows=4096
    with TestClient(app) as client:
        before = client.get("/metrics").text
        answers = [client.post("/v2/models/t/infer", content=c) for c in bodies]
        after = client.get("/metrics").text
    assert [(r.status_code, r.json()["reason"]) for r in answers] == [
        (413, "batch_size")] * 5 + [(400, "json")] * 3
    assert "a request may hold at most 4096 rows; got 1000000000000000" in answers[0].text
    assert "longer than 64 characters" in answers[-1].text
    rise = (metric_value(after, "oodguard_inputs_refused_total", guard="t")
            - metric_value(before, "oodguard_inputs_refused_total", guard="t"))
    assert rise == len(bodies)


@pytest.mark.parametrize(
    ("data", "binary", "claimed", "carried"),
    [([0.5] * 16 * 3, 0, [10 ** 20, 16], 3),           # 3 rows of data
     ([0.5] * 33, 0, [10 ** 20, 16], 2),               # whole rows only
     ([[0.5] * 16] * 5, 0, [1, 16], 5),                # more rows than claimed
     ([], 0, [10 ** 20, 16], 1),                       # at least one
     (None, 64 * 7, [10 ** 20, 16], 7),                # binary: the bytes that came
     ({"a": 1}, 0, [10 ** 20, 16], 1)],                # not even a list
)
def test_carried_rows_are_read_from_the_data_not_the_shape(data, binary, claimed,
                                                           carried) -> None:
    from oodguard.serve.protocol import carried_rows

    inp: dict[str, object] = {"name": "x", "shape": claimed}
    if binary:
        inp["parameters"] = {"binary_data_size": 10 ** 20}
    else:
        inp["data"] = data
    assert carried_rows(inp, b"\0" * binary, InputSpec(name="x", shape=(16,))) == carried


def test_serve_config_validates_the_body_limits() -> None:
    with pytest.raises(ValueError, match="body_timeout_s must be > 0. Got 0"):
        ServeConfig(body_timeout_s=0)
    with pytest.raises(ValueError, match=r"max_inflight_body_bytes \(10\) must be >= "
                                         r"max_body_bytes \(100\)"):
        ServeConfig(max_body_bytes=100, max_inflight_body_bytes=10)
    with pytest.raises(ValueError, match="max_inflight_body_bytes must be a positive int"):
        ServeConfig(max_inflight_body_bytes=0)


def _naive_scan(text: bytes) -> tuple[int, int]:
    depth = deepest = run = longest = 0
    for c in text:
        depth += (c in b"[{") - (c in b"]}")
        deepest = max(deepest, depth)
        run = run + 1 if c in b"-+0123456789.eE" else 0
        longest = max(longest, run)
    return deepest, longest


def test_bounds_checks_match_a_naive_scan_across_chunk_boundaries() -> None:
    from oodguard.serve import json_limits

    rng = np.random.default_rng(7)
    alphabet = np.frombuffer(b"[]{}0123456789.e, a", np.uint8)
    for size in (0, 1, 5, 1000, (1 << 20) + 3):  # the depth sum works in 1 MiB chunks
        text = rng.choice(alphabet, size).astype(np.uint8).tobytes()
        deepest, longest = _naive_scan(text)
        assert json_limits.bracket_depth(json_limits.brackets(text)) == deepest, size
        assert json_limits.has_long_number(text) == (longest > json_limits.MAX_NUMBER_CHARS), size
    # nesting that peaks after the first 1 MiB chunk is measured across the boundary
    text = b"[" * ((1 << 20) + 40) + b"]" * ((1 << 20) + 40)
    assert json_limits.bracket_depth(text) == (1 << 20) + 40
    for n in (64, 65):
        text = b" " * ((1 << 20) - 10) + b"9" * n + b" "
        assert json_limits.has_long_number(text) == (n > 64)


def test_model_metadata_carries_the_drift_monitor_state(bundle, registry, data) -> None:  # type: ignore[no-untyped-def]
    g = Guard.load(bundle, registry=registry, name="t", drift=0.05)
    app = create_app(g, ServeConfig(max_wait_ms=0), registry=registry)
    with TestClient(app) as client:
        before = client.get("/v2/models/t").json()["parameters"]["drift"]
        for row in data["noise"][:200]:
            r = client.post("/v2/models/t/infer", content=body(row[None]))
            assert r.status_code == 200
        after = client.get("/v2/models/t").json()["parameters"]["drift"]
        text = client.get("/metrics").text
    assert before["rows"] == 0 and not before["alarm"] and before["false_alarm"] == 0.05
    assert after["rows"] == 200 and after["alarm"] and after["evidence"] >= after["threshold"]
    assert metric_value(text, "oodguard_drift_alarm") == 1
    plain = Guard.load(bundle, registry=None, name="t")
    with TestClient(create_app(plain, ServeConfig(max_wait_ms=0))) as client:
        assert "parameters" not in client.get("/v2/models/t").json()


def test_serve_refuses_a_bad_drift_false_alarm(bundle, capsys) -> None:  # type: ignore[no-untyped-def]
    from oodguard.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["serve", str(bundle), "--drift-false-alarm", "1.5"])
    assert exc.value.code == 2
    assert "must be a probability in (0, 1) or 'off'; got '1.5'" in capsys.readouterr().err
