"""One interface for the three caption backends.

A backend turns a batch of requests (messages with one video placeholder + sampled frames +
sampling parameters) into one result per request, in order. Per-request failures come back as
results with `error` set; only setup failures (model cannot load) raise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from captioning.config import CaptionConfig, SamplingConfig, SamplingOverride
from captioning.frames import FrameSample


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one try, in the vocabulary all three backends translate from."""

    temperature: float
    top_p: float
    repetition_penalty: float
    max_tokens: int
    seed: int

    def to_json(self) -> str:
        return json.dumps(
            {
                k: getattr(self, k)
                for k in ("temperature", "top_p", "repetition_penalty", "max_tokens", "seed")
            },
            sort_keys=True,
        )


def sampling_for_try(
    base: SamplingConfig, schedule: list[SamplingOverride], max_tokens: int, try_index: int
) -> Sampling:
    """Sampling of try `try_index` (0 = first): base values, then the schedule's overrides.

    The seed moves with the try so that a retry at the same temperature still samples anew.
    """
    temp, top_p, rep, mt = base.temperature, base.top_p, base.repetition_penalty, max_tokens
    if try_index > 0 and schedule:
        ov = schedule[min(try_index - 1, len(schedule) - 1)]
        temp = ov.temperature if ov.temperature is not None else temp
        top_p = ov.top_p if ov.top_p is not None else top_p
        rep = ov.repetition_penalty if ov.repetition_penalty is not None else rep
        mt = ov.max_tokens if ov.max_tokens is not None else mt
    return Sampling(temp, top_p, rep, mt, base.seed + try_index)


@dataclass
class GenRequest:
    key: str  # "<clip_id>/<caption_type>", for logs and errors
    messages: list[dict[str, Any]]
    frames: FrameSample
    sampling: Sampling
    clip_path: str | None = None  # absolute path, for transports that send the clip itself


@dataclass
class GenResult:
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | None on error
    tokens_in: int | None = None
    tokens_out: int | None = None
    error: str | None = None
    attempts: int = 1  # transport attempts (HTTP retries count here)
    gen_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class CaptionBackend(Protocol):
    name: str
    model_id: str
    model_revision: str | None

    def generate(self, requests: list[GenRequest]) -> list[GenResult]: ...

    def close(self) -> None: ...


def model_family(cfg: CaptionConfig) -> str:
    """qwen2_vl or qwen2_5_vl: from config, else config.json of a local model, else the id."""
    if cfg.model.family != "auto":
        return cfg.model.family
    conf = Path(cfg.model.id) / "config.json"
    if conf.is_file():
        try:
            model_type = json.loads(conf.read_text(encoding="utf-8")).get("model_type", "")
        except ValueError:
            model_type = ""
        if model_type.startswith("qwen2_5_vl"):
            return "qwen2_5_vl"
        if model_type.startswith("qwen2_vl"):
            return "qwen2_vl"
    low = cfg.model.id.lower().replace("_", ".")
    return "qwen2_5_vl" if "qwen2.5-vl" in low or "qwen2.5vl" in low else "qwen2_vl"


def make_backend(name: str, cfg: CaptionConfig) -> CaptionBackend:
    """Build a backend by name; heavy imports (torch, vllm) happen only here, per backend."""
    if name == "vllm":
        from captioning.backends.vllm_engine import VLLMEngineBackend

        return VLLMEngineBackend(cfg)
    if name == "openai":
        from captioning.backends.openai_client import OpenAIBackend

        return OpenAIBackend(cfg)
    if name == "transformers":
        from captioning.backends.transformers_backend import TransformersBackend

        return TransformersBackend(cfg)
    raise ValueError(f"unknown backend {name!r} (vllm | openai | transformers)")
