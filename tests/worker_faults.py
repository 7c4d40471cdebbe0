"""Functions that misbehave on marked names, for the worker-pool tests. Kept apart from the test
module so that a decoder child imports only this (fast) and not pytest or the whole job."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from curation import pipeline
from curation.isolate import IsolatedError, run_isolated

REAL_ANALYZE = pipeline._analyze_in_child  # bound at import: in the parent and in each child


def marked(name: str) -> str | None:
    for mark in ("abort", "sigkill", "hang", "raise"):
        if mark in os.path.basename(name):
            return mark
    return None


def misbehave(name: str) -> None:
    mark = marked(name)
    if mark == "abort":
        os.abort()
    elif mark == "sigkill":  # what the OOM killer does
        os.kill(os.getpid(), signal.SIGKILL)
    elif mark == "hang":
        time.sleep(120)
    elif mark == "raise":
        raise ValueError(f"bad packet in {name}")


def analyze_or_misbehave(path: str, *args: Any) -> Any:
    """Stands in for the analysis in the child: misbehaves on marked files, else the real thing."""
    misbehave(path)
    return REAL_ANALYZE(path, *args)


def echo_pid(name: str) -> tuple[str, int]:
    misbehave(name)
    return name, os.getpid()


def process(name: str) -> tuple[str, int]:
    """A Ray-side unit of work: its decoding part runs isolated, as process_video's does."""
    try:
        return run_isolated(echo_pid, name, timeout=5.0)
    except IsolatedError as e:
        return f"error: {e}", -1


def kill_ray_worker_on(name: str) -> str:
    if name == "kill-worker":
        os.kill(os.getpid(), signal.SIGKILL)  # the Ray worker itself, not the isolated child
    return name
