"""The one module that uses Ray's internals, for the supported range :data:`SUPPORTED` only.

Ray Data has no public way to give one dataset its own ``DataContext``: a dataset runs under
the context captured when its source was made, shared along the chain, so setting the current
context later has no effect, and changing the shared one would change the caller's other
datasets too. :func:`with_own_context` assigns the private ``Dataset._context``, which the
executor reads at run time (verified on the Ray releases in :data:`SUPPORTED`).
:func:`check_version` refuses a Ray outside that range with a message that says what to
install: a silent change there would lose the row order of ``collect_features`` and
``calibrate_dataset``. The ``ray`` extra pins the same range; ``tests/test_ray.py`` checks the
installed Ray is inside it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from oodguard.extras import require_version

__all__ = ["SUPPORTED", "check_version", "with_own_context"]

#: the Ray releases this module supports: (lowest, first unsupported), as (major, minor)
SUPPORTED = ((2, 40), (2, 61))


def check_version(version: str | None = None) -> str:
    """The installed Ray's version (or ``version``), if :data:`SUPPORTED`.

    Raises
    ------
    MissingDependencyError
        Ray's version is outside the supported range.
    """
    if version is None:
        import ray

        version = ray.__version__
    return require_version("Ray", version, SUPPORTED, user="oodguard.integrations.ray",
                           why="it sets a dataset's own DataContext through Ray Data internals",
                           extra="ray")


def with_own_context(ds: Any, change: Callable[[Any], None]) -> Any:
    """``ds`` running under its own copy of its ``DataContext``, changed by ``change``; the
    contexts of the datasets it was made from (and the caller's others) stay as they were."""
    check_version()
    ctx = copy.deepcopy(ds.context)
    change(ctx)
    ds._context = ctx  # no public setter; read by the executor at run time
    return ds
