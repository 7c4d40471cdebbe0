"""A torchrun rank dies with its launcher.

torch elastic starts every rank in a session of its own, so `kill -9` of torchrun (or of the
`vjp train` process group a scheduler signals) leaves the ranks running: they keep training and
writing checkpoints into the run folder, and a `--resume` started afterwards races with them. A
rank therefore watches its parent and SIGKILLs itself once it has been re-parented, which is what
a user killing the launcher expects. DataLoader workers already watch their own parent (torch's
worker watchdog), so killing a rank takes its workers with it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

_started = False


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def _watch(parent: int, interval: float) -> None:
    while True:
        if os.getppid() != parent:
            # SIGKILL, not exit: no atexit hooks or finalizers that could write into the run folder
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(interval)


def exit_with_parent(interval: float = 0.5) -> bool:
    """Start (once per process) a daemon thread that kills this process when its parent dies.

    Returns False when the parent is already gone (the process is then being killed)."""
    global _started
    if _started:
        return True
    parent = os.getppid()
    if parent == 1:  # the launcher died before we got here
        os.kill(os.getpid(), signal.SIGKILL)
        return False
    threading.Thread(target=_watch, args=(parent, interval), name="exit-with-parent", daemon=True).start()
    _started = True
    return True
