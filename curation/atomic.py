"""Atomic file outputs: every file the toolkit writes appears under its final name complete or
not at all, so a reader (or a resumed job) never sees a half-written part, shard or clip."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def temp_path(path: str | os.PathLike[str]) -> str:
    """The hidden temporary beside `path`: same folder, so the final rename is atomic; the pid
    keeps concurrent writers apart and lets a rerun recognise (and clean) a killed run's leftover."""
    path = os.fspath(path)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path to write; it becomes `path` when the block succeeds and is removed
    when it fails."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
