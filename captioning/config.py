"""Typed configuration of the caption step (one YAML file, unknown keys are errors).

Everything that changes what a caption says (model, prompts, frames, sampling, QA, post-processing)
goes into the config hash stored on every row; transport and scheduling knobs (endpoint,
concurrency, batch sizes, Ray resources) do not, so retuning throughput never invalidates captions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from captioning.prompts import DEFAULT_SYSTEM_PROMPT, DEFAULT_TEMPLATES, PromptTemplate
from curation.configfile import ConfigError, read_yaml_section, validate

__all__ = ["CaptionConfig", "ConfigError", "config_from_dict", "load_config"]

DEFAULT_MODEL = "Qwen/Qwen2-VL-7B-Instruct"
BackendName = Literal["vllm", "openai", "transformers"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=())


class ModelConfig(_Strict):
    id: str = Field(DEFAULT_MODEL, description="Hub id or local directory of the model.")
    revision: str | None = Field(None, description="Hub revision (commit) to pin; recorded on every row.")
    # Qwen2.5-VL takes the sampling fps as an extra processor input (absolute time in M-RoPE);
    # "auto" reads config.json (local dirs) or guesses from the id.
    family: Literal["auto", "qwen2_vl", "qwen2_5_vl"] = "auto"
    dtype: str = Field("auto", description="torch dtype name, or 'auto' (bfloat16 on GPU, float32 on CPU).")
    trust_remote_code: bool = False


class FramesConfig(_Strict):
    """Frame sampling through qwen-vl-utils. The pixel budget is explicit on purpose: recent
    qwen-vl-utils derive it from MODEL_SEQ_LEN=128000, which overflows Qwen2-VL-7B's 32k context."""

    fps: float = Field(2.0, gt=0)
    min_frames: int = Field(4, ge=2)
    max_frames: int = Field(64, ge=2)
    min_pixels: int = Field(128 * 28 * 28, gt=0, description="Per-frame lower bound (pixels).")
    max_pixels: int = Field(360 * 420, gt=0, description="Per-frame upper bound (pixels).")
    # total_pixels / (28*28) is the video token budget: 20480 tokens leaves ~12k of a 32k context
    # for the prompt and the answer.
    total_pixels: int = Field(20480 * 28 * 28, gt=0, description="Whole-video pixel budget.")
    video_reader: Literal["decord", "torchcodec", "torchvision"] = "decord"
    image_patch_size: int = Field(14, description="14 for Qwen2/2.5-VL, 16 for Qwen3-VL.")

    @model_validator(mode="after")
    def _bounds(self) -> FramesConfig:
        # qwen-vl-utils asserts this deep inside fetch_video; fail at config load instead.
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"frames.min_pixels ({self.min_pixels}) > frames.max_pixels ({self.max_pixels})")
        if self.min_frames > self.max_frames:
            raise ValueError(f"frames.min_frames ({self.min_frames}) > frames.max_frames ({self.max_frames})")
        return self


class SamplingConfig(_Strict):
    temperature: float = Field(0.2, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    repetition_penalty: float = Field(1.05, gt=0)
    seed: int = 0


class SamplingOverride(_Strict):
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int | None = None


class RetryConfig(_Strict):
    """A caption failing QA is generated again with changed sampling, up to max_tries in all."""

    max_tries: int = Field(3, ge=1)
    # Override for try 2, 3, ...; the last entry repeats. The seed always moves with the try.
    schedule: list[SamplingOverride] = Field(
        default_factory=lambda: [
            SamplingOverride(temperature=0.7, repetition_penalty=1.1),
            SamplingOverride(temperature=1.0, top_p=0.95, repetition_penalty=1.15),
        ]
    )


class CaptionTypeConfig(_Strict):
    prompt_id: str
    max_tokens: int = Field(gt=0)
    min_chars: int = Field(ge=0)
    max_chars: int = Field(gt=0)
    enabled: bool = True


class HintsConfig(_Strict):
    """Source metadata offered to the model as unverified hints."""

    source_caption: bool = True
    source_meta: bool = True
    meta_keys: list[str] = Field(
        default_factory=lambda: ["youtube_title", "youtube_tags", "content_fine_category"]
    )
    max_chars: int = Field(400, gt=0, description="Hints are cut to this many characters.")


class PostprocessConfig(_Strict):
    strip_openers: bool = True
    # Longest first is not needed: the regex alternation is built longest-first.
    openers: list[str] = Field(
        default_factory=lambda: [
            "この動画は",
            "この動画では",
            "この動画には",
            "この動画の中で",
            "この動画の中では",
            "この映像は",
            "この映像では",
            "この映像には",
            "この画像は",
            "この画像では",
            "この画像には",
            "このビデオは",
            "このビデオでは",
            "このクリップは",
            "このクリップでは",
            "このシーンは",
            "このシーンでは",
            "動画では",
            "映像では",
        ]
    )
    strip_labels: list[str] = Field(
        default_factory=lambda: ["キャプション", "説明", "Caption", "Description"],
        description="Leading 'LABEL:' / 'LABEL：' prefixes to drop.",
    )


class QAConfig(_Strict):
    min_japanese_ratio: float = Field(0.7, ge=0, le=1, description="(kana + kanji) / letters.")
    min_kana_ratio: float = Field(
        0.1, ge=0, le=1, description="kana / (kana + kanji): Chinese has none, Japanese prose ~40%."
    )
    max_latin_ratio: float = Field(0.15, ge=0, le=1)
    max_repetition: float = Field(0.35, ge=0, le=1)
    repetition_ngram: int = Field(6, ge=2, description="Character n-gram length for the repetition score.")
    refusal_patterns: list[str] = Field(
        default_factory=lambda: [
            "申し訳",
            "すみません",
            "お手伝いできません",
            "見ることができません",
            "見ることはできません",
            "再生できません",
            "視聴できません",
            "AIとして",
            "AI言語モデル",
            "言語モデルとして",
            "I'm sorry",
            "I am sorry",
            "I cannot",
            "I can't",
            "As an AI",
            "language model",
            "抱歉",
            "无法",
            "作为一个",
        ]
    )


class VLLMConfig(_Strict):
    max_model_len: int = 32768
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    batch_size: int = Field(16, gt=0, description="Clips per engine.generate call (x caption types).")
    num_gpus_per_actor: float = Field(1.0, ge=0)
    num_actors: int = Field(1, ge=1, description="Size of the Ray actor pool (one engine each).")
    extra_engine_kwargs: dict[str, Any] = Field(default_factory=dict)


class OpenAIConfig(_Strict):
    endpoint: str = "http://127.0.0.1:8000/v1"
    model: str | None = Field(None, description="Served model name; defaults to model.id.")
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(120.0, gt=0)
    max_concurrency: int = Field(8, ge=1)
    max_attempts: int = Field(4, ge=1, description="HTTP attempts per generation (1 = no transport retry).")
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    # frames_mp4: the frames sampled here, re-encoded losslessly-ish, as a base64 data URL (every
    # backend then sees the same frames); clip: the clip file itself as a data URL (the server
    # samples, 32 frames by default); file_url: file:// path (server needs --allowed-local-media-path).
    video_transport: Literal["frames_mp4", "clip", "file_url"] = "frames_mp4"
    send_mm_processor_kwargs: bool = Field(
        False, description="Send frames.min/max_pixels per request (vLLM: needs --trust-request-mm-kwargs)."
    )
    extra_body: dict[str, Any] = Field(default_factory=dict)


class TransformersConfig(_Strict):
    device: str = Field("auto", description="'auto' = cuda if available, else cpu.")
    attn_implementation: str | None = None
    batch_size: int = Field(
        4, gt=0, description="Clips per part file; generation runs one request at a time."
    )


class RunConfig(_Strict):
    frame_workers: int = Field(2, ge=1, description="Threads (local) or Ray CPU tasks preparing frames.")
    frame_batch_size: int = Field(4, ge=1, description="Clips per Ray frame-prep task.")
    max_errored_blocks: int = Field(
        -1, description="Ray Data blocks allowed to fail (dead workers) before the job fails; -1 = any."
    )


class CaptionConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    frames: FramesConfig = Field(default_factory=FramesConfig)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    prompts: dict[str, PromptTemplate] = Field(
        default_factory=lambda: {k: v.model_copy(deep=True) for k, v in DEFAULT_TEMPLATES.items()}
    )
    caption_types: dict[str, CaptionTypeConfig] = Field(
        default_factory=lambda: {
            "short": CaptionTypeConfig(prompt_id="short_ja", max_tokens=96, min_chars=10, max_chars=120),
            # Japanese carries 2-3 Latin letters' worth per character: descriptive sentences run 20-35
            # characters, so two full sentences (subject and action, then setting or camera) are 40-70.
            # 60 rejected good two-sentence captions of 56-57; fragments and cut-off clauses stay below 40.
            "dense": CaptionTypeConfig(prompt_id="dense_ja", max_tokens=512, min_chars=40, max_chars=600),
        }
    )
    hints: HintsConfig = Field(default_factory=HintsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    qa: QAConfig = Field(default_factory=QAConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    transformers: TransformersConfig = Field(default_factory=TransformersConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _prompts_exist(self) -> CaptionConfig:
        for name, ct in self.caption_types.items():
            if ct.prompt_id not in self.prompts:
                raise ValueError(f"caption_types.{name}.prompt_id {ct.prompt_id!r} is not in prompts")
            if ct.min_chars > ct.max_chars:
                raise ValueError(f"caption_types.{name}: min_chars > max_chars")
        for pid, tpl in self.prompts.items():
            if tpl.id != pid:
                raise ValueError(f"prompts.{pid}.id is {tpl.id!r}; it must equal its key")
        return self

    def enabled_types(self) -> list[str]:
        return [name for name, ct in self.caption_types.items() if ct.enabled]

    def content_hash(self) -> str:
        """Hash of what decides caption content (not transport or scheduling), 16 hex digits."""
        keep = self.model_dump(
            mode="json",
            include={
                "model",
                "frames",
                "system_prompt",
                "prompts",
                "caption_types",
                "hints",
                "sampling",
                "retry",
                "postprocess",
                "qa",
            },
        )
        blob = json.dumps(keep, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_from_dict(data: dict[str, Any] | None, source: str = "<dict>") -> CaptionConfig:
    """Validate a (YAML-shaped) dict; the file may hold the section under a top-level 'caption' key."""
    data = dict(data or {})
    if set(data) == {"caption"}:
        data = dict(data["caption"] or {})
    return validate(CaptionConfig, data, source, what="caption config")


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> CaptionConfig:
    """Load the YAML config (defaults when path is None) and apply dotted-key overrides."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        data = read_yaml_section(path, "caption", what="caption config")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return config_from_dict(data, source)
