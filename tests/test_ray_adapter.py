"""oodguard.integrations.ray.ray_adapter: the one module that uses Ray's internals refuses a
Ray outside the range it supports, the installed one is inside it, and a dataset's own context
leaves the context of the dataset it was made from alone."""

from __future__ import annotations

import pytest
import ray
from _ray_cluster import local_cluster

from oodguard.errors import MissingDependencyError
from oodguard.integrations.ray import ray_adapter


def test_the_installed_ray_is_in_the_supported_range() -> None:
    low, high = ray_adapter.SUPPORTED
    assert ray_adapter.check_version() == ray.__version__
    major, minor = (int(p) for p in ray.__version__.split(".")[:2])
    assert low <= (major, minor) < high


@pytest.mark.parametrize("version", ["2.39.0", "2.61.0", "3.0.0"])
def test_a_ray_outside_the_range_is_refused_with_what_to_install(version: str) -> None:
    with pytest.raises(MissingDependencyError,
                       match=rf"supports Ray >=2\.40,<2\.61 .*Ray {version} is installed\. "
                             r"Install a supported one: pip install 'oodguard\[ray\]'"):
        ray_adapter.check_version(version)


def test_with_own_context_changes_one_dataset_only() -> None:
    """Making a dataset starts Ray when none runs: the test's own cluster, shut down after,
    so that the next module's ``ray.init`` finds none."""
    import ray.data

    with local_cluster():
        _one_dataset_only(ray.data)


def _one_dataset_only(data) -> None:  # type: ignore[no-untyped-def]
    source = data.range(4)
    derived = source.map_batches(lambda b: b)
    was = source.context.execution_options.preserve_order

    def flip(ctx) -> None:  # type: ignore[no-untyped-def]
        ctx.execution_options.preserve_order = not was

    assert ray_adapter.with_own_context(derived, flip) is derived
    assert derived.context.execution_options.preserve_order is (not was)
    assert source.context.execution_options.preserve_order is was
