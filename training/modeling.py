"""Factories for the three models: the CogVideoX DiT, the frozen text encoder, the frozen VAE.

Every model comes by hub id or local folder through `from_pretrained` (tests save tiny random
models and load them back through the same calls). The DiT is built from the CogVideoX-2B
configuration with its text side sized to the text encoder: text_embed_dim = the encoder's hidden
size, max_text_seq_length = text.max_length (the joint position embedding has exactly that many
text slots, so captions are always padded to it, and the padding is masked out of attention).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from training.config import COGVIDEOX_2B, TextConfig, TrainConfig, VAEConfig


# ---- masked joint attention ------------------------------------------------------------------
class MaskedJointAttnProcessor:
    """CogVideoX joint (text + video) attention in which padded text tokens are never attended.

    `attention_mask` is a key mask [B, L_text + N_video] (True = attend) passed through the
    transformer's `attention_kwargs`. Queries of padded text tokens still compute (their outputs
    never reach a video token), so the video output is exactly that of the unpadded caption.
    No RoPE: the 2B configuration uses sin-cos positions; a RoPE model is refused at build time.
    """

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if image_rotary_emb is not None:
            raise NotImplementedError("MaskedJointAttnProcessor does not apply RoPE")
        text_len = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        b = x.shape[0]
        q, k, v = (
            proj(x).view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)
            for proj in (attn.to_q, attn.to_k, attn.to_v)
        )
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        mask = None if attention_mask is None else attention_mask[:, None, None, :].to(torch.bool)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * out.shape[-1]).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out[:, text_len:], out[:, :text_len]


def use_masked_attention(transformer: torch.nn.Module) -> None:
    for block in transformer.transformer_blocks:
        block.attn1.set_processor(MaskedJointAttnProcessor())


def joint_mask(text_mask: torch.Tensor, video_tokens: int) -> torch.Tensor:
    """[B, L] text mask -> [B, L + N] key mask (every video token attends)."""
    ones = torch.ones(text_mask.shape[0], video_tokens, dtype=torch.bool, device=text_mask.device)
    return torch.cat([text_mask.to(torch.bool), ones], dim=1)


# ---- the DiT ---------------------------------------------------------------------------------
def transformer_config(cfg: TrainConfig, text_dim: int, latent_shape: Sequence[int]) -> dict[str, Any]:
    """The CogVideoX-2B configuration, overridden by config, sized to the text encoder and latents.

    latent_shape is [F, C, H, W] of one sample. sample_* set the size the sin-cos position table is
    built for, so the training shape never pays for recomputing it per step.
    """
    f, c, h, w = latent_shape
    out = {**COGVIDEOX_2B, **cfg.model.transformer_config}
    out.update(text_embed_dim=text_dim, max_text_seq_length=cfg.text.max_length)
    out.setdefault("in_channels", c)
    if out["in_channels"] != c:
        raise ValueError(f"model.transformer_config.in_channels={out['in_channels']} but the VAE gives {c}")
    out.setdefault("out_channels", c)
    vae_t = 4  # CogVideoX VAE temporal compression; sample_frames is in pixel frames (1 + 4 (F - 1))
    out.update(sample_frames=(f - 1) * vae_t + 1, sample_height=h, sample_width=w)
    out.setdefault("temporal_compression_ratio", vae_t)
    if out.get("use_rotary_positional_embeddings"):
        raise ValueError("RoPE CogVideoX configs (5B) are not supported by the masked attention processor")
    return out


def build_transformer(cfg: TrainConfig, text_dim: int, latent_shape: Sequence[int]) -> torch.nn.Module:
    from diffusers import CogVideoXTransformer3DModel

    if cfg.model.transformer:
        model = CogVideoXTransformer3DModel.from_pretrained(
            cfg.model.transformer,
            subfolder=cfg.model.transformer_subfolder,
            revision=cfg.model.transformer_revision,
            torch_dtype=torch.float32,  # fp32 master weights; compute dtype comes from FSDP's policy
        )
        if model.config.text_embed_dim != text_dim or model.config.max_text_seq_length != cfg.text.max_length:
            raise ValueError(
                f"{cfg.model.transformer}: text_embed_dim/max_text_seq_length "
                f"{model.config.text_embed_dim}/{model.config.max_text_seq_length} do not match the text "
                f"encoder ({text_dim}) and text.max_length ({cfg.text.max_length})"
            )
    else:
        model = CogVideoXTransformer3DModel(**transformer_config(cfg, text_dim, latent_shape))
    use_masked_attention(model)
    return model


def load_transformer(
    folder: str, subfolder: str | None = None, dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """An exported (or any diffusers) CogVideoX transformer folder, with masked attention."""
    from diffusers import CogVideoXTransformer3DModel

    model = CogVideoXTransformer3DModel.from_pretrained(folder, subfolder=subfolder, torch_dtype=dtype)
    use_masked_attention(model)
    return model


# ---- frozen text encoder ---------------------------------------------------------------------
class TextEncoder:
    """A causal LM as a frozen text encoder: captions -> ([B, max_length, D], mask [B, max_length])."""

    def __init__(self, cfg: TextConfig, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.cfg, self.device = cfg, device
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, revision=cfg.revision)
        if self.tokenizer.pad_token is None:  # padding is masked out; any id works
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"  # causal LM: right padding leaves real tokens unchanged
        from transformers.utils import logging as hf_logging

        # The encoder is the base model inside a causal-LM checkpoint: its unused lm_head is expected.
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            self.model = AutoModel.from_pretrained(cfg.model, revision=cfg.revision, dtype=dtype).to(device)
        finally:
            hf_logging.set_verbosity(level)
        self.model.eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(
            list(captions),
            max_length=self.cfg.max_length,
            truncation=True,
            padding="max_length",
            return_tensors="pt",
        )
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=self.cfg.hidden_layer != -1)
        hidden = (
            out.last_hidden_state if self.cfg.hidden_layer == -1 else out.hidden_states[self.cfg.hidden_layer]
        )
        mask = mask.bool()
        # An empty caption (CFG dropout) still has its BOS/EOS token or nothing; keep >= 1 key so
        # attention over text is never all-masked (the softmax would have nothing to normalise).
        mask[:, 0] = True
        return hidden.float() * mask[..., None], mask


def text_embed_dim(cfg: TextConfig) -> int:
    """Hidden size of the text encoder from its config alone (no weights loaded)."""
    if cfg.embed_dim:
        return cfg.embed_dim
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(cfg.model, revision=cfg.revision).hidden_size)


def pad_text(emb: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Precomputed (loader-padded) embeddings [B, L, D] -> exactly `length` slots, truncating or padding."""
    b, n, d = emb.shape
    if n >= length:
        emb, mask = emb[:, :length], mask[:, :length].clone()
    else:
        emb = torch.cat([emb, emb.new_zeros(b, length - n, d)], dim=1)
        mask = torch.cat([mask, mask.new_zeros(b, length - n)], dim=1)
    mask[:, 0] = True
    return emb, mask


# ---- frozen VAE ------------------------------------------------------------------------------
def _vae_class(path: str) -> Any:
    module, _, name = path.partition(":")
    if not name:
        raise ValueError(f"vae.cls {path!r}: expected module:Class")
    return getattr(importlib.import_module(module), name)


class VAE:
    """Frozen video VAE: pixels [B, T, C, H, W] in [-1, 1] <-> scaled latents [B, F, C', H', W']."""

    def __init__(self, cfg: VAEConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.device, self.dtype = device, dtype
        self.model = (
            _vae_class(cfg.cls)
            .from_pretrained(cfg.model, subfolder=cfg.subfolder, revision=cfg.revision, torch_dtype=dtype)
            .to(device)
        )
        self.model.eval().requires_grad_(False)
        if cfg.tiling and hasattr(self.model, "enable_tiling"):
            self.model.enable_tiling()
        self.scaling_factor = float(cfg.scaling_factor or self.model.config.scaling_factor)
        self.posterior = cfg.posterior
        self._shapes: dict[tuple[int, int, int], tuple[int, int, int, int]] = {}

    @torch.no_grad()
    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = video.to(self.device, self.dtype).permute(0, 2, 1, 3, 4)  # B, C, T, H, W
        dist = self.model.encode(x).latent_dist
        lat = dist.mean if self.posterior == "mean" else dist.sample(generator)
        return (lat.float() * self.scaling_factor).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = (latents.float() / self.scaling_factor).permute(0, 2, 1, 3, 4).to(self.device, self.dtype)
        return self.model.decode(z).sample.float().permute(0, 2, 1, 3, 4)  # B, T, C, H, W

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """[F, C, H, W] latents of a clip of this size, measured by encoding zeros once per size:
        exact for any VAE class (CogVideoX's 48 -> 12 frames folds the first frame into the first
        chunk; a deeper-compression VAE has its own rule), and cached."""
        key = (frames, height, width)
        if key not in self._shapes:
            z = torch.zeros(1, 3, frames, height, width, device=self.device, dtype=self.dtype)
            with torch.no_grad():
                c, f, h, w = self.model.encode(z).latent_dist.mean.shape[1:]  # no RNG drawn
            self._shapes[key] = (f, c, h, w)
        return self._shapes[key]
