"""`vjp eval` configuration (the `eval:` section of a YAML file) and the metrics.json model.

Schemas: eval_config.v1 and eval_metrics.v1 in schemas/, generated from these models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from curation.configfile import ConfigError, read_yaml_section, validate

__all__ = ["ConfigError", "EvalConfig", "EvalMetrics", "json_schemas", "load_eval_config"]

CONFIG_SCHEMA = "eval_config.v1"
METRICS_SCHEMA = "eval_metrics.v1"


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
        224, ge=32, description="frames are resized to this square; 224 is standard FVD (smaller: tests)"
    )
    frames: int | None = Field(
        None,
        ge=1,
        description="frames per video fed to I3D; None = the fewest of the real and generated videos",
    )
    batch_size: int = Field(8, ge=1)
    device: str = "auto"
    real_vs_real: bool = Field(True, description="FVD of two halves of the real eval videos (the floor)")


class AlignConfig(_Strict):
    """CLIP-style text-video alignment proxy: cosine of the Japanese prompt and sampled frames."""

    enabled: bool = False
    model: str = Field(
        "line-corporation/clip-japanese-base", description="hub id or local folder of a Japanese CLIP"
    )
    revision: str | None = None
    trust_remote_code: bool = Field(
        False, description="run the model repo's own code (line-corporation/clip-japanese-base needs it)"
    )
    frames: int = Field(4, ge=1, description="frames per video, evenly spaced; their scores are averaged")
    batch_size: int = Field(16, ge=1, description="frames per image-encoder call")
    device: str = "auto"


class ReportConfig(_Strict):
    videos: int = Field(16, ge=0, description="rows in the report grid (generated beside real)")
    strip_frames: int = Field(6, ge=1, description="frames per strip")
    strip_height: int = Field(96, ge=16, description="pixels")


class EvalConfig(_Strict):
    version: Literal[1] = 1
    seed: int = Field(0, description="which eval samples are chosen, and each sample's generation seed")
    num: int = Field(1000, ge=4, description="eval samples (the seed report uses 1,000; 4 at least)")
    split: Literal["eval", "train"] = Field("eval", description="split of the stage shards to evaluate on")
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
class FVDResult(_Strict):
    generated_vs_real: float | None = Field(description="FVD of the generated videos against the real ones")
    baseline_vs_real: float | None = Field(None, description="FVD of the baseline folder's videos")
    real_vs_real: float | None = Field(None, description="FVD of two disjoint halves of the real videos")
    n_generated: int
    n_real: int
    n_baseline: int = 0
    n_real_half: int = Field(0, description="videos in each half of the real-vs-real floor")
    frames: int = Field(description="frames per video fed to the feature network")


class AlignResult(_Strict):
    model: str
    revision: str | None
    frames: int
    generated: float = Field(description="mean cosine of prompt and generated frames")
    real: float = Field(description="mean cosine of caption and real frames (the reference level)")
    baseline: float | None = None
    win_rate_vs_baseline: float | None = Field(
        None, description="share of prompts whose generated video scores above the baseline's"
    )
    n: int


class EvalMetrics(_Strict):
    """EVAL/metrics.json (schema eval_metrics.v1)."""

    schema_version: Literal["eval_metrics.v1"] = METRICS_SCHEMA
    checkpoint: str
    checkpoint_step: int | None
    shards: str
    stage: str
    split: str
    stage_size: dict[str, float] = Field(description="frames, height, width, fps of the stage shards")
    n_requested: int
    n: int = Field(description="eval samples chosen (and prompts generated)")
    seed: int
    fvd: FVDResult
    feature_network: dict[str, Any] = Field(description="name, resolution, weights, weights_sha256, ...")
    sampler: dict[str, Any] = Field(description="the settings the videos were generated with")
    baseline: dict[str, Any] | None = None
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
