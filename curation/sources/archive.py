"""Streaming tar(.gz) reading: members come out one at a time, the archive is never unpacked or held whole.

Split archives (`x.tar.gz.00`, `.01`, ...) are read through `ChainedReader`, which concatenates the
parts as one byte stream, opening each part only when the previous one is exhausted.
"""

from __future__ import annotations

import gzip
import io
import logging
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal

log = logging.getLogger(__name__)

Opener = Callable[[], BinaryIO]

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})

# Errors a damaged stream can raise anywhere in gzip/tarfile; anything else is a bug and propagates.
_STREAM_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, ValueError)


def is_video_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in VIDEO_EXTENSIONS


def unsafe_member_reason(name: str) -> str | None:
    """Why a member name must not be trusted (absolute or climbing with `..`), else None.

    Members are never extracted to disk, but their names become keys and are matched against
    annotation paths, so a hostile name is reported instead of silently normalised.
    """
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "'..' segment"
    return None


class ChainedReader(io.RawIOBase):
    """Read-only stream over several byte sources in order, as if concatenated (`cat a.00 a.01 ...`).

    Parts are opened lazily and closed as soon as they are exhausted, so at most one is open.
    `bytes_read` counts compressed bytes consumed, which tests use to prove reading is incremental.
    """

    def __init__(self, openers: Sequence[Opener]) -> None:
        super().__init__()
        self._openers = list(openers)
        self._index = 0
        self._current: BinaryIO | None = None
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        while True:
            if self._current is None:
                if self._index >= len(self._openers):
                    return 0
                self._current = self._openers[self._index]()
            chunk = self._current.read(len(view))
            if chunk:
                view[: len(chunk)] = chunk
                self.bytes_read += len(chunk)
                return len(chunk)
            self._close_current()
            self._index += 1

    def _close_current(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def close(self) -> None:
        self._close_current()
        super().close()


class _ShortReads:
    """Hands tarfile whatever is decompressed so far instead of a full block.

    tarfile asks for 10 KiB at a time and `GzipFile.read` insists on filling it, so with small
    members a truncation would be raised before the members already complete were handed out.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        return self._stream.read1(size if size > 0 else io.DEFAULT_BUFFER_SIZE)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TarEntry:
    """One wanted member (with its bytes), an unusable member (error), or the archive's failure (fatal)."""

    name: str
    data: bytes | None = None
    error: str | None = None
    fatal: bool = False


def iter_tar_entries(
    openers: Sequence[Opener],
    archive_name: str,
    want: Callable[[str], bool] = is_video_name,
    compression: Literal["gz", "none"] = "gz",
    reader_hook: Callable[[ChainedReader], None] | None = None,
) -> Iterator[TarEntry]:
    """Yield wanted members of a (possibly split) tar archive, reading one member at a time.

    Members `want` rejects are skipped without reading their bytes. A wanted member with an unsafe
    name or that is not a regular file yields an error entry. If the stream is damaged (truncated,
    bad CRC, missing part), everything read before is yielded, then one `fatal` entry, then the
    iterator stops: the caller decides whether to go on with other archives.
    """
    chain = ChainedReader(openers)
    if reader_hook is not None:
        reader_hook(chain)
    buffered = io.BufferedReader(chain, buffer_size=1 << 20)
    # gzip.GzipFile (not tarfile's "r|gz") because it raises on a truncated stream or a bad CRC,
    # while tarfile's own stream treats data ending at a member boundary as a clean end of archive.
    stream: BinaryIO = gzip.GzipFile(fileobj=buffered, mode="rb") if compression == "gz" else buffered
    tar_input = _ShortReads(stream)
    count = 0
    try:
        try:
            # Not a context manager: the open itself is what may fail; `stream` is closed in finally.
            tar = tarfile.open(fileobj=tar_input, mode="r|")  # noqa: SIM115
        except _STREAM_ERRORS as exc:
            yield _fatal(archive_name, count, exc)
            return
        while True:
            try:
                info = tar.next()
                # Stream mode keeps every TarInfo it has seen; nothing here needs them again.
                tar.members.clear()
                entry = None if info is None else _read_member(tar, info, want)
            except _STREAM_ERRORS as exc:
                yield _fatal(archive_name, count, exc)
                return
            if info is None:
                break
            if entry is not None:
                count += 1
                yield entry
        try:
            # tarfile stops at the end-of-archive marker; draining the rest makes gzip verify the
            # trailer, so an archive cut after its last member is still reported as damaged.
            while stream.read(1 << 20):
                pass
        except _STREAM_ERRORS as exc:
            yield _fatal(archive_name, count, exc)
    finally:
        stream.close()
        chain.close()


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo, want: Callable[[str], bool]) -> TarEntry | None:
    if info.isdir() or not want(info.name):
        return None
    reason = unsafe_member_reason(info.name)
    if reason is not None:
        return TarEntry(info.name, error=f"unsafe tar member name ({reason}): {info.name}")
    if not info.isfile():
        return TarEntry(info.name, error=f"tar member is not a regular file (link or device): {info.name}")
    handle = tar.extractfile(info)
    if handle is None:
        return TarEntry(info.name, error=f"tar member has no data: {info.name}")
    data = handle.read()
    if len(data) != info.size:
        raise tarfile.ReadError(f"member {info.name} truncated: {len(data)} of {info.size} bytes")
    return TarEntry(info.name, data=data)


def _fatal(archive_name: str, count: int, exc: BaseException) -> TarEntry:
    reason = f"{type(exc).__name__}: {exc}"
    log.warning("archive %s unreadable after %d members: %s", archive_name, count, reason)
    return TarEntry(
        "",
        error=f"archive {archive_name} is truncated or corrupt after {count} members: {reason}",
        fatal=True,
    )
