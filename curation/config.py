"""Typed configuration of the curation job; one YAML file, unknown keys are errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.configfile import ConfigError, read_yaml_section, validate

__all__ = ["ConfigError", "CurateConfig", "load_config", "parse_config"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Strict):
    """Shot detection (see curation/shots.py for the detectors), then windows of bounded length."""

    detector: Literal["hardcut", "adaptive", "content", "transnetv2", "fused"] = Field(
        "hardcut",
        description="hardcut: a learned combiner of cheap cues (default); adaptive/content: PySceneDetect; "
        "transnetv2: the learned network (~1 CPU s per video s, GPU when present); fused: either one's cuts",
    )
    adaptive_threshold: float = Field(
        3.0, gt=0, description="content change over its neighbours' mean (AdaptiveDetector)"
    )
    min_content_val: float = Field(
        15.0, ge=0, description="minimum content change of a cut (AdaptiveDetector)"
    )
    content_threshold: float = Field(27.0, gt=0, description="ContentDetector threshold")
    hardcut_threshold: float = Field(
        0.0, description="hardcut: log-odds a boundary needs (0 = probability 0.5; higher, fewer cuts)"
    )
    transnet_threshold: float = Field(0.5, gt=0, lt=1, description="TransNetV2 cut probability")
    transnet_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where TransNetV2 runs; auto = the GPU when there is one"
    )
    min_scene_len_s: float = Field(
        0.15, ge=0, description="no two cuts closer than this (real edits have shots of 5-8 frames)"
    )
    min_clip_s: float = Field(2.0, gt=0)
    max_clip_s: float = Field(10.0, gt=0)
    trim_frames: int = Field(2, ge=0, description="frames dropped after and before each cut (transitions)")
    use_scene_hints: bool = Field(True, description="add source-annotated scene boundaries (seconds) as cuts")

    @model_validator(mode="after")
    def _bounds(self) -> SplitConfig:
        if self.max_clip_s < self.min_clip_s:
            raise ValueError("max_clip_s must be >= min_clip_s")
        return self


class AnalysisConfig(_Strict):
    """The single downscaled decode pass that feeds shot detection and every score."""

    short_side: int = Field(144, ge=32, le=720, description="approximate short side of analysis frames")
    score_fps: float = Field(2.0, gt=0, description="scores are computed on frames sampled at this rate")
    flow: Literal["auto", "always", "never"] = Field(
        "always",
        description="motion from optical flow on every sampled pair (always: a pure function of the decoded "
        "pixels, frame-threaded decode), or from codec motion vectors with flow only where they are missing "
        "or ambiguous (auto) or never: vectors need a slice-threaded decode to be exact (one core)",
    )
    flow_size: int = Field(128, ge=32)
    decode_threads: int = Field(
        0, ge=0, description="FFmpeg threads per analysis decode; 0 = one per worker (workers fill the cores)"
    )
    skip_loop_filter: Literal["none", "noref", "all"] = Field(
        "noref",
        description="skip deblocking in the analysis decode: 'noref' only on frames nothing predicts from "
        "(safe); 'all' saves up to 45% more but the un-deblocked references drift until the next "
        "keyframe, which shows up as false cuts at GOP boundaries",
    )
    timeout_s: float = Field(1800.0, gt=0, description="a video whose analysis exceeds this is an error")


class FilterConfig(_Strict):
    """Thresholds: a verdict per score. Changing these re-decides from stored scores, no decoding."""

    min_short_side: int = Field(240, ge=1)
    min_aspect: float = Field(0.4, gt=0, description="width/height after crop")
    max_aspect: float = Field(2.5, gt=0)
    static_motion_max: float = Field(0.0008, ge=0, description="mean motion, fraction of diagonal per frame")
    shaky_motion_min: float = Field(0.05, gt=0)
    black_luma_max: float = Field(
        5.0, ge=0, description="clip median luma below this (full range: black is 0 after mapping) ..."
    )
    black_dark_fraction_min: float = Field(
        0.9, ge=0, le=1, description="... and this share of near-black pixels: black"
    )
    dark_luma_max: float = Field(35.0, ge=0, description="clip median luma below this ...")
    dark_highlight_max: float = Field(
        64.0,
        ge=0,
        le=255,
        description="... and highlights (luma_p99) below this: too dark (a lit subject in the dark is not)",
    )
    washed_luma_min: float = Field(200.0, ge=0, description="bright and ...")
    washed_std_max: float = Field(25.0, ge=0, description="... flat: washed out")
    blur_min: float = Field(40.0, ge=0, description="median Laplacian variance below this is blurry")
    border_fraction_max: float = Field(
        0.5, ge=0, le=1, description="letterbox is cropped later; reject only above this share of area"
    )
    text_fraction_max: float = Field(0.025, ge=0, le=1, description="burnt-in text share of frame area")
    dedup_max_distance: int = Field(6, ge=0, le=64, description="phash Hamming distance of near-duplicates")


class ExtractConfig(_Strict):
    codec: str = "libx264"
    crf: int = Field(18, ge=0, le=51)
    preset: str = "veryfast"
    max_short_side: int = Field(1080, ge=64, description="larger clips are downscaled when written")
    threads: int = Field(1, ge=0, description="x264 threads; fixed so outputs are byte-identical on rerun")


class RunnerConfig(_Strict):
    max_in_flight: int = Field(
        0, ge=0, description="Ray tasks in flight (each a batch of videos), or threads locally; 0 = 2 x CPUs"
    )
    num_cpus_per_video: float = Field(1.0, gt=0, description="CPUs of a task (one video at a time)")
    videos_per_task: int = Field(
        0, ge=0, description="videos per Ray task; 0 = adaptive: about task_seconds of work per task"
    )
    task_seconds: float = Field(
        2.0, gt=0, description="adaptive batches: target wall seconds of one task (per-task cost is ~ms)"
    )
    progress: bool = True


class CurateConfig(_Strict):
    version: Literal[1] = 1
    split: SplitConfig = SplitConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    filters: FilterConfig = FilterConfig()
    extract: ExtractConfig = ExtractConfig()
    runner: RunnerConfig = RunnerConfig()

    def section_hash(self, *sections: str) -> str:
        """Hash of the named sections: scores depend on split+analysis, decisions on filters too."""
        payload = {s: getattr(self, s).model_dump(mode="json") for s in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def analysis_hash(self) -> str:
        return self.section_hash("split", "analysis")

    @property
    def decision_hash(self) -> str:
        return self.section_hash("split", "analysis", "filters", "extract")


def parse_config(data: dict[str, Any] | None, origin: str = "<dict>") -> CurateConfig:
    return validate(CurateConfig, data, origin)


def load_config(path: str | Path | None) -> CurateConfig:
    """Load a curate YAML (the whole file, or its `curate:` section); None gives the defaults."""
    if path is None:
        return CurateConfig()
    return parse_config(read_yaml_section(path, "curate"), str(path))
