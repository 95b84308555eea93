"""Filesystem primitives for bundles: bounded reads relative to one directory, atomic swaps.

Two promises rest on this module (see :mod:`oodguard.bundle` for how they are used):

* **Reads come from one directory inode and are bounded.** :func:`open_dir` opens the bundle
  directory once; :func:`read_regular` opens each file *relative to that descriptor* with
  ``O_NOFOLLOW | O_NONBLOCK``, ``fstat``\\ s the opened file, refuses anything but a regular
  file (symbolic links, FIFOs, devices, directories, sockets) and reads at most ``cap + 1``
  bytes. A FIFO cannot block the reader (``O_NONBLOCK`` open, then refused by type), a link to
  ``/dev/zero`` or outside the bundle is never followed, and a file that grows while it is read
  cannot make the reader allocate more than the cap.
* **A directory is replaced in one step.** :func:`exchange` swaps two directory entries with
  Linux ``renameat2(RENAME_EXCHANGE)`` (through ``ctypes``), so the bundle path always names a
  complete directory. Where that call does not exist (other systems, old kernels, file systems
  that refuse it) :func:`exchange` returns ``False`` and the caller falls back to two renames,
  which leave the path missing for a moment (documented in :mod:`oodguard.bundle`).
* **Nothing is deleted that was not accounted for.** :func:`existing_state` refuses a path
  that holds anything but the allowed names; :func:`discard_replaced` removes a replaced
  directory only if it holds exactly the names it is expected to, and otherwise keeps it.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Callable, Set
from pathlib import Path

from oodguard.errors import BundleError, BundleExistsError

__all__ = [
    "FileMissing",
    "discard_replaced",
    "exchange",
    "existing_state",
    "fsync_dir",
    "open_dir",
    "read_regular",
    "rename_noreplace",
    "swap_dirs",
]

log = logging.getLogger("oodguard.bundle")

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_CHUNK = 1 << 24
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_DIR_FD = os.open in os.supports_dir_fd


class FileMissing(Exception):
    """A file named in a bundle directory does not exist (the caller decides what that means)."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


def open_dir(path: Path) -> int:
    """Open the directory ``path`` for reading relative to it; return the descriptor.

    The path itself may be a symbolic link (the user named it); what is inside is not followed.

    Raises
    ------
    BundleError
        ``path`` does not exist, is not a directory or cannot be opened.
    """
    try:
        return os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise BundleError(
            f"bundle {path} is not a directory ({err.strerror}); pass the folder export_bundle "
            "wrote"
        ) from err
    except OSError as err:
        raise BundleError(f"bundle {path} cannot be opened: {err}") from err


def read_regular(dir_fd: int, root: Path, name: str, cap: int) -> bytes:
    """Read the regular file ``name`` inside the directory open as ``dir_fd``, at most ``cap``
    bytes (``root`` is only for messages).

    Raises
    ------
    FileMissing
        There is no entry ``name``.
    BundleError
        The entry is a symbolic link or not a regular file, cannot be opened, or holds more
        than ``cap`` bytes.
    """
    where = root / name
    flags = os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC
    try:
        if _DIR_FD:
            fd = os.open(name, flags, dir_fd=dir_fd)
        else:  # no openat here: check the entry's type first (a small race, documented)
            if stat.S_ISLNK(os.lstat(where).st_mode):
                raise OSError(errno.ELOOP, "symbolic link")
            fd = os.open(where, flags)
    except FileNotFoundError as err:
        raise FileMissing(name) from err
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise BundleError(
                f"{where} is a symbolic link; a bundle holds regular files only (links are not "
                "followed, so nothing outside the bundle is read): replace the link by a copy "
                "of the file, or re-export the bundle"
            ) from err
        raise BundleError(f"{where} cannot be opened: {err}") from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(
                f"{where} is a {_kind(st.st_mode)}, not a regular file; a bundle holds regular "
                "files only: re-export the bundle"
            )
        if st.st_size > cap:
            raise BundleError(
                f"{where} is {st.st_size} bytes, over the {cap}-byte limit for {name}; this is "
                "not a file oodguard wrote: re-export the bundle"
            )
        chunks = []
        left = cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, _CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise BundleError(
                f"{where} grew past the {cap}-byte limit for {name} while it was read; do not "
                "write into a bundle directory, write a new bundle instead"
            )
        return b"".join(chunks)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries to disk (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _renameat2() -> object | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the call or the flag is not supported."""
    fn = _RENAMEAT2
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)  # type: ignore[operator]
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap the directory entries ``a`` and ``b`` (both must exist).

    Returns False, doing nothing, where the system offers no atomic exchange.
    """
    return _rename2(a, b, _RENAME_EXCHANGE)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, raising ``FileExistsError`` if ``dst`` exists.

    Uses ``RENAME_NOREPLACE`` where available; elsewhere a plain rename after an existence
    check (a plain rename would silently replace an empty directory created meanwhile).
    """
    if _rename2(src, dst, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    os.rename(src, dst)


def new_dir(parent: Path, prefix: str) -> Path:
    """A fresh directory under ``parent`` with the permissions of a plain ``mkdir`` (the
    umask's), not ``mkdtemp``'s 0700: a bundle written by one user is served by another (the
    images run as uid 10001 over a mounted bundle)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise BundleError(f"could not create a temporary directory in {parent}")


def swap_dirs(new: Path, root: Path) -> None:
    """Put directory ``new`` at ``root`` and the previous ``root`` at ``new``: one atomic
    exchange, or (where there is none) two renames, undoing the first if the second fails."""
    if exchange(new, root):
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    os.rename(root, aside)  # replaces the empty directory just made
    try:
        os.rename(new, root)
    except BaseException:
        os.rename(aside, root)
        raise
    os.rename(aside, new)


def existing_state(root: Path, allowed: Set[str], what: str) -> str:
    """What is at ``root``: ``"absent"``, ``"empty"`` (an empty directory) or ``"full"`` (a
    directory holding only regular files named in ``allowed``).

    Raises
    ------
    BundleExistsError
        ``root`` is a link, a file, or a directory holding anything else (``what`` names what
        a directory there should be, for the message).
    """
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return "absent"
    how = "choose another path, or move it away yourself"
    if stat.S_ISLNK(st.st_mode):
        raise BundleExistsError(
            f"{root} is a symbolic link; oodguard does not replace links: write to the "
            f"directory it points to, or {how}"
        )
    if not stat.S_ISDIR(st.st_mode):
        kind = "file" if stat.S_ISREG(st.st_mode) else _kind(st.st_mode)
        raise BundleExistsError(
            f"{root} is a {kind}, not a {what} directory; nothing was written: {how}"
        )
    entries = os.listdir(root)
    if not entries:
        return "empty"
    foreign = sorted(
        e for e in entries if e not in allowed or not stat.S_ISREG(os.lstat(root / e).st_mode)
    )
    if foreign:
        raise BundleExistsError(
            f"{root} is a directory that is not a {what}: it holds {foreign[:5]} (a {what} "
            f"holds only {sorted(allowed)}); nothing was written or deleted. Choose another "
            "path, or move those files away yourself"
        )
    return "full"


def discard_replaced(old: Path, target: Path, expected: Callable[[int], Set[str]]) -> bool:
    """Remove the replaced directory ``old`` if it holds exactly ``expected(dir_fd)`` (regular
    files only); otherwise keep it and log where. Returns whether it was removed.

    ``expected`` reads what the directory should hold (e.g. from its manifest); any exception
    it raises keeps the directory.
    """
    keep = ""
    try:
        names = set(os.listdir(old))
        if names:
            dir_fd = open_dir(old)
            try:
                want = set(expected(dir_fd))
                regular = all(
                    stat.S_ISREG(os.stat(n, dir_fd=dir_fd, follow_symlinks=False).st_mode)
                    for n in names
                )
                if names != want or not regular:
                    keep = f"it held {sorted(names)}, but {sorted(want)} were expected"
                else:
                    for n in sorted(names):
                        os.unlink(n, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        if not keep:
            os.rmdir(old)
    except Exception as err:  # noqa: BLE001 - whatever went wrong, keeping is the safe side
        keep = f"it could not be removed safely ({type(err).__name__}: {err})"
    if keep:
        log.warning("the directory replaced at %s was kept at %s: %s; remove it yourself "
                    "once you have checked it", target, old, keep)
        return False
    return True
