"""`vjp eval` configuration (the `eval:` section of a YAML file) and the metrics.json model.

Schemas: eval_config.v2 and eval_metrics.v2 in schemas/, generated from these models (v2: protocol
presets, intervals, the real set and baseline descriptions; v1 squashed frames and padded clips).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from curation.configfile import ConfigError, read_yaml_section, validate

__all__ = ["ConfigError", "EvalConfig", "EvalMetrics", "json_schemas", "load_eval_config"]

CONFIG_SCHEMA = "eval_config.v2"
METRICS_SCHEMA = "eval_metrics.v2"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class GenerateConfig(_Strict):
    """How the videos are generated from the eval captions."""

    size: Literal["stage", "sampler"] = Field(
        "stage",
        description="stage: frames/height/width of the eval shards (FVD compares like with like); "
        "sampler: the checkpoint's own sampling settings",
    )
    steps: int | None = Field(None, ge=1, description="None = the sampler's setting")
    guidance: float | None = Field(None, ge=0, description="None = the sampler's setting")
    negative_prompt: str | None = Field(None, description="None = the sampler's setting")
    batch_size: int = Field(
        4,
        ge=1,
        description="prompts per task (the unit of resume and of Ray dispatch); every video is still "
        "its own forward pass, so its pixels do not depend on the batch it lands in",
    )
    threads: int = Field(
        1,
        ge=0,
        description="torch intra-op threads while generating, the same in every process (CPU float "
        "results depend on it; a Ray actor starts with OMP_NUM_THREADS=its CPUs); 0 = torch's own "
        "setting, and a video may then differ between executors",
    )
    device: str = Field("auto", description="auto = cuda when available, else cpu")
    runner: Literal["local", "ray"] = Field("local", description="ray: one sampler actor per GPU")
    workers: int = Field(0, ge=0, description="Ray actors (0 = one per GPU, else 1)")
    address: str | None = Field(None, description="Ray address; default RAY_ADDRESS or a local Ray")


class FVDConfig(_Strict):
    """The FVD feature network: Kinetics-400 I3D logits (the network of the usual FVD code)."""

    network: Literal["i3d"] = "i3d"
    weights: str | None = Field(
        None,
        description="path, file:// or http(s) URL of the I3D state dict (i3d_pretrained_400.pt or "
        ".safetensors); a URL is fetched once into cache_dir",
    )
    weights_sha256: str | None = Field(None, description="expected sha256 of the weights file")
    cache_dir: str = Field("~/.cache/videojp/fvd", description="where a weights URL is stored")
    allow_random_weights: bool = Field(
        False, description="no weights: use a seeded random network (smoke tests only; FVD means nothing)"
    )
    random_seed: int = 0
    resolution: int = Field(
        224,
        ge=32,
        description="crop size of every preset (short side resized to it, centre crop); 224 is the "
        "common FVD code's, anything else is marked non-standard (smaller: tests)",
    )
    batch_size: int = Field(8, ge=1)
    device: str = "auto"
    real_vs_real: bool = Field(
        True,
        description="FVD of the N eval videos against N other real videos of the same set (the noise "
        "level at N); needs 2N real videos, else left out with the reason",
    )
    bootstrap: int = Field(
        200, ge=0, description="bootstrap resamples of the stored features per FVD (0: none)"
    )
    ci_level: float = Field(0.95, gt=0, lt=1, description="confidence level of every interval")


class ExternalVideos(_Strict):
    """How videos from a folder are made like the stage's before the preset's resize and crop."""

    resample_fps: bool = Field(False, description="resample to the stage fps (nearest earlier frame)")
    crop_aspect: bool = Field(False, description="centre-crop to the stage's aspect ratio")


class RealConfig(ExternalVideos):
    """The real set: the stage shards' split (optionally one source) or an external folder
    (`vjp eval --real-dir DIR --prompts FILE`; resample_fps / crop_aspect apply to it)."""

    sources: list[str] | None = Field(
        None, description="keep only samples of these sources (e.g. [pixabay], as the seed report did)"
    )


class BaselineConfig(ExternalVideos):
    """The baseline folder's videos (e.g. CogVideoX-2B: 8 fps, 720x480)."""


class AlignConfig(_Strict):
    """CLIP-style text-video alignment proxy: cosine of the Japanese prompt and sampled frames."""

    enabled: bool = False
    model: str = Field(
        "line-corporation/clip-japanese-base",
        description="hub id or local folder of a Japanese CLIP; the default needs the `align` extra "
        "(timm, sentencepiece) and trust_remote_code",
    )
    revision: str | None = Field(None, description="hub revision (a commit hash pins remote code too)")
    trust_remote_code: bool = Field(
        False,
        description="run the model repo's own code (line-corporation/clip-japanese-base needs it); "
        "never on by default",
    )
    frames: int = Field(4, ge=1, description="frames per video, evenly spaced; their scores are averaged")
    batch_size: int = Field(16, ge=1, description="frames per image-encoder call")
    device: str = "auto"


class ReportConfig(_Strict):
    videos: int = Field(16, ge=0, description="rows in the report grid (generated beside real)")
    strip_frames: int = Field(6, ge=1, description="frames per strip")
    strip_height: int = Field(96, ge=16, description="pixels")


class EvalConfig(_Strict):
    version: Literal[2] = 2
    seed: int = Field(0, description="which eval samples are chosen, and each sample's generation seed")
    num: int = Field(1000, ge=4, description="eval samples (the seed report uses 1,000; 4 at least)")
    split: Literal["eval", "train"] = Field("eval", description="split of the stage shards to evaluate on")
    protocol: list[Literal["fvd16", "stage"]] = Field(
        ["fvd16", "stage"],
        min_length=1,
        description="FVD presets (training/eval/protocol.py), the first is the headline: fvd16 = the "
        "common FVD code's 16 frames, stage = all the stage's frames",
    )
    real: RealConfig = RealConfig()
    baseline: BaselineConfig = BaselineConfig()
    generate: GenerateConfig = GenerateConfig()
    fvd: FVDConfig = FVDConfig()
    align: AlignConfig = AlignConfig()
    report: ReportConfig = ReportConfig()


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key.path=value` strings (values parsed as YAML) -> {dotted key: value}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_eval_config(path: str | Path | None = None, overrides: list[str] = ()) -> EvalConfig:
    """The `eval:` section of a YAML file (or the whole file), then dotted-key overrides."""
    data: dict[str, Any] = {}
    origin = "<defaults>"
    if path is not None:
        origin = str(path)
        data = read_yaml_section(path, "eval", what="eval config")
    for dotted, value in parse_overrides(list(overrides)).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"invalid eval config {origin}: {dotted}: {key} is not a mapping")
            node = child
        node[leaf] = value
    return validate(EvalConfig, data, origin, what="eval config")


# ---- metrics.json ----------------------------------------------------------------------------
ALIGN_LABEL = "CLIP proxy, not the seed's human study"


class Estimate(_Strict):
    value: float
    low: float = Field(description="lower end of the interval")
    high: float
    level: float = Field(description="confidence level")


class PresetFVD(_Strict):
    """The FVDs of one protocol preset."""

    preset: dict[str, Any] = Field(description="every setting of the preset (protocol.Preset)")
    generated_vs_real: Estimate | None = Field(
        description="FVD of the generated videos against the real ones"
    )
    baseline_vs_real: Estimate | None = None
    real_vs_real: Estimate | None = Field(
        None, description="the N real videos against N other real videos: the FVD of two real samples at N"
    )
    n_generated: int
    n_real: int
    n_baseline: int = 0
    n_reference: int = Field(0, description="real videos of the real-vs-real reference set")
    left_out_short: dict[str, int] = Field(
        default_factory=dict, description="videos per set with fewer frames than the preset needs"
    )
    notes: list[str] = Field(default_factory=list)


class AlignResult(_Strict):
    label: str = ALIGN_LABEL
    model: str
    revision: str | None
    frames: int
    generated: float = Field(description="mean cosine of prompt and generated frames")
    real: float = Field(description="mean cosine of caption and real frames (the reference level)")
    baseline: float | None = None
    pairs: int = Field(0, description="prompts scored for both the generated and the baseline video")
    wins: int = 0
    ties: int = Field(0, description="equal up to float rounding: left out of the share")
    win_share_vs_baseline: Estimate | None = Field(
        None,
        description="wins / (pairs - ties): share of prompts whose generated video scores above the "
        "baseline's, with its Wilson interval",
    )
    n: int


class RealSet(_Strict):
    kind: Literal["shards", "dir"]
    location: str = Field(description="stage shards folder or the external video folder")
    prompts: str | None = Field(None, description="the external set's prompts file")
    split: str | None = None
    sources: list[str] | None = None
    available: int = Field(description="readable samples after the source filter")
    n_reference: int = 0


class BaselineInfo(_Strict):
    dir: str
    files: int
    n: int
    matched_by_key: bool
    unmatched_files: int
    resample_fps: bool
    crop_aspect: bool
    fps: dict[str, int] = Field(description="videos per frame rate, as read from the files")
    sizes: dict[str, int] = Field(description="videos per WxH")
    frames: dict[str, int] = Field(description="min, median and max frames per video")
    videos_file: str = Field(description="per-video fps, size and frames (JSONL, in EVAL)")


class EvalMetrics(_Strict):
    """EVAL/metrics.json (schema eval_metrics.v2)."""

    schema_version: Literal["eval_metrics.v2"] = METRICS_SCHEMA
    checkpoint: str
    checkpoint_step: int | None
    real_set: RealSet
    stage: str
    stage_size: dict[str, float] = Field(description="frames, height, width, fps the videos are generated at")
    n_requested: int
    n: int = Field(description="eval samples chosen (and prompts generated)")
    seed: int
    protocol: list[str] = Field(description="the FVD presets run; the first is the headline")
    fvd: dict[str, PresetFVD] = Field(description="by preset name")
    feature_network: dict[str, Any] = Field(description="name, resolution, weights, weights_sha256, ...")
    sampler: dict[str, Any] = Field(description="the settings the videos were generated with")
    baseline: BaselineInfo | None = None
    alignment: AlignResult | None = None
    generated: dict[str, Any] = Field(description="written, reused, failed (key: reason)")
    errors: list[str] = Field(
        default_factory=list, description="inputs left out, each naming file and reason"
    )
    config: dict[str, Any]
    package_version: str
    elapsed_s: float


def json_schemas() -> dict[str, dict]:
    return {CONFIG_SCHEMA: EvalConfig.model_json_schema(), METRICS_SCHEMA: EvalMetrics.model_json_schema()}
