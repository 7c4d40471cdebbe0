"""Video sources: `open_source("pixabay:PATH" | "finevideo:PATH" | "files:GLOB")` -> a `Source`.

PATH/GLOB is any fsspec URL (local path, file://, s3://, gs://, hf://datasets/...). Constructing a
source touches no storage; listing and reading happen lazily in `iter_items()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from curation.sources.base import Source, SplitHint, VideoItem
from curation.sources.files import FilesSource
from curation.sources.finevideo import FineVideoSource
from curation.sources.pixabay import PixabaySource

__all__ = [
    "SOURCE_KINDS",
    "FilesSource",
    "FineVideoSource",
    "PixabaySource",
    "Source",
    "SplitHint",
    "VideoItem",
    "open_source",
]

SOURCE_KINDS: dict[str, Callable[[str, dict[str, Any] | None], Source]] = {
    "pixabay": PixabaySource,
    "finevideo": FineVideoSource,
    "files": FilesSource,
}


def open_source(spec: str, storage_options: dict[str, Any] | None = None) -> Source:
    """The source named by `spec` ("<kind>:<fsspec URL or glob>")."""
    kind, sep, location = spec.partition(":")
    valid = ", ".join(f"{k}:PATH" for k in SOURCE_KINDS)
    if not sep or kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source spec {spec!r}: expected one of {valid}")
    if not location.strip():
        raise ValueError(f"source spec {spec!r} names no path: expected one of {valid}")
    return SOURCE_KINDS[kind](location, storage_options)
