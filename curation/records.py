"""The records the curation core writes: one pydantic model each, the single source of truth.

The JSON Schemas in schemas/ and the Arrow schemas of the Parquet manifests are both derived
from these models, so the three cannot drift apart.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VideoRow(_Row):
    """One source video: what it is, and whether it could be read (an error row says why not)."""

    video_id: str = Field(description="stable hash of source name and source key")
    source: str
    source_key: str = Field(description="path, '<archive>::<member>' or '<parquet file>#<row>'")
    uri: str
    status: Literal["ok", "error"]
    error: str | None = Field(None, description="readable reason when status is error")
    error_stage: Literal["source", "probe", "analyze", "extract"] | None = None
    content_sha256: str | None = None
    size_bytes: int | None = None
    container: str | None = None
    codec: str | None = None
    pix_fmt: str | None = None
    stream_index: int | None = None
    coded_width: int | None = None
    coded_height: int | None = None
    width: int | None = Field(None, description="displayed width, rotation applied")
    height: int | None = None
    rotation: int | None = None
    fps: float | None = Field(None, description="measured average frame rate")
    fps_variable: bool | None = None
    duration_s: float | None = Field(None, description="from decoding when the container does not say")
    n_frames: int | None = None
    bit_rate: int | None = None
    has_audio: bool | None = None
    source_caption: str | None = Field(None, description="original (English) caption, e.g. Pixabay's")
    source_meta: str = Field("{}", description="JSON object of source metadata (FineVideo, Pixabay)")
    hints: str = Field("[]", description="JSON list of source split hints")
    cuts: list[int] = Field(default_factory=list, description="shot boundaries, frame indices")
    n_candidates: int = 0
    analysis_hash: str
    package_version: str
    schema_version: int = SCHEMA_VERSION


class ClipScores(_Row):
    """One candidate clip and every score measured on it; thresholds are not applied here."""

    clip_id: str
    video_id: str
    source: str
    start_frame: int
    end_frame: int = Field(description="exclusive")
    start_s: float = Field(description="seconds from the first frame of the video")
    end_s: float
    duration_s: float
    n_frames: int
    fps: float
    width: int = Field(description="displayed width of the source video")
    height: int
    shot_index: int
    window_index: int
    n_samples: int = Field(description="frames scored inside the clip")
    motion: float | None = Field(None, description="mean motion, fraction of frame diagonal per frame")
    motion_mv: float | None = Field(None, description="codec motion vectors")
    motion_flow: float | None = Field(None, description="optical flow, where computed")
    motion_p90: float | None = None
    camera_pan: float | None = Field(None, description="global (median) flow magnitude")
    flow_share: float | None = Field(None, description="share of samples where optical flow ran")
    luma_mean: float | None = Field(None, description="median over samples of mean luma, 0-255")
    luma_std: float | None = None
    luma_p99: float | None = Field(None, description="highlights: p75 over samples of the frame's p99 luma")
    dark_fraction: float | None = None
    bright_fraction: float | None = None
    sharpness: float | None = Field(None, description="median Laplacian variance at a fixed scale")
    text_fraction: float | None = Field(None, description="75th percentile of text-like area share")
    text_fraction_max: float | None = None
    crop_top: float = Field(0.0, description="letterbox crop box, fractions of the frame")
    crop_bottom: float = 0.0
    crop_left: float = 0.0
    crop_right: float = 0.0
    border_fraction: float = 0.0
    phashes: list[int] = Field(default_factory=list, description="64-bit DCT hashes at 25/50/75%")
    source_caption: str | None = None
    source_meta: str = "{}"
    analysis_hash: str
    package_version: str
    schema_version: int = SCHEMA_VERSION


class ThumbRow(_Row):
    """A small colour JPEG from the middle of a candidate clip, kept apart from the clip rows so
    the clip manifest stays lean; the report's contact sheet shows rejected clips from these
    without decoding anything again."""

    clip_id: str
    video_id: str
    jpeg: bytes = Field(description="JPEG, about 128 px on the short side")


class ClipRow(ClipScores):
    """A candidate clip with its verdict: answers 'why was this clip dropped?' in one row."""

    status: Literal["kept", "rejected"]
    reason: str | None = Field(None, description="first failing check")
    failed_checks: list[str] = Field(default_factory=list)
    duplicate_of: str | None = None
    clip_path: str | None = Field(None, description="relative to the job's output folder")
    content_width: float = Field(description="width after the crop box")
    content_height: float
    decision_hash: str
