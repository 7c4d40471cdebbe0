"""Local paths and object-store URLs (s3://, gs://, hf://, ... through fsspec) behind one small API.

Writers never rename on a store: an object PUT is atomic (it appears whole or not at all), so each
object is written once under its final name, and the index (the commit record) is written last.
Local paths keep the temporary-name + rename of curation.atomic.

Credentials come from the usual environment variables (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS,
HF_TOKEN, ...), a profile, or fsspec's own FSSPEC_<PROTOCOL>_<KWARG> variables; `storage_options` in a
config carries only non-secret settings (endpoint_url, region, anon, profile): configs are copied into
run folders, so a secret-looking key there is refused (`check_storage_options`).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Mapping
from typing import Any

_SECRET_WORDS = ("secret", "password", "token", "credential", "private_key", "session", "access_key")


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for an fsspec URL other than a plain local file (file:// counts as local)."""
    s = os.fspath(path)
    return "://" in s and not s.startswith("file://")


def local_path(path: str | os.PathLike[str]) -> str:
    s = os.fspath(path)
    return s.removeprefix("file://")


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join below a folder or URL prefix (URLs use '/', whatever the OS)."""
    b = os.fspath(base)
    return posixpath.join(b, *parts) if is_url(b) else os.path.join(b, *parts)


def check_storage_options(options: Mapping[str, Any], where: str = "storage_options") -> dict[str, Any]:
    """The options unchanged, or ValueError when a key looks like a credential (configs are logged)."""
    for k, v in options.items():
        name = f"{where}.{k}"
        low = str(k).lower()
        if low in ("key", "secret") or any(w in low for w in _SECRET_WORDS):
            raise ValueError(
                f"{name}: credentials do not belong in the config (it is copied into run folders); "
                "use the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...) or a profile"
            )
        if isinstance(v, Mapping):
            check_storage_options(v, name)
    return dict(options)


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a URL; fsspec caches the filesystem per options."""
    from fsspec.core import url_to_fs

    return url_to_fs(url, **dict(storage_options or {}))


def read_bytes(path: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    if not is_url(path):
        with open(local_path(path), "rb") as f:
            return f.read()
    fs, p = filesystem(path, storage_options)
    return fs.cat_file(p)


def write_bytes(path: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    """Whole or nothing: temporary name + rename locally, one PUT on a store."""
    if not is_url(path):
        from training.data.shard_writer import write_atomic

        write_atomic(local_path(path), data)
        return
    from curation.atomic import upload_bytes

    fs, p = filesystem(path, storage_options)
    upload_bytes(fs, p, data)


def put_file(local: str, dest: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Upload a finished local file to its final name on a store (one object, no rename)."""
    from curation.atomic import upload_file

    fs, p = filesystem(dest, storage_options)
    upload_file(fs, local, p)


def exists(path: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    if not is_url(path):
        return os.path.exists(local_path(path))
    fs, p = filesystem(path, storage_options)
    fs.invalidate_cache(posixpath.dirname(p))  # another process may have written it since
    return bool(fs.exists(p))


def size(path: str, storage_options: Mapping[str, Any] | None = None) -> int:
    if not is_url(path):
        return os.path.getsize(local_path(path))
    fs, p = filesystem(path, storage_options)
    return int(fs.size(p))


def listdir(path: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Names directly inside a folder or prefix; [] when there is none."""
    if not is_url(path):
        p = local_path(path)
        return sorted(os.listdir(p)) if os.path.isdir(p) else []
    fs, p = filesystem(path, storage_options)
    fs.invalidate_cache(p)
    try:
        return sorted(posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False))
    except FileNotFoundError:
        return []


def download(url: str, dest: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """Copy the objects below `url` to the same relative paths below the local folder `dest`;
    returns how many. One listing, one batched download; an object name that would land outside
    `dest` is refused before anything is fetched."""
    fs, root = filesystem(url, storage_options)
    root = root.rstrip("/")
    try:
        listing = fs.find(root, detail=True)
    except FileNotFoundError:
        listing = {}
    base = os.path.abspath(dest)
    names, targets = [], []
    for path, info in sorted(listing.items()):
        rel = path[len(root) + 1 :]
        if not rel or info.get("type", "file") == "directory":
            continue
        target = os.path.normpath(os.path.join(base, *rel.split("/")))
        if os.path.commonpath([target, base]) != base:
            raise ValueError(f"{url}/{rel}: object name escapes the local folder {dest}")
        names.append(f"{root}/{rel}")
        targets.append(target)
    for t in targets:
        os.makedirs(os.path.dirname(t), exist_ok=True)
    if names:
        fs.get(names, targets)
    return len(names)


def remove(path: str, storage_options: Mapping[str, Any] | None = None) -> None:
    if not is_url(path):
        os.remove(local_path(path))
        return
    fs, p = filesystem(path, storage_options)
    fs.rm_file(p)


def sha256_of(path: str, storage_options: Mapping[str, Any] | None = None) -> str:
    import hashlib

    h = hashlib.sha256()
    if not is_url(path):
        from curation.ids import sha256_file

        return sha256_file(local_path(path))
    fs, p = filesystem(path, storage_options)
    with fs.open(p, "rb", block_size=8 << 20) as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def open_input(path: str, storage_options: Mapping[str, Any] | None = None, block_size: int = 8 << 20) -> Any:
    """A binary file object to read sequentially (a local file, or an fsspec file of the store that
    fetches `block_size` bytes per GET); close it when done (use it as a context manager)."""
    if not is_url(path):
        return open(local_path(path), "rb")
    fs, p = filesystem(path, storage_options)
    return fs.open(p, "rb", block_size=block_size)


class UnsafePath(ValueError):
    """A path read from a manifest that would leave the root it is relative to."""


def member(root: str, rel: str, where: str = "manifest") -> str:
    """`root`/`rel` for a path read from a manifest, refusing what would leave the root: an absolute
    path, a URL, '..' above the root, a backslash or a NUL (the manifest is input, not trusted).
    `where` names the manifest in the error."""
    bad = None
    if not rel:
        bad = "is empty"
    elif "://" in rel or rel.startswith("file:"):
        bad = "is a URL, not a path relative to the output root"
    elif rel.startswith(("/", "~")) or os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        bad = "is absolute, not relative to the output root"
    elif "\\" in rel or "\x00" in rel:
        bad = "holds a backslash or NUL"
    else:
        norm = posixpath.normpath(rel)
        if norm == ".." or norm.startswith("../") or norm == ".":
            bad = "escapes the output root"
    if bad:
        raise UnsafePath(f"{where}: path {rel!r} {bad}; refused")
    return join(root, *posixpath.normpath(rel).split("/"))


class RangeReader:
    """One read per byte range: os.pread on a kept-open file locally, one ranged GET on a store.

    No read-ahead cache and no file object per range; a few local files stay open per process
    (a sampler touches shards in random order, so more would rarely be reused).
    """

    def __init__(self, storage_options: Mapping[str, Any] | None = None, max_open: int = 16) -> None:
        self.storage_options = dict(storage_options or {})
        self.max_open = max_open
        self._fds: dict[str, int] = {}
        self._fs: dict[str, tuple[Any, str]] = {}

    def read(self, url: str, offset: int, size: int) -> bytes:
        if not is_url(url):
            fd = self._fds.get(url)
            if fd is None:
                if len(self._fds) >= self.max_open:
                    os.close(self._fds.pop(next(iter(self._fds))))
                fd = self._fds[url] = os.open(local_path(url), os.O_RDONLY)
            data = os.pread(fd, size, offset)
        else:
            got = self._fs.get(url)
            if got is None:
                got = self._fs[url] = filesystem(url, self.storage_options)
            fs, p = got
            data = fs.cat_file(p, start=offset, end=offset + size)
        if len(data) != size:
            raise OSError(f"{url}: {len(data)} bytes at {offset}, expected {size} (truncated shard?)")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self) -> dict[str, Any]:  # open files and clients stay in their process
        return {"storage_options": self.storage_options, "max_open": self.max_open, "_fds": {}, "_fs": {}}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
