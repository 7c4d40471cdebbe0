"""`files:GLOB`: plain video files on any fsspec filesystem; items carry paths, no bytes are read.

Also holds the small fsspec helpers the other sources share.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from curation.sources.archive import is_video_name
from curation.sources.base import VideoItem

_MAGIC = frozenset("*?[")


def open_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """Filesystem and protocol-less path of a URL; credentials (HF_TOKEN...) come from fsspec as usual."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path.rstrip("/") or path


def is_local(fs: AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def full_url(fs: AbstractFileSystem, path: str) -> str:
    """URL a worker can hand back to fsspec. Local files stay plain absolute paths so that
    decoders which do not speak fsspec (PyAV, OpenCV) can open them directly."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def has_magic(path: str) -> bool:
    return any(ch in _MAGIC for ch in path)


def glob_root(pattern: str) -> str:
    """The leading segments of a glob pattern before the first one with a wildcard."""
    segments = pattern.split("/")
    for i, segment in enumerate(segments):
        if has_magic(segment):
            return "/".join(segments[:i])
    return "/".join(segments[:-1])


def relative_to(path: str, root: str) -> str:
    if not root:
        return path.lstrip("/")
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise ValueError(f"{path} is not under {root}")
    return path[len(prefix) :]


def list_files(fs: AbstractFileSystem, pattern: str) -> list[str]:
    """Regular files matching a glob, sorted (glob can also return directories)."""
    found = fs.glob(pattern, detail=True)
    return sorted(p for p, info in found.items() if info.get("type") == "file")


def find_videos(fs: AbstractFileSystem, root: str) -> list[str]:
    """Every video file below `root` at any depth, sorted."""
    return sorted(p for p in fs.find(root) if is_video_name(p))


class FilesSource:
    """Video files named by a glob, or every video below a directory.

    Keys are paths relative to the glob's wildcard-free root, so the same corpus mounted or synced
    elsewhere keeps its video ids.
    """

    name = "files"

    def __init__(self, pattern: str, storage_options: dict[str, Any] | None = None) -> None:
        self.pattern = pattern
        self.storage_options = dict(storage_options or {})

    def iter_items(self) -> Iterator[VideoItem]:
        fs, path = open_fs(self.pattern, self.storage_options)
        root, paths = self._resolve(fs, path)
        keyed = sorted((relative_to(p, root), p) for p in paths)
        for key, p in keyed:
            url = full_url(fs, p)
            yield VideoItem(source=self.name, key=key, uri=url, path=url)

    @staticmethod
    def _resolve(fs: AbstractFileSystem, path: str) -> tuple[str, list[str]]:
        if has_magic(path):
            return glob_root(path), list_files(fs, path)
        if fs.isdir(path):
            return path, find_videos(fs, path)
        if fs.isfile(path):
            return glob_root(path), [path]
        raise FileNotFoundError(f"files source: nothing at {path}")
