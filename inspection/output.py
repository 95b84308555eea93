"""Writing an inspection's files all at once: ``oodguard inspect`` leaves either every file it
was asked for or none of them (a failure half-way must not leave a report without its pictures,
or a stale one beside new ones)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_all_or_nothing"]


def write_all_or_nothing(out: str | os.PathLike[str],
                         write: Callable[[Path], list[Path]]) -> list[Path]:
    """Call ``write(staging)`` on a fresh folder beside ``out``; when it returns, move the files
    it wrote into ``out`` (created if needed; files of the same names replaced) and return
    their new paths. When it raises, the staging folder is removed and ``out`` is untouched.
    """
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        written = write(staging)
        target.mkdir(exist_ok=True)
        moved = []
        for path in written:
            dest = target / Path(path).name
            os.replace(path, dest)
            moved.append(dest)
        return moved
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # ours alone: made above
