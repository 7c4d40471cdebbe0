"""Atomic outputs on a local disk or an object store: every file the toolkit writes appears under
its final name complete or not at all, so a reader (or a resumed job) never sees a half-written
part, shard or clip.

Local paths: write a hidden temporary beside the target, then rename (atomic on POSIX).
Object stores (s3://, gs://, anything fsspec opens that is not local): no renames. One PUT is
atomic there (a single or multipart upload becomes visible only when complete), so each object
is written straight to its final, unique name; what spans several objects is committed by a
small record written last (see curation.manifest).

Credentials come from the environment only (AWS_* variables, or fsspec's FSSPEC_S3 /
FSSPEC_S3_ENDPOINT_URL / FSSPEC_GCS... variables, which fsspec applies to every filesystem it
builds, in the driver and in every worker alike); nothing here writes or logs them.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
from fsspec import AbstractFileSystem


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for a URL with a protocol other than the local file system."""
    p = os.fspath(path)
    proto, sep, _ = p.partition("://")
    return bool(sep) and proto not in ("file", "local")


def strip_file(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    return p[len("file://") :] if p.startswith("file://") else p


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Path join that keeps a URL's `//`: posix for URLs, os.path for local paths."""
    b = os.fspath(base)
    return posixpath.join(b, *parts) if is_url(b) else os.path.join(strip_file(b), *parts)


def get_fs(path: str | os.PathLike[str]) -> tuple[AbstractFileSystem, str]:
    """Filesystem and protocol-less path; fsspec caches filesystems, so this is cheap to repeat."""
    return fsspec.core.url_to_fs(os.fspath(path))


def exists(path: str | os.PathLike[str]) -> bool:
    if not is_url(path):
        return os.path.exists(strip_file(path))
    fs, p = get_fs(path)
    return bool(fs.exists(p))


def isdir(path: str | os.PathLike[str]) -> bool:
    if not is_url(path):
        return os.path.isdir(strip_file(path))
    fs, p = get_fs(path)
    return bool(fs.isdir(p))


def listdir(folder: str | os.PathLike[str]) -> list[str]:
    """Names (not paths) directly inside `folder`; [] when it does not exist. One listing call."""
    if not is_url(folder):
        f = strip_file(folder)
        return sorted(os.listdir(f)) if os.path.isdir(f) else []
    fs, p = get_fs(folder)
    try:
        entries = fs.ls(p, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != p.rstrip("/"))


def makedirs(folder: str | os.PathLike[str]) -> None:
    """Local folders only: an object store has no folders to make."""
    if not is_url(folder):
        os.makedirs(strip_file(folder), exist_ok=True)


def remove(path: str | os.PathLike[str]) -> None:
    """Remove a file if it is there (a rerun may find it gone already)."""
    if not is_url(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(strip_file(path))
        return
    fs, p = get_fs(path)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(p)


def move(src: str, dst: str) -> None:
    """Rename locally; on an object store a server-side copy to the final name, then a delete of the
    source: `dst` appears complete or not at all, and a rerun after a kill in between sees both and
    finishes (the caller's logic is idempotent: it checks `dst` first)."""
    if not is_url(dst):
        os.replace(strip_file(src), strip_file(dst))
        return
    fs, d = get_fs(dst)
    _, s = get_fs(src)
    fs.copy(s, d)
    fs.rm_file(s)


# gcsfs sends an upload under 5 MB (a file) or 50 MB (bytes) as one multipart/related request whose
# data part ends in a bare LF before the closing boundary. RFC 2046 counts the CRLF before a boundary
# as part of it, so an object whose last byte is '\r' reaches an RFC parser one byte short
# (gcp-storage-emulator drops it: about 1 clip in 256). Those few objects go as a resumable upload
# in one chunk instead (raw bytes, no framing); every other upload is unchanged.
def _is_gcs(fs: AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "gs" in protocols or "gcs" in protocols


def upload_bytes(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """One object under its final name (one PUT; `path` without its protocol)."""
    if data.endswith(b"\r") and _is_gcs(fs):
        fs.pipe_file(path, data, chunksize=len(data))  # size < chunksize is false: resumable upload
    else:
        fs.pipe_file(path, data)


def _framing_risk(fs: AbstractFileSystem, local: str) -> bool:
    if not _is_gcs(fs):
        return False
    with open(local, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if not 0 < size < 5 << 20:  # larger files go as resumable uploads already
            return False
        f.seek(size - 1)
        return f.read(1) == b"\r"


def upload_file(fs: AbstractFileSystem, local: str, path: str) -> None:
    """A finished local file as one object under its final name (`path` without its protocol)."""
    if _framing_risk(fs, local):
        with open(local, "rb") as f:
            upload_bytes(fs, path, f.read())
    else:
        fs.put_file(local, path)


def upload_files(fs: AbstractFileSystem, local: list[str], paths: list[str]) -> None:
    """Finished local files, each as one object (fsspec's batched, concurrent upload)."""
    batch: tuple[list[str], list[str]] = ([], [])
    for f, p in zip(local, paths, strict=True):
        if _framing_risk(fs, f):
            upload_file(fs, f, p)
        else:
            batch[0].append(f)
            batch[1].append(p)
    if batch[0]:
        fs.put(*batch)


def temp_path(path: str | os.PathLike[str]) -> str:
    """The hidden temporary beside `path`: same folder, so the final rename is atomic; the pid
    keeps concurrent writers apart and lets a rerun recognise (and clean) a killed run's leftover."""
    path = os.fspath(path)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary local path to write; it becomes `path` when the block succeeds and is
    removed when it fails. For a URL the temporary is a local file uploaded in one PUT."""
    path = os.fspath(path)
    if is_url(path):
        fd, tmp = tempfile.mkstemp(prefix="vjp-up-", suffix=os.path.splitext(path)[1])
        os.close(fd)
        try:
            yield tmp
            fs, p = get_fs(path)
            upload_file(fs, tmp, p)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return
    path = strip_file(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Small files (JSON records, summaries): atomic locally, one PUT on an object store."""
    path = os.fspath(path)
    if is_url(path):
        fs, p = get_fs(path)
        upload_bytes(fs, p, data)
        return
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    if not is_url(path):
        with open(strip_file(path), "rb") as f:
            return f.read()
    fs, p = get_fs(path)
    return bytes(fs.cat_file(p))


@contextlib.contextmanager
def local_file(
    path: str | os.PathLike[str], suffix: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> Iterator[str]:
    """A local path for decoders that do not speak fsspec: local files as they are, remote ones
    downloaded to a temporary that is removed when the block ends (also on an error), so a worker
    holds one input at a time, never a copy of the corpus."""
    path = os.fspath(path)
    if not is_url(path):
        yield strip_file(path)
        return
    suffix = suffix if suffix is not None else os.path.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix, prefix="vjp-") as tmp:
        with fsspec.open(path, "rb", **dict(storage_options or {})) as src:
            shutil.copyfileobj(src, tmp, 1 << 22)
        tmp.flush()
        yield tmp.name
