"""oodguard.serve.uvicorn_adapter: the one module that uses uvicorn's internals refuses a
uvicorn outside the range it supports, and the installed one is inside it."""

from __future__ import annotations

import pytest
import uvicorn

from oodguard.errors import MissingDependencyError
from oodguard.serve import uvicorn_adapter


def test_the_installed_uvicorn_is_in_the_supported_range() -> None:
    low, high = uvicorn_adapter.SUPPORTED
    assert uvicorn_adapter.check_version() == uvicorn.__version__
    major, minor = (int(p) for p in uvicorn.__version__.split(".")[:2])
    assert low <= (major, minor) < high


@pytest.mark.parametrize("version", ["0.29.9", "0.55.0", "1.0.0", "0.100.1"])
def test_a_uvicorn_outside_the_range_is_refused_with_what_to_install(version: str) -> None:
    with pytest.raises(MissingDependencyError,
                       match=rf"oodguard serve supports uvicorn >=0\.30,<0\.55 .*uvicorn "
                             rf"{version} is installed\. Install a supported one: pip install "
                             r"'oodguard\[serve\]'"):
        uvicorn_adapter.check_version(version)


@pytest.mark.parametrize("version", ["0.30.0", "0.54.0", "0.54.1rc1"])
def test_versions_inside_the_range_pass(version: str) -> None:
    assert uvicorn_adapter.check_version(version) == version


def test_serve_refuses_to_start_on_an_unsupported_uvicorn(guard_for_serve, monkeypatch) -> None:
    from oodguard.serve import ServeConfig, serve

    monkeypatch.setattr(uvicorn, "__version__", "0.99.0")
    announced: list[str] = []
    with pytest.raises(MissingDependencyError, match="uvicorn 0.99.0 is installed"):
        serve(guard_for_serve, ServeConfig(port=0), announce=announced.append)
    assert announced == []  # refused before binding or announcing anything


@pytest.fixture
def guard_for_serve(bundle):  # type: ignore[no-untyped-def]
    from oodguard import Guard

    return Guard.load(bundle, registry=None)
