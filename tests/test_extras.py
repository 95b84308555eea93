"""pyproject.toml's extras: every third-party requirement has an upper bound, and the bounds
of the libraries whose internals oodguard touches equal what their adapter module supports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
EXTRAS: dict[str, list[str]] = tomllib.loads((ROOT / "pyproject.toml").read_text())[
    "project"]["optional-dependencies"]


def requirements() -> list[str]:
    return [r for reqs in EXTRAS.values() for r in reqs if not r.startswith("oodguard")]


def bounds(name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (lowest, first excluded) (major, minor) of a requirement in the extras."""
    for req in requirements():
        m = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?>=(\d+)\.(\d+),<(\d+)\.(\d+)", req)
        if m:
            lo_major, lo_minor, hi_major, hi_minor = map(int, m.groups()[1:])
            return (lo_major, lo_minor), (hi_major, hi_minor)
    raise AssertionError(f"no '{name}>=X.Y,<X.Y' requirement in the extras")


@pytest.mark.parametrize("req", requirements())
def test_every_extra_requirement_has_an_upper_bound(req: str) -> None:
    assert re.search(r",<\d", req), f"{req!r} has no upper bound"


def test_the_serve_extra_pins_the_uvicorn_range_its_adapter_supports() -> None:
    from oodguard.serve import uvicorn_adapter

    assert bounds("uvicorn") == uvicorn_adapter.SUPPORTED


def test_the_ray_extra_pins_the_ray_range_its_adapter_supports() -> None:
    pytest.importorskip("ray")
    from oodguard.integrations.ray import ray_adapter

    assert bounds("ray") == ray_adapter.SUPPORTED
