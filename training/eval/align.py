"""Text-video alignment proxy (a CLIP proxy, not the seed's human study): CLIP-style cosine between
a Japanese prompt and a video's frames.

The seed report judged prompt alignment with people (49 Japanese speakers; alignment 423 vs 18
won, quality 69 vs 372 lost against its baseline): `vjp compare` runs that study. This is an
automatic stand-in: a Japanese-capable CLIP (by hub id or local folder, `align.revision` pins it)
embeds the prompt and `frames` evenly spaced frames; a video's score is the mean cosine. The
default, line-corporation/clip-japanese-base, needs the `align` extra (timm, sentencepiece) and
runs its repository's own code, so it loads only with `align.trust_remote_code: true` (never the
default; pin `align.revision` to a commit you have read). Any CLIP that transformers loads without
remote code (CLIPModel, ChineseCLIP, AltCLIP, SigLIP) needs neither. The score is reported beside
the same score of the real videos for their own captions (the level a perfect generator would
reach) and, when a baseline's videos match the prompts by key, as a win share against the baseline
with its Wilson interval.

Any model with `get_text_features` / `get_image_features` works (CLIP, Chinese-CLIP, AltCLIP,
SigLIP, and remote-code Japanese CLIPs); tests use a tiny random CLIPModel built from a config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from training.eval.config import AlignConfig


def frame_indices(n_frames: int, k: int) -> np.ndarray:
    """k evenly spaced frame indices, first and last included (fewer when the video is shorter)."""
    if n_frames < 1:
        raise ValueError("video has no frames")
    return np.unique(np.linspace(0, n_frames - 1, min(k, n_frames)).round().astype(int))


def _embedding(out: Any) -> torch.Tensor:
    """get_*_features returns a tensor in most models, a pooled ModelOutput in transformers 5."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "text_embeds", "image_embeds"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find an embedding in {type(out).__name__}")


def _accepted(fn: Any) -> set[str]:
    """The parameters fn names (transformers' get_text_features also takes **kwargs, which are
    attention options, not tokenizer outputs: only named ones are passed)."""
    import inspect

    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds}


class Aligner:
    """A loaded CLIP-style model: prompt and frame embeddings, and their cosine per video."""

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, cfg: AlignConfig, device: str
    ) -> None:
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.cfg, self.device = cfg, device

    @classmethod
    def from_config(cls, cfg: AlignConfig) -> Aligner:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        from training.eval.features import pick_device

        kw: dict[str, Any] = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        try:
            model = AutoModel.from_pretrained(cfg.model, **kw)
            tokenizer = AutoTokenizer.from_pretrained(cfg.model, **kw)
            image_processor = AutoImageProcessor.from_pretrained(cfg.model, **kw)
        except ImportError as e:  # a remote-code model's own imports (timm, sentencepiece, ...)
            raise ValueError(
                f"align.model {cfg.model!r} needs a package that is not installed ({e}); "
                "pip install 'videojp-data[align]'"
            ) from None
        except (OSError, ValueError) as e:
            raise ValueError(f"align.model {cfg.model!r} does not load: {e}") from None
        device = pick_device(cfg.device)
        return cls(model.eval().to(device), tokenizer, image_processor, cfg, device)

    def text_embeddings(self, prompts: list[str]) -> np.ndarray:
        import torch

        limit = getattr(self.tokenizer, "model_max_length", None)
        kw: dict[str, Any] = {"padding": True, "return_tensors": "pt"}
        if isinstance(limit, int) and limit < 100_000:  # unset limits are a huge sentinel
            kw |= {"truncation": True, "max_length": limit}
        inputs = self.tokenizer(prompts, **kw)
        # Pass what the model's get_text_features takes (position_ids, token_type_ids, ...), not a
        # fixed pair: remote-code models may need more than input_ids and attention_mask.
        accepted = _accepted(self.model.get_text_features)
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in accepted}
        with torch.inference_mode():
            emb = _embedding(self.model.get_text_features(**inputs)).float()
        return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()

    def image_embeddings(self, frames: list[np.ndarray]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(frames), self.cfg.batch_size):
            pixels = self.image_processor(images=frames[i : i + self.cfg.batch_size], return_tensors="pt")
            pixel_values = pixels["pixel_values"].to(self.device)
            with torch.inference_mode():
                emb = _embedding(self.model.get_image_features(pixel_values=pixel_values)).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out)

    def scores(self, prompts: list[str], videos: list[np.ndarray]) -> list[float]:
        """Mean cosine of each prompt with `cfg.frames` evenly spaced frames of its video."""
        if len(prompts) != len(videos):
            raise ValueError(f"{len(prompts)} prompts for {len(videos)} videos")
        if not prompts:
            return []
        text = self.text_embeddings(prompts)
        picked = [frame_indices(len(v), self.cfg.frames) for v in videos]
        frames = [v[i] for v, idx in zip(videos, picked, strict=True) for i in idx]
        img = self.image_embeddings(frames)
        out, start = [], 0
        for t, idx in zip(text, picked, strict=True):
            out.append(float((img[start : start + len(idx)] @ t).mean()))
            start += len(idx)
        return out
