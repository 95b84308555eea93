"""Optional dependencies: import the module behind a feature that needs a pip extra, or say in
one line which extra to install (:class:`~oodguard.errors.MissingDependencyError`, which the
command line prints without a traceback, exit 2)."""

from __future__ import annotations

import importlib
import re
from typing import Any

from oodguard.errors import MissingDependencyError

__all__ = ["INSTALL_HINT", "optional", "release", "require_version"]

# oodguard is installed from its repository (it is not on a public package index).
INSTALL_HINT = "from a checkout of the repository: pip install -e '.[{extra}]'"


def optional(module: str, what: str, extra: str) -> Any:
    """``importlib.import_module(module)``, or a MissingDependencyError saying that ``what``
    needs the pip extra ``extra`` (comma-separated extras: the first is named) and how to
    install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        first = extra.split(",")[0]
        raise MissingDependencyError(
            f"{what} needs the {first} extra: pip install 'oodguard[{extra}]' ("
            + INSTALL_HINT.format(extra=extra) + f"); {err}"
        ) from err


def release(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string (``"0.54.1"`` ▶ ``(0, 54)``)."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def require_version(library: str, version: str,
                    supported: tuple[tuple[int, int], tuple[int, int]], *, user: str,
                    why: str, extra: str) -> str:
    """``version`` when its ``(major, minor)`` lies in ``supported`` = ``[from, to)``, else a
    MissingDependencyError naming the range, why ``user`` depends on it and what to install.
    The adapters that touch a library's internals check their library through this."""
    low, high = supported
    if not low <= release(version) < high:
        raise MissingDependencyError(
            f"{user} supports {library} >={low[0]}.{low[1]},<{high[0]}.{high[1]} ({why}); "
            f"{library} {version} is installed. Install a supported one: "
            f"pip install 'oodguard[{extra}]'")
    return version
