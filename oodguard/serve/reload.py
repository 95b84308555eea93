"""Recalibration without a restart: the served guard swapped atomically between batches.

:class:`LiveGuard` stands where the service expects a guard; every guard call reads its current
guard once (one attribute read, atomic under the GIL) and runs wholly on it, so a coalesced
batch — and so every request in it — is scored by exactly one calibration, and no request is
dropped: requests queued during a swap are served by whichever guard is current when their
batch runs. :class:`BundleWatcher` loads the new guard off the serving threads when the bundle
changes (its ``manifest.json``, which holds every file's sha256, is polled) or on demand
(``oodguard serve`` calls :meth:`BundleWatcher.request` on SIGHUP), then swaps it in:
``oodguard_bundle_info`` shows the new hashes (the old series is removed), and the drift monitor
starts again (a new test; its alarm count carries over). A bundle that fails to load, or whose
input differs from the served one, is logged and the current guard keeps serving.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oodguard.bundle import MANIFEST_FILE
from oodguard.guard import Guard
from oodguard.results import CheckResult

__all__ = ["BundleWatcher", "LiveGuard"]

log = logging.getLogger(__name__)


class LiveGuard:
    """A guard that can be replaced while it serves; reads are forwarded to the current one."""

    def __init__(self, guard: Guard) -> None:
        self.current = guard
        self.swaps = 0
        self._lock = threading.Lock()  # one swap at a time; checks never take it

    def check(self, x: Any, **kw: Any) -> CheckResult:
        return self.current.check(x, **kw)  # one read: the whole batch on one guard

    def swap(self, new: Guard, *, close_after_s: float = 30.0) -> Guard:
        """Serve ``new`` from the next batch on; returns the old guard, closed after
        ``close_after_s`` (batches already running on it finish first)."""
        if new.input_spec != self.current.input_spec:
            raise ValueError(f"the new bundle's input {new.input_spec} differs from the served "
                             f"one {self.current.input_spec}; restart the server to change it")
        with self._lock:
            old = self.current
            if old.drift is not None and new.drift is not None:
                new.drift.alarms = old.drift.alarms  # a counter never goes back
            self.current = new
            self.swaps += 1
        if old.metrics is not None:
            old.metrics.retire_info()
        if new.metrics is not None:
            new.metrics.publish_info()  # in case the old one shared its labels
        timer = threading.Timer(close_after_s, old.close)
        timer.daemon = True
        timer.start()
        return old

    def __getattr__(self, name: str) -> Any:  # name, input_spec, metrics, drift, …
        return getattr(self.current, name)


def manifest_digest(path: str | os.PathLike[str]) -> str | None:
    """sha256 of the bundle's ``manifest.json`` (which holds every file's hash); None when it
    cannot be read (a bundle being replaced)."""
    try:
        return hashlib.sha256((Path(path) / MANIFEST_FILE).read_bytes()).hexdigest()
    except OSError:
        return None


class BundleWatcher:
    """Reloads ``live`` from ``path`` when the bundle changes or :meth:`request` is called.

    Parameters
    ----------
    live : the served guard
    path : the bundle directory (a symlink to it may be swapped)
    load : builds a guard from the bundle path with the server's settings
    poll_s : seconds between checks of the manifest's hash (None: only on request)
    """

    def __init__(self, live: LiveGuard, path: str | os.PathLike[str],
                 load: Callable[[Path], Guard], *, poll_s: float | None = 2.0) -> None:
        self.live, self.path, self.load, self.poll_s = live, Path(path), load, poll_s
        self.digest = manifest_digest(self.path)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="oodguard-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request(self) -> None:
        """Reload now (safe from a signal handler: it only sets an event)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            forced = self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.reload_if_changed(force=forced)

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Load and swap in the bundle if its manifest changed (or ``force``); True if
        swapped."""
        digest = manifest_digest(self.path)
        if digest is None or (digest == self.digest and not force):
            return False
        try:
            new = self.load(self.path)
            self.live.swap(new)
        except Exception:  # noqa: BLE001 - any failure leaves the current guard serving
            log.exception("reloading the bundle at %s failed; the current guard keeps serving",
                          self.path)
            self.digest = digest  # do not retry the same broken bundle every poll
            return False
        self.digest = digest
        log.info("reloaded the bundle at %s (manifest sha256 %s…)", self.path, digest[:12])
        return True
