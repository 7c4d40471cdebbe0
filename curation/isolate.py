"""Run decoding in a child process, so a decoder crash or hang costs one video, not the job.

FFmpeg can segfault on hostile files (PyAV-Org/PyAV#2345); no try/except catches that. The child
is forked from a forkserver that has already imported the heavy modules, so a fork costs
milliseconds, and it works the same in a unit test, a process pool or a Ray worker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

_PRELOAD = ["curation.pipeline"]
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


def _child(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # report everything; the parent decides
        conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc(limit=5)))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., Any], *args: Any, timeout: float = 1800.0) -> Any:
    """fn(*args) in a fresh child; raises IsolatedError on exception, crash, or timeout."""
    if os.environ.get("VJP_NO_ISOLATION") == "1":  # debugging with a plain stack
        return fn(*args)
    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            proc.kill()
            proc.join()
            raise IsolatedError(f"decoding timed out after {timeout:.0f} s")
        try:
            msg = parent.recv()
        except EOFError:
            proc.join()
            code = proc.exitcode
            if code is not None and code < 0:
                name = signal.Signals(-code).name
                raise IsolatedError(f"decoder crashed ({name})") from None
            raise IsolatedError(f"decoder process exited with code {code}") from None
    finally:
        parent.close()
    proc.join()
    if msg[0] == "ok":
        return msg[1]
    raise IsolatedError(msg[1])
