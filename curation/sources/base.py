"""What every source yields: one `VideoItem` per source video, in a stable order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from curation.ids import video_id


@dataclass(frozen=True)
class SplitHint:
    """A span the source annotates (a FineVideo scene, an Open-Sora-Plan v1.1.0 frame range)."""

    start: float
    end: float
    unit: Literal["s", "frame"] = "s"
    label: str = ""


@dataclass
class VideoItem:
    """One source video as a source yields it.

    Exactly one of `data` (bytes streamed out of an archive or a parquet cell) and `path` (an
    fsspec URL the worker can open itself) is set, unless `error` says why the item is unusable
    (e.g. an annotation path that escapes the root): such an item still becomes a video row.
    """

    source: str
    key: str  # stable: relative path, "<archive>::<member>", "<parquet file>#<row>"
    uri: str  # where a human finds it, for error messages
    path: str | None = None
    data: bytes | None = None
    source_caption: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable source metadata
    hints: list[SplitHint] = field(default_factory=list)
    error: str | None = None
    # Set by the curate driver (curation.pipeline.ResumeIndex): (video row of an earlier run, clips
    # it still lacks), or (None, []) for a video no run finished; None = not looked up.
    resume: tuple[dict[str, Any] | None, list[dict[str, Any]]] | None = None

    @property
    def video_id(self) -> str:
        return video_id(self.source, self.key)


class Source(Protocol):
    name: str

    def iter_items(self) -> Iterator[VideoItem]:
        """Yield items lazily, in a deterministic order; never hold a whole archive in memory."""
        ...
