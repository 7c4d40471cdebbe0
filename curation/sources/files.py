"""`files:GLOB`: plain video files on any fsspec filesystem; items carry paths, no bytes are read.

Also holds the small fsspec helpers the other sources share.
"""

from __future__ import annotations

import os
from collections import Counter
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


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def classify_link(path: str, root: str) -> tuple[str, str | None]:
    """What a local symbolic link is: ("file", None) for a link to a file inside the source root
    (it is read like the file), ("error", reason) for one that dangles or escapes the root (the
    video gets an error row saying so), ("skip", reason) for a link to a directory."""
    target = os.path.realpath(path)
    dest = os.readlink(path)
    if not os.path.exists(target):
        return "error", f"dangling symbolic link: {path} -> {dest} (target does not exist)"
    if not _under(target, os.path.realpath(root or os.sep)):
        return "error", f"symbolic link escapes the source root {root}: {path} -> {target}"
    if os.path.isdir(target):
        return "skip", "link to a directory"
    if not os.path.isfile(target):
        return "skip", "link to something that is not a regular file"
    return "file", None


class FilesSource:
    """Video files named by a glob, or every video below a directory.

    Keys are paths relative to the glob's wildcard-free root, so the same corpus mounted or synced
    elsewhere keeps its video ids. A symbolic link to a video inside the root is a video; one that
    dangles or leads out of the root becomes an error item (an error row with the reason). Paths
    that match but are not videos (directories, links to directories, sockets; in directory mode
    also files without a video extension) are counted in `skipped` by reason, for the summary.
    """

    name = "files"

    def __init__(self, pattern: str, storage_options: dict[str, Any] | None = None) -> None:
        self.pattern = pattern
        self.storage_options = dict(storage_options or {})
        self.skipped: Counter[str] = Counter()

    def iter_items(self) -> Iterator[VideoItem]:
        self.skipped = Counter()
        fs, path = open_fs(self.pattern, self.storage_options)
        root, entries = self._resolve(fs, path)
        keyed = sorted((relative_to(p, root), p, info) for p, info in entries)
        for key, p, info in keyed:
            url = full_url(fs, p)
            kind, reason = self._kind(fs, p, info, root)
            if kind == "skip":
                self.skipped[reason or "not a file"] += 1
                continue
            yield VideoItem(source=self.name, key=key, uri=url, path=url, error=reason)

    @staticmethod
    def _kind(fs: AbstractFileSystem, path: str, info: dict[str, Any], root: str) -> tuple[str, str | None]:
        if info.get("islink") and is_local(fs):
            return classify_link(path, root)
        kind = info.get("type")
        if kind == "file":
            return "file", None
        if kind == "directory":
            return "skip", "directory"
        return "skip", "not a regular file"

    def _resolve(self, fs: AbstractFileSystem, path: str) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
        if has_magic(path):
            return glob_root(path), sorted(fs.glob(path, detail=True).items())
        if fs.isdir(path):
            found = fs.find(path, detail=True)
            videos = []
            for p, info in sorted(found.items()):
                if is_video_name(p):
                    videos.append((p, info))
                else:
                    self.skipped["not a video file name"] += 1
            return path, videos
        if fs.isfile(path):
            return glob_root(path), [(path, fs.info(path))]
        raise FileNotFoundError(f"files source: nothing at {path}")
