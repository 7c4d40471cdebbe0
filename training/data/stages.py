"""Stage presets and the shard/encode configuration, loaded from YAML (jobs/configs/shard.yaml).

Presets live in config, not code: a user adds `stage3` in YAML. Unknown keys are errors naming
their path. The config hash written into every sample and index covers only what changes the
bytes of a stage's shards (format, seed, that stage's preset, split, caption choice), so adding a
stage or retuning the runner never rewrites existing shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curation.configfile import ConfigError, read_yaml_section, validate
from training.data.sample_format import FORMAT, config_hash

__all__ = ["ConfigError", "ShardConfig", "StagePreset", "load_config", "parse_config"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class StagePreset(_Strict):
    """One resolution stage: what every sample of its shards looks like, and how shards are cut."""

    width: int = Field(ge=16, description="pixels; a multiple of 16 (VAE 8x, DiT patch 2)")
    height: int = Field(ge=16)
    frames: int = Field(48, ge=1, description="frames per sample")
    fps: float = Field(24.0, gt=0, description="frames are sampled from the clip at this rate")
    max_upscale: float = Field(
        1.0, ge=1.0, description="largest upscale allowed; a clip needing more is left out (too_small)"
    )
    min_area_kept: float = Field(
        0.5, gt=0, le=1, description="center crop must keep this share of the content (aspect_mismatch)"
    )
    codec: str = Field("libx264", description="H.264 encoder (PyAV/FFmpeg name)")
    crf: int = Field(18, ge=0, le=51)
    preset: str = Field("medium", description="x264 preset")
    target_shard_bytes: int | None = Field(
        1_000_000_000, ge=1, description="approximate tar size; None = by max_shard_samples only"
    )
    max_shard_samples: int = Field(1000, ge=1)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"{v} is not a multiple of 16 (VAE downsamples 8x, the DiT patch is 2)")
        return v


class SplitConfig(_Strict):
    eval_fraction: float = Field(0.02, ge=0, le=1, description="share of SOURCE VIDEOS held out for eval")
    salt: str = Field(
        "videojp-split-v1",
        description="hashed with video_id; not seed or stage: every stage holds out the same videos",
    )


class CaptionChoice(_Strict):
    types: list[str] = Field(
        default_factory=lambda: ["dense", "short"],
        min_length=1,
        description="caption types in order of preference; only status=ok captions are used for txt",
    )
    fallback: Literal["none", "source_caption"] = Field(
        "none", description="source_caption: use the (English) source caption when no ok caption exists"
    )


class RunnerConfig(_Strict):
    max_in_flight: int = Field(0, ge=0, description="shard tasks in flight; 0 = 2 x cluster CPUs")
    num_cpus_per_shard: float = Field(1.0, gt=0)
    probe_batch: int = Field(64, ge=1, description="clip files probed per task while planning")
    calibration_samples: int = Field(
        8, ge=1, description="samples encoded while planning to estimate bytes/sample (target_shard_bytes)"
    )
    decode_threads: int = Field(1, ge=0, description="FFmpeg decode threads per task (0 = auto)")
    progress: bool = True


class EncodeConfig(_Strict):
    """`vjp encode`: the frozen VAE and text encoder of the model being trained."""

    vae: str = Field("THUDM/CogVideoX-2b", description="hub id or local folder of the VAE")
    vae_subfolder: str | None = Field(
        "vae", description="subfolder inside `vae` (None for a bare VAE folder)"
    )
    vae_revision: str | None = None
    vae_cls: str = Field(
        "cogvideox",
        description="VAE class: a preset (cogvideox | ltx, training/vae.py) or module:Class of diffusers",
    )
    text_encoder: str = Field("llm-jp/llm-jp-3-1.8b", description="hub id or local folder (tokenizer too)")
    text_encoder_revision: str | None = None
    text_max_length: int = Field(512, ge=1, description="tokens; longer captions are truncated")
    device: str = Field("auto", description="auto = cuda when available, else cpu")
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "bfloat16", description="model dtype on GPU; CPU always runs float32"
    )
    store_dtype: Literal["float16", "float32"] = Field("float16", description="dtype of the npy members")
    vae_batch_size: int = Field(1, ge=1)
    text_batch_size: int = Field(16, ge=1)
    vae_tiling: bool = Field(False, description="tiled VAE encode: less memory at 848x480 on small GPUs")


class ShardConfig(_Strict):
    version: Literal[1] = 1
    seed: int = Field(0, description="frame-window choice and shard order derive from seed + clip id")
    stages: dict[str, StagePreset] = Field(default_factory=dict)
    split: SplitConfig = SplitConfig()
    captions: CaptionChoice = CaptionChoice()
    runner: RunnerConfig = RunnerConfig()
    encode: EncodeConfig = EncodeConfig()
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for --out/--shards URLs (endpoint_url, region, anon, profile); "
        "credentials come from the environment, never from here",
    )

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, v: dict[str, Any]) -> dict[str, Any]:
        from training.data.store import check_storage_options

        return check_storage_options(v)

    @model_validator(mode="after")
    def _stage_names(self) -> ShardConfig:
        for name in self.stages:
            if not name.replace("_", "").isalnum() or name in (".", ".."):
                raise ValueError(f"stage name {name!r}: letters, digits and _ only (it is a folder name)")
        return self

    def stage(self, name: str) -> StagePreset:
        if name not in self.stages:
            raise ConfigError(
                f"unknown stage {name!r}; configured: {', '.join(sorted(self.stages)) or 'none'}"
            )
        return self.stages[name]

    def stage_hash(self, name: str) -> str:
        """Everything that changes the bytes of this stage's shards, and nothing else."""
        return config_hash(
            {
                "format": FORMAT,
                "seed": self.seed,
                "stage": name,
                "preset": self.stage(name).model_dump(mode="json"),
                "split": self.split.model_dump(mode="json"),
                "captions": self.captions.model_dump(mode="json"),
            }
        )

    def encode_hash(self, stage_hash: str) -> str:
        enc = self.encode.model_dump(mode="json")
        for k in ("device", "vae_batch_size", "text_batch_size"):  # throughput knobs, not content
            enc.pop(k)
        if enc["vae_cls"] == "cogvideox":  # the former only class: shards encoded before stay valid
            enc.pop("vae_cls")
        return config_hash({"shards": stage_hash, "encode": enc})


def parse_config(data: dict[str, Any] | None, origin: str = "<dict>") -> ShardConfig:
    return validate(ShardConfig, data, origin)


def load_config(path: str | Path) -> ShardConfig:
    """Load a shard YAML (the whole file, or its `shard:` section)."""
    return parse_config(read_yaml_section(path, "shard"), str(path))
