"""The engine: one ONNX Runtime session over the fused trajectory graph.

ONNX Runtime itself is imported by :mod:`oodguard.engine.providers` alone. The graph maps a batch
``x [N, *input_shape]`` (float32) to ``features [N, F]`` in a single ``session.run``: the ``T``
latent steps, the attractor bank and every feature live inside it.

On the CPU each run is single-threaded and large batches are cut into chunks run concurrently
by a few threads (measured faster than ONNX Runtime's per-operator threading on this graph's
chain of small matrix products; see ``docs/performance.md``). With CUDA the input crosses to the
device once per call (I/O binding) and a fixed batch size may be replayed as a CUDA graph.

Determinism: a row's features do not depend on the batch it arrives in, how the batch is cut
into chunks, or which thread runs a chunk. The graph has one path for every batch size (see
:mod:`oodguard.export.rewrite`), and ONNX Runtime's CPU kernels, run on one intra-op thread,
compute each row of this graph with the same instructions whatever the number of rows: measured
bit-identical at batch 1, 7, 40, 256 and 5 000 (demo model, T = 32), checked by
``tests/test_determinism.py``. With ``intra_op_threads > 1`` that no longer holds (11 of 1 000
demo rows changed bits at batch 256 with 2 intra-op threads), nor for kernels that round a
tensor's tail differently (ONNX Runtime's Eigen ``Elu`` and ``Log``; the exporter avoids them).
Each CPU engine probes its graph at load (5 synthetic rows alone against a batch of 67) and
warns, with ``batch_invariant = False``, when the bits differ. Bundles
exported before that (their graph switches ``Elu`` forms on the batch size) still load, with a
warning: their scores may change in the last bits with the batch size. Denormal numbers are
flushed to zero (``session.set_denormal_as_zero``), so trajectories whose step differences
reach the denormal range do not slow down.

Fork safety: a child process created by ``os.fork()`` drops the batch thread pool it inherited
(its threads do not exist in the child) and starts a new one on its next split batch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from oodguard.bundle.manifest import Manifest
from oodguard.engine.cuda_graph import CudaGraph
from oodguard.engine.providers import available_providers, ort_module, resolve_providers
from oodguard.errors import BundleError, GuardFailure, check_parameter

__all__ = ["DENORMAL_AS_ZERO_KEY", "Engine", "available_providers", "check_features",
           "resolve_providers"]

log = logging.getLogger(__name__)

# Working memory the graph's intermediates may take for all chunks in flight; batches that
# would exceed it are cut into chunks so that memory stays bounded whatever the caller sends.
_CHUNK_BUDGET_BYTES = 256 << 20
# A batch is split over threads when it is expected to take at least _PARALLEL_MIN_SECONDS
# single-threaded: below that, waking a thread costs more than it saves. It goes to as many
# threads (the caller included, at most batch_threads) as give each at least
# _MIN_THREAD_SECONDS of work and _MIN_CHUNK_ROWS rows; each thread takes one chunk, or up to
# _MAX_CHUNKS_PER_THREAD chunks of at least _CHUNK_SECONDS for large batches (balance when
# other work holds a core). Every session.run has a fixed cost (~70 µs for the demo graph),
# so fewer, larger chunks win otherwise. Measured on 2 cores against the earlier rule (split
# at >= 4 ms into chunks of >= 1 ms, up to 4 per thread; demo graph, T = 32): 128 rows 0.505 vs
# 0.613 ms, 256 rows 0.732 vs 1.082, 512 rows 1.225 vs 2.031, 1024 rows 2.182 vs 2.595, 4096
# rows equal. (On this shared VM a split ~1 ms batch sometimes runs at the unsplit speed.)
# The expectation comes from the engine's own single-threaded calls (seconds per row), so
# the rule fits a 64-input autoencoder and a 784-input one alike without knowing their FLOPs.
_PARALLEL_MIN_SECONDS = 0.6e-3
_MIN_THREAD_SECONDS = 0.3e-3
_CHUNK_SECONDS = 2e-3
_MAX_CHUNKS_PER_THREAD = 4
_MIN_CHUNK_ROWS = 16
_POOL_LOCK = threading.Lock()
# ONNX Runtime's session config key: flush denormal floats to zero. ONNX Runtime applies it
# once per process, to the thread that creates the first session (and to threads created from
# it afterwards, which inherit the floating-point mode), and to a session's own intra-op pool.
DENORMAL_AS_ZERO_KEY = "session.set_denormal_as_zero"
# Marker of bundles exported with the former If-on-batch-size graph (not batch invariant).
_LEGACY_SWITCH = b"_switch_min_rows"
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
# The load-time probe: rows scored alone against their bits in one batch.
_PROBE_ROWS = 67
_PROBE_ALONE = 5


def _after_fork_in_child() -> None:
    """Forget thread pools and locks inherited through ``fork()``: their threads do not exist
    in the child, and a lock held by one of them at fork time would never be released."""
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()
    for engine in list(_ENGINES):
        engine._pool = None
        if engine._graph is not None:
            engine._graph._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Engine:
    """Runs the fused trajectory graph of a bundle.

    Parameters
    ----------
    model : bytes
        The serialized ONNX model.
    manifest : Manifest
        The bundle's manifest; the session's signature is checked against it.
    providers : "auto", "cpu", "cuda" or list of str
        Execution providers (see :func:`resolve_providers`).
    intra_op_threads, inter_op_threads : int, optional
        ONNX Runtime thread pool sizes (>= 1). ``intra_op_threads`` defaults to 1: the
        trajectory graph is a long chain of small matrix products, and splitting each one over
        threads cost more than it gained (see ``docs/performance.md``); large batches are
        parallelised by ``batch_threads`` instead.
    batch_threads : int, optional
        Threads that run chunks of one batch concurrently, the calling thread included, each
        chunk a ``session.run`` (a batch is split once the engine's own timings say it takes
        >= 0.6 ms on one thread, over as many threads as get >= 0.3 ms of it each).
        Default: the CPU count divided by ``intra_op_threads`` (1 on a GPU). On a machine
        shared with the host model, give the guard fewer threads.
    max_batch : int, optional
        Largest batch sent to one ``session.run``; larger batches are cut into chunks whose
        features are written straight into one output array, so the graph's working memory is
        that of the chunks in flight. ``None`` derives it from the graph size (about 256 MiB
        of intermediates for all chunks in flight together).
    spinning : bool, optional
        Whether idle intra-op threads spin (``None``: ONNX Runtime's default, spinning). Turn
        it off where the guard shares cores with other busy processes.
    io_binding : bool, optional
        Bind the input and a preallocated output buffer (``run_with_iobinding``), so features
        are written into the array returned (and, chunked, into its rows) without an extra
        copy, and on a GPU the input crosses to the device once per call. ``None``: on for
        CUDA, off for CPU (measured no faster there).
    cuda_graph_batch : int, optional
        With CUDA, capture the graph for this exact batch size as a CUDA graph (one replay per
        call instead of one launch per kernel); calls of that size use it, other sizes the
        ordinary session. Needs every node on the GPU.

    Thread safety: :meth:`run` may be called from many threads at once (ONNX Runtime sessions
    are thread-safe for ``run``; the CUDA-graph path holds a lock around its fixed buffers).
    """

    def __init__(
        self,
        model: bytes,
        manifest: Manifest,
        *,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        batch_threads: int | None = None,
        max_batch: int | None = None,
        spinning: bool | None = None,
        io_binding: bool | None = None,
        cuda_graph_batch: int | None = None,
    ) -> None:
        ort = ort_module()
        self.manifest = manifest
        for key, value in (("intra_op_threads", intra_op_threads),
                           ("inter_op_threads", inter_op_threads),
                           ("batch_threads", batch_threads),
                           ("max_batch", max_batch), ("cuda_graph_batch", cuda_graph_batch)):
            check_parameter(value is None or (not isinstance(value, bool)
                                              and isinstance(value, (int, np.integer))
                                              and value >= 1),
                            key, "a positive int or None", value, owner="Engine")
        self.session_options = opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(intra_op_threads or 1)
        if inter_op_threads is not None:
            opts.inter_op_num_threads = int(inter_op_threads)
        if spinning is not None:
            flag = "1" if spinning else "0"
            opts.add_session_config_entry("session.intra_op.allow_spinning", flag)
            opts.add_session_config_entry("session.inter_op.allow_spinning", flag)
        opts.log_severity_level = 3
        opts.add_session_config_entry(DENORMAL_AS_ZERO_KEY, "1")
        chosen = resolve_providers(providers)
        self._session = self._make_session(ort, model, chosen)
        self._check_signature()
        legacy = _LEGACY_SWITCH in model
        self.batch_invariant = not legacy and opts.intra_op_num_threads == 1
        if self.batch_invariant and self._session.get_providers() == ["CPUExecutionProvider"]:
            self.batch_invariant = self._probe_batch_invariance()
            if not self.batch_invariant:
                log.warning(
                    "model.onnx gives a row different bits alone and in a batch (probed at load "
                    "on synthetic rows): its scores may change in their last bits with the batch. "
                    "Some ONNX Runtime CPU kernels (Elu, Log) round a tensor's tail differently; "
                    "re-export with this oodguard (it avoids them) or with rewrite_elu=True"
                )
        if legacy:
            log.warning(
                "model.onnx switches Elu forms on the batch size (exported by an older oodguard): "
                "a row's score may change in its last bits with the batch it arrives in. "
                "Re-export the bundle for batch-invariant scores"
            )
        elif opts.intra_op_num_threads > 1:
            log.warning(
                "intra_op_threads=%d: ONNX Runtime splits some kernels over threads by the batch "
                "size, so a row's score may change in its last bits with its batch; use "
                "intra_op_threads=1 (the default) and batch_threads for batch-invariant scores",
                opts.intra_op_num_threads,
            )
        self.providers: list[str] = list(self._session.get_providers())
        on_cuda = self.providers[0] == "CUDAExecutionProvider"
        self.io_binding = on_cuda if io_binding is None else bool(io_binding)
        self._n_features = len(manifest.feature_names)
        if on_cuda:
            self.batch_threads = 1
        else:
            default = max(1, _usable_cores() // int(intra_op_threads or 1))
            self.batch_threads = int(batch_threads or default)
        per_sample = _bytes_per_sample(manifest) * self.batch_threads
        self.max_batch = int(max_batch) if max_batch else max(1, _CHUNK_BUDGET_BYTES // per_sample)
        self._pool: ThreadPoolExecutor | None = None
        self._row_seconds = 0.0  # running estimate from single-threaded calls; 0 = unknown
        self._graph: CudaGraph | None = None
        if cuda_graph_batch is not None:
            check_parameter(on_cuda, "cuda_graph_batch",
                            "None unless the engine runs on the CUDA execution provider",
                            cuda_graph_batch, owner="Engine",
                            fix=f"This engine runs on {self.providers}.")
            check_parameter(cuda_graph_batch <= self.max_batch, "cuda_graph_batch",
                            f"at most max_batch={self.max_batch}", cuda_graph_batch,
                            owner="Engine")
            self._graph = CudaGraph(ort, self, model, chosen, int(cuda_graph_batch))
        _ENGINES.add(self)
        log.debug("engine ready: providers=%s max_batch=%d batch_threads=%d io_binding=%s",
                  self.providers, self.max_batch, self.batch_threads, self.io_binding)

    def _probe_batch_invariance(self) -> bool:
        """Whether a few synthetic rows get the same bits alone as in a batch of 67 (a prime
        above the former If's 32/64-row switch, so that tails differ). About 6 runs at load."""
        m = self.manifest
        x = np.random.default_rng(0).uniform(0, 1, size=(_PROBE_ROWS, *m.input.shape))
        x = x.astype(np.float32)
        feeds = m.input.name
        whole = self._session.run(None, {feeds: x})[0]
        for i in range(_PROBE_ALONE):
            alone = self._session.run(None, {feeds: x[i : i + 1]})[0]
            if alone.tobytes() != whole[i : i + 1].tobytes():
                return False
        return True

    def _make_session(self, ort: Any, model: bytes, providers: Sequence[Any]) -> Any:
        try:
            return ort.InferenceSession(model, sess_options=self.session_options,
                                        providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise BundleError(
                f"ONNX Runtime could not load model.onnx ({type(err).__name__}: {err}); "
                "the file is not a valid model for this onnxruntime — re-export the bundle"
            ) from err

    def _check_signature(self) -> None:
        m = self.manifest
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        expect_in = f"one input {m.input.name!r} float32 [N, {', '.join(map(str, m.input.shape))}]"
        if len(inputs) != 1 or inputs[0].name != m.input.name or inputs[0].type != "tensor(float)":
            got = [(i.name, i.type, i.shape) for i in inputs]
            raise BundleError(f"model.onnx signature mismatch: expected {expect_in}, got {got}")
        if [d if isinstance(d, int) else None for d in inputs[0].shape[1:]] != list(m.input.shape):
            raise BundleError(
                f"model.onnx input shape {inputs[0].shape} does not match the manifest's "
                f"{list(m.input.shape)}; the manifest belongs to another model — re-export"
            )
        f = len(m.feature_names)
        width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
        if len(outputs) != 1 or outputs[0].name != m.output_name or (
            isinstance(width, int) and width != f
        ):
            got_out = [(o.name, o.shape) for o in outputs]
            raise BundleError(
                f"model.onnx outputs {got_out} do not match the manifest's {m.output_name!r} "
                f"with {f} features; re-export the bundle"
            )

    def run(self, x: np.ndarray, *, run_options: Any = None) -> np.ndarray:
        """Features for a validated batch.

        Parameters
        ----------
        x : ndarray of float32, shape (N, *input_shape), C-contiguous, N >= 1
        run_options : onnxruntime.RunOptions, optional
            Passed to every ``session.run`` of the call; setting its ``terminate`` flag from
            another thread stops the call's runs at their next node (see
            :meth:`new_run_options`).

        Returns
        -------
        ndarray of float32, shape (N, F)

        Raises
        ------
        GuardFailure
            A run returned features of the wrong shape or dtype (``reason="output_shape"`` or
            ``"output_dtype"``). Errors of ONNX Runtime itself propagate unchanged.
        """
        n = len(x)
        if self._graph is not None and n == self._graph.batch:
            return check_features(self._graph.run(x), n, self._n_features)
        workers = self._workers_for(n)
        if workers == 1 and n <= self.max_batch:
            return self._run_timed(x, None, run_options)
        chunk = self.max_batch
        if workers > 1:
            per_thread = int(n * self._row_seconds / (workers * _CHUNK_SECONDS))
            chunks = workers * min(_MAX_CHUNKS_PER_THREAD, max(1, per_thread))
            chunk = min(self.max_batch, -(-n // chunks))
            workers = min(workers, -(-n // chunk))
        out = np.empty((n, self._n_features), dtype=np.float32)
        starts = range(0, n, chunk)
        if workers == 1 or len(starts) == 1:
            for i in starts:
                self._run_timed(x[i : i + chunk], out[i : i + chunk], run_options)
            return out
        if self._pool is None:
            with _POOL_LOCK:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.batch_threads - 1,
                                                    thread_name_prefix="oodguard")
        # The calling thread takes chunks too, next to workers - 1 pool threads: one thread
        # fewer to wake per call.
        pending = iter(starts)
        take = threading.Lock()

        def drain() -> None:
            while True:
                with take:
                    i = next(pending, None)
                if i is None:
                    return
                self._run_timed(x[i : i + chunk], out[i : i + chunk], run_options)

        helpers = [self._pool.submit(drain) for _ in range(workers - 1)]
        try:
            drain()
        finally:  # never return (or raise) while a helper may still write into `out`
            wait(helpers)
        for h in helpers:
            h.result()  # re-raise a helper's error
        return out

    def new_run_options(self) -> Any:
        """A fresh ``onnxruntime.RunOptions`` for :meth:`run` (one per call: its ``terminate``
        flag, once set, stops every run that uses it)."""
        return ort_module().RunOptions()

    def _run_timed(self, x: np.ndarray, out: np.ndarray | None,
                   run_options: Any = None) -> np.ndarray:
        """A single-threaded run (alone, or one chunk of a split batch) that also updates the
        seconds-per-row estimate. Chunks of split batches update it too, so that it keeps
        following the machine once every batch is split (the first, cold call alone measured
        twice the warm per-row time). Concurrent updates may lose one: it is an estimate."""
        t0 = time.perf_counter()
        out = self._run_chunk(x, out, run_options)
        if len(x) >= _MIN_CHUNK_ROWS:
            per_row = (time.perf_counter() - t0) / len(x)
            old = self._row_seconds
            self._row_seconds = per_row if old == 0.0 else 0.8 * old + 0.2 * per_row
        return out

    def _workers_for(self, n: int) -> int:
        """Threads (the caller included) for a batch of ``n`` rows; 1 = run it unsplit."""
        expected = n * self._row_seconds
        if self.batch_threads == 1 or expected < _PARALLEL_MIN_SECONDS:  # 0 = no estimate yet
            return 1
        useful = min(int(expected / _MIN_THREAD_SECONDS), n // _MIN_CHUNK_ROWS)
        return max(1, min(self.batch_threads, useful))

    def close(self) -> None:
        """Stop the batch threads (if any were started); the engine stays usable."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _run_chunk(self, x: np.ndarray, out: np.ndarray | None,
                   run_options: Any = None) -> np.ndarray:
        name, out_name = self.manifest.input.name, self.manifest.output_name
        if not self.io_binding:
            # Checked before it is copied: numpy would broadcast a single row over ``out``.
            features = check_features(self._session.run(None, {name: x}, run_options)[0],
                                      len(x), self._n_features)
            if out is None:
                return features
            out[...] = features
            return out
        if out is None:
            out = np.empty((len(x), self._n_features), dtype=np.float32)
        binding = self._session.io_binding()
        binding.bind_cpu_input(name, x)
        binding.bind_output(out_name, "cpu", 0, np.float32, out.shape, out.ctypes.data)
        self._session.run_with_iobinding(binding, run_options)
        return out


def check_features(features: Any, n: int, n_features: int) -> np.ndarray:
    """``features`` if it is a float32 array of shape ``(n, n_features)``, else a
    :class:`GuardFailure` that says what came (``reason`` ``"output_shape"``/``"output_dtype"``).
    """
    shape = getattr(features, "shape", None)
    if not isinstance(features, np.ndarray) or shape != (n, n_features):
        raise GuardFailure(
            f"the engine returned {type(features).__name__} of shape {shape} for {n} input "
            f"rows; expected float32 features of shape ({n}, {n_features}). The model.onnx "
            "does not compute one feature row per input — re-export the bundle",
            reason="output_shape",
        )
    if features.dtype != np.float32:
        raise GuardFailure(
            f"the engine returned features of dtype {features.dtype}; expected float32 — "
            "re-export the bundle",
            reason="output_dtype",
        )
    return features


def _usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _bytes_per_sample(m: Manifest) -> int:
    """Working memory of one sample in the graph: the trajectory and its differences
    ``(T+1)·d``, the attractor products ``(T+1)·K`` (and their argmin), the input and its
    reconstruction; float32, doubled for the allocator's slack."""
    k = max(m.attractor_count, 1)
    d = max(m.latent_dim, 1)
    return 4 * 2 * ((m.steps + 1) * (2 * k + 4 * d) + 3 * m.input.size)
