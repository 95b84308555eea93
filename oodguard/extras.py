"""Optional dependencies: import the module behind a feature that needs a pip extra, or say in
one line which extra to install (:class:`~oodguard.errors.MissingDependencyError`, which the
command line prints without a traceback, exit 2)."""

from __future__ import annotations

import importlib
from typing import Any

from oodguard.errors import MissingDependencyError

__all__ = ["INSTALL_HINT", "optional"]

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
