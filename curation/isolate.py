"""Run decoding in a child process, so a decoder crash or hang costs one video, not the job.

FFmpeg can segfault on hostile files (PyAV-Org/PyAV#2345); no try/except catches that. Each
caller (a thread of the local runner, a Ray worker) borrows a long-lived child from a small pool
and sends it one call at a time over a pipe: no process start per video. A child that crashes,
is killed (OOM killer, SIGKILL) or hangs past the timeout costs the call it was running, which
raises `IsolatedError` with the reason; the next call gets a fresh child. Children are forked from
a forkserver that has already imported the heavy modules, and a child is replaced after
`MAX_CALLS` calls to bound leaks in native libraries.

A child's results must not depend on what it ran before (a resumed run must equal an
uninterrupted one bit for bit): `_pin_child_state` fixes, before the first call, the process-wide
settings known to change float results (thread pools), and tests/test_reused_child.py checks that
a real video scores bit-identically in a fresh child and after other real videos in a reused one.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import resource
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

_PRELOAD = ["curation.pipeline"]
# Calls a child serves before it is replaced. A fresh child cost 30-90 ms of CPU forked from a plain
# process and ~0.4 s in a Ray worker (fork, copy-on-write faults, first-call setup of codecs and
# OpenCV), against a few ms per video in a reused one; 256 calls bound slow leaks in native code.
# VJP_ISOLATE_MAX_CALLS=1 restores a fresh child per call.
MAX_CALLS = 256
_ctx: Any = None


class IsolatedError(Exception):
    """The child failed; the message is what the manifest records."""


def _context() -> Any:
    global _ctx
    if _ctx is None:
        # One video per core is the parallelism; BLAS and OpenMP pools inside a worker only add
        # spin-waiting threads (OpenBLAS's burned more CPU than the whole analysis). The
        # forkserver inherits this environment when it starts.
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        _ctx = mp.get_context("forkserver")
        _ctx.set_forkserver_preload(_PRELOAD)
    return _ctx


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _pin_child_state() -> None:
    """Process-wide settings that every call of this child sees, fixed before the first one.

    One video per core is the parallelism, so OpenCV's pool gets one thread: its parallel loops
    then run in one fixed order, and a call cannot inherit a pool size some earlier call (or a
    library it loaded) chose. The thread variables for BLAS/OpenMP are set before the forkserver
    starts (`_context`).
    """
    cv2 = sys.modules.get("cv2")  # preloaded with curation.pipeline; never imported just for this
    if cv2 is not None:
        cv2.setNumThreads(1)


def _serve(conn: Connection) -> None:
    """The child's loop: one (fn, args) at a time until the parent closes the pipe or dies."""
    # Ctrl-C reaches the whole process group: the parent decides, the child finishes or is killed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _pin_child_state()
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        t = _cpu_self()
        try:
            msg: tuple[Any, ...] = ("ok", fn(*args))
        except BaseException as e:  # report everything; the parent decides
            msg = ("error", f"{type(e).__name__}: {e}", traceback.format_exc(limit=5))
        try:
            conn.send((*msg[:2], _cpu_self() - t))
        except Exception as e:  # e.g. a result that does not pickle: still one call's error
            conn.send(("error", f"result not sendable: {type(e).__name__}: {e}", _cpu_self() - t))


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = ", killed: out of memory?" if name == "SIGKILL" else ""
        return f"decoder crashed ({name}{hint})"
    return f"decoder process exited with code {code}"


class Worker:
    """One long-lived child; `call` runs fn(*args) there and returns its result."""

    def __init__(self, max_calls: int | None = None) -> None:
        # VJP_ISOLATE_MAX_CALLS=N: a child serves N calls before it is replaced (default MAX_CALLS).
        self.max_calls = max_calls or int(os.environ.get("VJP_ISOLATE_MAX_CALLS") or MAX_CALLS)
        self.calls = 0  # calls served by the current child
        self.started = 0  # children started over this worker's life (1 + replacements)
        self.child_cpu_s = 0.0  # CPU seconds the children spent inside calls (for benchmarks)
        self._proc: Any = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> Connection:
        ctx = _context()
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn, self.calls = proc, parent, 0
        self.started += 1
        return parent

    def _reap(self, kill: bool) -> int | None:
        """Stop the current child (kill, or wait for it to exit) and return its exit code."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()  # a healthy child sees EOF and exits
        if proc is None:
            return None
        if kill:
            proc.kill()
        proc.join(5.0)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        return proc.exitcode

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
        conn = self._conn
        if conn is None or not self._proc.is_alive():
            if conn is not None:
                self._reap(kill=True)
            conn = self._start()
        try:
            conn.send((fn, args))  # an argument that does not pickle is the caller's bug: raise it
        except (BrokenPipeError, ConnectionResetError):  # died since its last call: replace it
            self._reap(kill=True)
            conn = self._start()
            conn.send((fn, args))
        if not conn.poll(timeout):
            self._reap(kill=True)
            raise IsolatedError(f"decoding timed out after {timeout:.0f} s")
        try:
            status, payload, cpu = conn.recv()
        except (EOFError, OSError):
            # The child died mid-call. It may not have exited yet when EOF arrives: wait for it.
            raise IsolatedError(_death(self._reap(kill=False))) from None
        self.child_cpu_s += cpu
        self.calls += 1
        if self.calls >= self.max_calls:
            self._reap(kill=False)
        if status == "ok":
            return payload
        raise IsolatedError(payload)

    def close(self) -> None:
        self._reap(kill=False)


class _Pool:
    """Idle workers shared by every thread of this process: a caller borrows one per call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[Worker] = []
        self.all: list[Worker] = []

    def acquire(self) -> Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            w = Worker()
            self.all.append(w)
            return w

    def release(self, w: Worker) -> None:
        with self._lock:
            self._idle.append(w)

    def close(self) -> None:
        with self._lock:
            workers, self._idle, self.all = self.all, [], []
        for w in workers:
            w.close()


_pool = _Pool()
atexit.register(_pool.close)


def run_isolated(fn: Callable[..., Any], *args: Any, timeout: float = 1800.0) -> Any:
    """fn(*args) in a long-lived child; raises IsolatedError on exception, crash, or timeout."""
    if os.environ.get("VJP_NO_ISOLATION") == "1":  # debugging with a plain stack
        return fn(*args)
    w = _pool.acquire()
    try:
        return w.call(fn, args, timeout)
    finally:
        _pool.release(w)


def child_cpu_seconds() -> float:
    """CPU seconds this process's children spent inside calls (benchmarks subtract or add it)."""
    return sum(w.child_cpu_s for w in _pool.all)


def shutdown() -> None:
    """Stop every idle child of this process (tests, benchmarks; also done at exit)."""
    _pool.close()
