"""Shared fixtures: a tiny trained autoencoder on synthetic data, its bundle, fresh registries.

Everything is generated here with fixed seeds; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DIM = 16


def make_data(n: int, *, seed: int, shift: float = 0.0) -> np.ndarray:
    """In-distribution data: a 3-dimensional manifold in 16-D, squashed to (0, 1)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(1234).normal(size=(3, DIM))
    z = rng.normal(size=(n, 3)) + shift
    return (1.0 / (1.0 + np.exp(-(z @ basis) * 0.7))).astype(np.float32)


@pytest.fixture(scope="session")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "train": make_data(800, seed=1),
        "val": make_data(600, seed=2),
        "test": make_data(600, seed=3),
        "noise": rng.uniform(0, 1, size=(300, DIM)).astype(np.float32),
    }


@pytest.fixture(scope="session")
def autoencoder(data):  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    from oodguard.demo.train import train_autoencoder

    torch.set_num_threads(1)
    return train_autoencoder(data["train"], latent=3, hidden=16, epochs=60, progress=False)


@pytest.fixture(scope="session")
def raw_bundle(tmp_path_factory, autoencoder, data) -> Path:  # type: ignore[no-untyped-def]
    """An exported, uncalibrated bundle (T = 8)."""
    from oodguard.export import export_bundle

    path = tmp_path_factory.mktemp("bundles") / "raw"
    export_bundle(path, model=autoencoder, x_train=data["train"], steps=8)
    return path


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, raw_bundle, data) -> Path:  # type: ignore[no-untyped-def]
    """The same bundle, calibrated at alpha = 0.05."""
    from oodguard.calibration import calibrate

    out = tmp_path_factory.mktemp("bundles") / "calibrated"
    calibrate(raw_bundle, data["val"], alpha=0.05, out=out)
    return out


@pytest.fixture
def registry():  # type: ignore[no-untyped-def]
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


@pytest.fixture(scope="session", autouse=True)
def strict_json_responses():  # type: ignore[no-untyped-def]
    """Every JSON response a test receives over HTTP — through httpx (also starlette's
    ``TestClient``, an httpx client) or tritonclient — is first read by a strict RFC 8259
    parser (``_serving.check_json_response``); a ``NaN`` or ``Infinity`` fails the test that
    received it. The responses are the server's real ones; only the reading is added."""
    import httpx
    from _serving import STRICT_PARSED, check_json_response, strict_json

    mp = pytest.MonkeyPatch()
    send, asend = httpx.Client.send, httpx.AsyncClient.send

    def checked_send(self, request, **kw):  # type: ignore[no-untyped-def]
        response = send(self, request, **kw)
        if not kw.get("stream"):
            check_json_response(response.headers, response.content)
        return response

    async def checked_asend(self, request, **kw):  # type: ignore[no-untyped-def]
        response = await asend(self, request, **kw)
        if not kw.get("stream"):
            check_json_response(response.headers, response.content)
        return response

    mp.setattr(httpx.Client, "send", checked_send)
    mp.setattr(httpx.AsyncClient, "send", checked_asend)
    try:
        import rapidjson
        import tritonclient.http._client as triton_client
        import tritonclient.http._infer_result as triton_result
    except ImportError:  # tritonclient is a test requirement; without it, httpx only
        pass
    else:
        class _StrictRapidJSON:
            """tritonclient's ``json`` (rapidjson), whose ``loads`` parses strictly first."""

            def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
                return getattr(rapidjson, name)

            def loads(self, s, *args, **kw):  # type: ignore[no-untyped-def]
                strict_json(s)
                STRICT_PARSED[0] += 1
                return rapidjson.loads(s, *args, **kw)

        for module in (triton_client, triton_result):
            mp.setattr(module, "json", _StrictRapidJSON())
    yield
    mp.undo()
