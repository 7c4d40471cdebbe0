"""Stable identifiers: the same source key gives the same id on any machine, without reading the file."""

from __future__ import annotations

import hashlib
import re

_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def video_id(source: str, key: str) -> str:
    """Id of a source video from its source name and key (path, archive member or parquet row).

    16 hex digits of sha256: collisions are negligible below billions of videos, and the id stays
    short enough to read in a manifest.
    """
    digest = hashlib.sha256(f"{source}\x00{key}".encode()).hexdigest()[:16]
    return f"{source[:3]}{digest}"


def clip_id(vid: str, start_frame: int, end_frame: int) -> str:
    """Clip id ``<video_id>_<start>_<end>`` (end exclusive): WebDataset-safe, no dots."""
    cid = f"{vid}_{start_frame:07d}_{end_frame:07d}"
    if not _SAFE.match(cid):
        raise ValueError(f"clip id {cid!r} is not WebDataset-safe")
    return cid


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
