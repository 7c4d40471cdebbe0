"""Text-video alignment proxy: CLIP-style cosine between a Japanese prompt and a video's frames.

The seed report judged prompt alignment with people (96% of pairs won against the baseline). An
automatic stand-in: a Japanese-capable CLIP (by hub id or local folder; default
line-corporation/clip-japanese-base, which runs its own repo code and so needs
`align.trust_remote_code: true`) embeds the prompt and `frames` evenly spaced frames; a video's
score is the mean cosine. It is reported beside the same score of the real videos for their own
captions (the level a perfect generator would reach) and, when a baseline's videos match the
prompts by key, as a win rate against the baseline.

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
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
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
