"""training.orphan: a rank whose launcher is SIGKILLed dies too (torchrun puts ranks in their own
sessions, so a kill of the launcher's process group does not reach them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from tests.train_fixtures import REPO, alive, wait_gone

CHILD = textwrap.dedent(
    """
    import sys, time
    from training.orphan import exit_with_parent
    watch = sys.argv[1] == "watch"
    if watch:
        exit_with_parent(interval=0.1)
    print("ready", flush=True)
    time.sleep(60)
    """
)

# The launcher: starts the child in a session of its own (as torch elastic does) and waits.
PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    print(child.pid, flush=True)
    time.sleep(60)
    """
)


def _orphan(mode: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.killpg(parent.pid, signal.SIGKILL)  # the launcher's group only, as a user's kill -9 does
    parent.wait()
    return child


def test_a_watched_child_dies_with_its_launcher() -> None:
    child = _orphan("watch")
    assert not wait_gone([child], timeout=10), "the child outlived its SIGKILLed launcher"


def test_an_unwatched_child_would_outlive_it() -> None:
    # The control: without the watchdog the same child keeps running (what torchrun ranks did).
    child = _orphan("plain")
    try:
        time.sleep(1.0)
        assert alive(child)
    finally:
        os.kill(child, signal.SIGKILL)
