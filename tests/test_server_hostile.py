"""Hostile clients against a real ``oodguard serve``: each gets its documented status and reason,
the refusal counters move by at most one request's rows, and the server never answers 500,
logs no traceback and keeps serving. The contract is ``docs/guarantees-http.md``."""

from __future__ import annotations

import json
import socket
import time

import httpx
import numpy as np
import pytest
from _serving import STRICT_PARSED, metric_value, serving, strict_json

MAX_BODY = 1_000_000
MAX_ROWS = 256
BUDGET = 3_000_000
BODY_TIMEOUT = 2.0
HEADER_TIMEOUT = 1.5
INFER = "/v2/models/g/infer"


@pytest.fixture(scope="module")
def server(bundle):  # type: ignore[no-untyped-def]
    with serving(bundle, "--name", "g", "--max-body-bytes", str(MAX_BODY),
                 "--max-request-rows", str(MAX_ROWS), "--body-timeout-s", str(BODY_TIMEOUT),
                 "--header-timeout-s", str(HEADER_TIMEOUT),
                 "--max-inflight-body-bytes", str(BUDGET)) as (url, proc):
        yield url, proc


def doc(shape: object = (1, 16), data: object = None, **extra: object) -> bytes:
    inp: dict[str, object] = {"name": "x", "datatype": "FP32", "shape": shape,
                              "data": [0.5] * 16 if data is None else data}
    return json.dumps({"inputs": [inp], **extra}).encode()


def raw_shape(shape: bytes) -> bytes:
    """A request whose shape is written verbatim (JSON cannot hold Python's 10**400)."""
    return (b'{"inputs":[{"name":"x","datatype":"FP32","shape":' + shape
            + b',"data":[' + b",".join([b"0.5"] * 16) + b"]}]}")


BIN_HEAD = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                   "parameters": {"binary_data_size": 64}}]}).encode()
BIG = 10 ** 60  # 61 digits: a valid JSON number, far more rows than any request may hold

# (id, body, headers, status, reason, rows counted in oodguard_inputs_refused_total)
CASES = [
    ("rows-10e400", raw_shape(b"[1" + b"0" * 400 + b",16]"), {}, 400, "json", 1),
    ("rows-10e300-wrong-shape", raw_shape(b"[1" + b"0" * 300 + b",3]"), {}, 400, "json", 1),
    # the rows a request carried (16 values: one), never the rows its shape claims
    ("rows-10e60-wrong-shape", raw_shape(f"[{BIG},3]".encode()), {}, 400, "shape", 1),
    ("rows-10e60", raw_shape(f"[{BIG},16]".encode()), {}, 413, "batch_size", 1),
    ("huge-rank", raw_shape(b"[" + b",".join([b"1"] * 40) + b"]"), {}, 400, "shape", 1),
    ("nested-20000", b'{"inputs":' + b"[" * 20_000 + b"]" * 20_000 + b"}", {}, 400, "json", 1),
    ("objects-20000", b'{"a":' * 20_000 + b"1" + b"}" * 20_000, {}, 400, "json", 1),
    ("number-5000-digits", doc(data=[0.5] * 15 + [0]).replace(b"0]", b"9" * 5000 + b"]"), {},
     400, "json", 1),
    ("bool-in-data", doc(data=[True] + [0.5] * 15), {}, 400, "type", 1),
    ("null-in-data", doc(data=[None] + [0.5] * 15), {}, 400, "type", 1),
    ("string-data", doc(data="0.5"), {}, 400, "type", 1),
    ("binary-output-string", doc(parameters={"binary_data_output": "false"}), {}, 400,
     "protocol", 1),
    ("binary-data-int", doc(outputs=[{"name": "score", "parameters": {"binary_data": 1}}]), {},
     400, "protocol", 1),
    ("duplicate-output", doc(outputs=[{"name": "score"}, {"name": "score"}]), {}, 400,
     "protocol", 1),
    ("id-not-string", doc(id=7), {}, 400, "protocol", 1),
    ("fdr-zero", doc(parameters={"fdr": 0}), {}, 400, "protocol", 1),
    ("fdr-one", doc(parameters={"fdr": 1.0}), {}, 400, "protocol", 1),
    ("fdr-string", doc(parameters={"fdr": "0.1"}), {}, 400, "protocol", 1),
    ("fdr-bool", doc(parameters={"fdr": True}), {}, 400, "protocol", 1),
    ("binary-size-bool", BIN_HEAD.replace(b"64", b"true") + b"\0" * 64,
     {"Inference-Header-Content-Length": str(len(BIN_HEAD) + 2)}, 400, "shape", 1),
    ("binary-truncated", BIN_HEAD + b"\0" * 10,
     {"Inference-Header-Content-Length": str(len(BIN_HEAD))}, 400, "protocol", 1),
    ("binary-extra-bytes", BIN_HEAD + b"\0" * 70,
     {"Inference-Header-Content-Length": str(len(BIN_HEAD))}, 400, "protocol", 1),
    ("header-length-past-body", BIN_HEAD + b"\0" * 64,
     {"Inference-Header-Content-Length": str(len(BIN_HEAD) + 65)}, 400, "protocol", 1),
    ("header-length-huge", BIN_HEAD + b"\0" * 64,
     {"Inference-Header-Content-Length": "9" * 40}, 400, "protocol", 1),
    ("header-length-short", BIN_HEAD + b"\0" * 64,
     {"Inference-Header-Content-Length": str(len(BIN_HEAD) - 5)}, 400, "json", 1),
    ("multipart", doc(), {"Content-Type": "multipart/form-data; boundary=x"}, 415,
     "content_type", 1),
    ("xml", doc(), {"Content-Type": "application/xml"}, 415, "content_type", 1),
    ("body-too-large", b" " * (MAX_BODY + 1), {}, 413, "body_size", 1),
]


def metrics(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=10).text


def refused(text: str, reason: str) -> float:
    return metric_value(text, "oodguard_inputs_refused_total", guard="g", reason=reason)


def dropped(text: str, reason: str) -> float:
    return metric_value(text, "oodguard_http_requests_dropped_total", guard="g", reason=reason)


def raw(url: str, data: bytes, *, close: bool = False, timeout: float = 10.0
        ) -> tuple[int, dict[str, str], bytes]:
    """Send bytes on a fresh connection (``close``: then half-close); read one response."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        if close:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed without a response: {buf!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return int(lines[0].split()[1]), headers, rest


def post_head(length: int | str, content_type: str = "application/json") -> bytes:
    return (f"POST {INFER} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_each_hostile_body_gets_its_documented_4xx(server) -> None:
    url, proc = server
    before = metrics(url)
    with httpx.Client(base_url=url, timeout=10) as client:
        for case, body, headers, status, reason, _ in CASES:
            r = client.post(INFER, content=body, headers=headers)
            assert r.status_code == status, (case, r.text[:300])
            got = r.json()
            assert got["reason"] == reason, (case, got)
            assert len(got["error"]) > 20 and len(got["error"]) < 400, (case, got)
            assert client.post(INFER, content=doc()).status_code == 200, case
    after = metrics(url)
    for reason in {c[4] for c in CASES}:
        want = sum(c[5] for c in CASES if c[4] == reason)
        assert refused(after, reason) - refused(before, reason) == want, reason
    assert proc.popen.poll() is None
    assert "Traceback" not in proc.output and " 500 " not in proc.output


def test_refusal_messages_say_what_was_expected(server) -> None:
    url, _ = server
    with httpx.Client(base_url=url, timeout=10) as client:
        def error(body: bytes, **kw: object) -> str:
            return str(client.post(INFER, content=body, **kw).json()["error"])  # type: ignore[arg-type]

        assert "nests deeper than 32 levels" in error(CASES[5][1])
        assert "longer than 64 characters" in error(CASES[7][1])
        assert "only JSON numbers (no true/false" in error(CASES[8][1])
        assert "'binary_data_output' must be a JSON boolean" in error(CASES[11][1])
        assert "'fdr' must be a number in (0, 1)" in error(CASES[15][1])
        assert f"at most {MAX_ROWS} rows" in error(CASES[3][1])
        assert "Content-Type 'multipart/form-data' is not accepted" in error(
            CASES[-3][1], headers=CASES[-3][2])


def test_huge_content_length_is_refused_before_any_body(server) -> None:
    url, _ = server
    status, headers, body = raw(url, post_head(10 ** 15))
    assert status == 413 and strict_json(body)["reason"] == "body_size"
    assert headers["connection"] == "close"
    # not a length h11 accepts (over 18 digits, negative): refused by the HTTP layer, not JSON
    for length in (10 ** 30, "-5"):
        status, _, body = raw(url, post_head(length))
        assert status == 400


def test_an_unfinished_body_gets_408_after_the_body_timeout(server) -> None:
    url, proc = server
    before = metrics(url)
    t0 = time.monotonic()
    status, headers, body = raw(url, post_head(500_000) + b'{"inputs": [')
    took = time.monotonic() - t0
    assert status == 408 and strict_json(body)["reason"] == "body_timeout"
    assert headers["connection"] == "close"
    assert BODY_TIMEOUT <= took < BODY_TIMEOUT + 5
    after = metrics(url)
    assert dropped(after, "body_timeout") - dropped(before, "body_timeout") == 1
    assert metric_value(after, "oodguard_inputs_refused_total") == metric_value(
        before, "oodguard_inputs_refused_total")


def _closed_after(sock: socket.socket, trickle: bytes = b"", limit: float = 15.0) -> float:
    """Seconds until the server closes ``sock`` (EOF or reset), sending ``trickle`` one byte
    every 0.25 s meanwhile; fails past ``limit``."""
    t0 = time.monotonic()
    sock.settimeout(0.25)
    sent = 0
    while time.monotonic() - t0 < limit:
        try:
            if not sock.recv(65536):
                return time.monotonic() - t0
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - t0
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - t0
            sent += 1
    raise AssertionError(f"connection still open after {limit}s")


def test_slow_or_missing_headers_are_cut_off_at_the_header_timeout(server) -> None:
    """A connection that sends nothing, or dribbles its headers a byte at a time (slowloris),
    or starts a second request on a kept-alive connection and stops, is closed once
    ``--header-timeout-s`` has passed; headers completed in time are served; the service keeps
    serving and no counter moves (no request exists yet)."""
    url, _ = server
    host, port = url.removeprefix("http://").rsplit(":", 1)
    before = metrics(url)
    with socket.create_connection((host, int(port))) as s:  # silent
        assert HEADER_TIMEOUT - 0.3 <= _closed_after(s) < HEADER_TIMEOUT + 3
    head = f"POST {INFER} HTTP/1.1\r\nHost: t\r\nX-Slow: ".encode()
    with socket.create_connection((host, int(port))) as s:  # slowloris
        s.sendall(head)
        assert _closed_after(s, trickle=b"a" * 200) < HEADER_TIMEOUT + 3
    body = doc()
    request = post_head(len(body)) + body
    with socket.create_connection((host, int(port))) as s:  # kept alive, then a stalled start
        s.sendall(request)
        s.settimeout(10)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.sendall(head)
        assert _closed_after(s) < HEADER_TIMEOUT + 3
    with socket.create_connection((host, int(port))) as s:  # slow but within the bound
        for i in range(0, len(request), len(request) // 3 + 1):
            s.sendall(request[i : i + len(request) // 3 + 1])
            time.sleep(HEADER_TIMEOUT / 5)
        s.settimeout(10)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    after = metrics(url)
    for text in (before, after):
        assert "Traceback" not in text
    assert metric_value(after, "oodguard_inputs_refused_total") == metric_value(
        before, "oodguard_inputs_refused_total")
    assert httpx.post(url + INFER, content=body, timeout=10).status_code == 200


def test_bodies_beyond_the_in_flight_budget_get_503_at_once(server) -> None:
    url, _ = server
    host, port = url.removeprefix("http://").rsplit(":", 1)
    before = metrics(url)
    hanging = []
    try:
        for _ in range(BUDGET // 900_000):  # 3 × 900 kB fit in the 3 MB budget
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(post_head(900_000) + b" " * 1000)
            hanging.append(s)
        time.sleep(0.3)  # the server has read their headers and reserved their bytes
        t0 = time.monotonic()
        status, headers, body = raw(url, post_head(900_000) + b" " * 1000)
        assert time.monotonic() - t0 < BODY_TIMEOUT  # answered at once, not after a timeout
        assert status == 503 and strict_json(body)["reason"] == "overloaded"
        # its declared body (within the size limit) is read and discarded by the HTTP layer,
        # so a client still sending gets this answer, not a connection reset
        assert headers["retry-after"] == "1" and "connection" not in headers
        # a small request still fits beside them
        assert httpx.post(url + INFER, content=doc(), timeout=10).status_code == 200
    finally:
        for s in hanging:
            s.close()
    time.sleep(BODY_TIMEOUT + 0.5)  # their reservations are given back
    status, _, _ = raw(url, post_head(900_000) + b" " * 900_000)
    assert status == 400  # read in full (900 kB of spaces is not JSON), not 503
    after = metrics(url)
    assert dropped(after, "overloaded") - dropped(before, "overloaded") == 1


def test_a_client_disconnect_is_one_log_line_without_traceback(server) -> None:
    url, proc = server
    host, port = url.removeprefix("http://").rsplit(":", 1)
    before = metrics(url)
    said = "disconnected before its request body arrived"
    logged = sum(said in ln for ln in proc.lines)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(post_head(100_000) + b'{"inputs": [')
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = metrics(url)
        if dropped(after, "disconnect") > dropped(before, "disconnect"):
            break
        time.sleep(0.1)
    assert dropped(after, "disconnect") - dropped(before, "disconnect") == 1
    lines = [ln for ln in proc.lines if said in ln][logged:]
    assert len(lines) == 1 and " INFO oodguard.serve.app: client " in lines[0], proc.output[-2000:]
    assert "Traceback" not in proc.output and "Exception" not in proc.output


def test_json_outputs_are_strict_json_for_non_finite_rows(server) -> None:
    url, _ = server
    x = np.full((2, 16), 0.5, np.float32)
    x[1, 3] = np.inf
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16],
                                   "data": x.ravel().tolist()}],
                       "outputs": [{"name": "score"}, {"name": "features"}]})
    parsed = STRICT_PARSED[0]
    r = httpx.post(url + INFER, content=body, timeout=10)
    assert r.status_code == 200
    assert STRICT_PARSED[0] == parsed + 1  # conftest read it strictly on arrival
    got = strict_json(r.content)
    score, features = got["outputs"][0]["data"], got["outputs"][1]["data"]
    assert score[1] == np.finfo(np.float64).max and np.isfinite(score[0])
    nf = len(features) // 2  # row-major [2, F]: the second row's features are NaN ▶ null
    assert features[nf:] == [None] * nf and None not in features[:nf]
