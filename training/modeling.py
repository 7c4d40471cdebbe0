"""Factories for the three models: the CogVideoX DiT, the frozen text encoder, the frozen VAE.

Every model comes by hub id or local folder through `from_pretrained` (tests save tiny random
models and load them back through the same calls). The DiT is built from the CogVideoX-2B
configuration with its text side sized to the text encoder: text_embed_dim = the encoder's hidden
size, max_text_seq_length = text.max_length (the joint position embedding has exactly that many
text slots, so captions are always padded to it, and the padding is masked out of attention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from training.config import COGVIDEOX_2B, TextConfig, TrainConfig, VAEConfig

# ---- masked joint attention ------------------------------------------------------------------
ATTENTION_MODES = ("flex", "sdpa")
FLEX_BLOCK = 128  # FlexAttention's default tile


def resolve_attention(mode: str, device: torch.device) -> str:
    """auto -> flex on CUDA (a fused kernel that honours the mask), sdpa on the CPU."""
    if mode == "auto":
        return "flex" if device.type == "cuda" else "sdpa"
    if mode not in ATTENTION_MODES:
        raise ValueError(f"model.attention={mode!r}: expected auto, flex or sdpa")
    return mode


_compiled_flex: Any = None


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any) -> torch.Tensor:
    """FlexAttention: compiled into a fused kernel on CUDA (once per process; inside a compiled block
    this inlines); eager on the CPU, where it is the unfused reference the tests compare."""
    from torch.nn.attention import flex_attention as fa

    global _compiled_flex
    if torch.compiler.is_compiling():  # inside a compiled block (parallel.compile): traced in place
        return fa.flex_attention(q, k, v, block_mask=block_mask)
    if q.device.type != "cuda":
        import warnings

        with warnings.catch_warnings():  # "called without torch.compile()": intended on the CPU
            warnings.simplefilter("ignore", UserWarning)
            return fa.flex_attention(q, k, v, block_mask=block_mask)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(fa.flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask)


def padding_block_mask(key_valid: torch.Tensor, block: int = FLEX_BLOCK) -> Any:
    """A FlexAttention BlockMask for a key padding mask [B, S] (True = attend), every query alike.

    Built from per-block counts (O(B S), no S x S mask): a key block with every key valid is a full
    block (no mask_mod work), one with some valid keys is partial (mask_mod reads key_valid), one
    with none is skipped. Same result as create_block_mask(lambda b, h, q, kv: key_valid[b, kv]).
    """
    from torch.nn.attention.flex_attention import BlockMask

    b, s = key_valid.shape
    n = -(-s // block)
    valid = torch.zeros(b, n * block, dtype=torch.bool, device=key_valid.device)
    valid[:, :s] = key_valid.to(torch.bool)
    counts = valid.view(b, n, block).sum(-1)
    sizes = torch.full((n,), block, device=valid.device)
    sizes[-1] = s - (n - 1) * block
    full = counts == sizes
    if s % block:  # the ragged last block goes through the mask_mod path, as create_block_mask does
        full[:, -1] = False
    partial = (counts > 0) & ~full

    def blocks(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.argsort((~sel).to(torch.int8), dim=1, stable=True).to(torch.int32)  # selected first
        num = sel.sum(1).to(torch.int32)
        return num[:, None, None].expand(b, 1, n).contiguous(), idx[:, None, None, :].expand(
            b, 1, n, n
        ).contiguous()

    kv_num, kv_idx = blocks(partial)
    full_num, full_idx = blocks(full)

    def mask_mod(bi: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return valid[bi, kv]

    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(s, s)
    )


class MaskedJointAttnProcessor:
    """CogVideoX joint (text + video) attention in which padded text tokens are never attended.

    `attention_mask` comes through the transformer's `attention_kwargs`: either a key mask
    [B, L_text + N_video] (True = attend) for SDPA (the reference: a boolean mask makes SDPA fall
    back from flash attention to the efficient or math kernel), or a FlexAttention BlockMask from
    `padding_block_mask` (a fused kernel that skips the mask work on unmasked tiles). Queries of
    padded text tokens still compute (their outputs never reach a video token), so the video output
    is exactly that of the unpadded caption. No RoPE: the 2B configuration uses sin-cos positions;
    a RoPE model is refused at build time.
    """

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: Any = None,
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
        if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
            out = flex_attention(q, k.to(q.dtype), v.to(q.dtype), attention_mask)
        else:
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


def attention_kwargs(mode: str, text_mask: torch.Tensor, video_tokens: int) -> dict[str, Any]:
    """The transformer's attention_kwargs that keep padding out of attention in `mode` (flex | sdpa):
    built once per forward and shared by every block."""
    key_valid = joint_mask(text_mask, video_tokens)
    if mode == "flex":
        return {"attention_mask": padding_block_mask(key_valid)}
    return {"attention_mask": key_valid}


# ---- the DiT ---------------------------------------------------------------------------------
def transformer_config(
    cfg: TrainConfig, text_dim: int, latent_shape: Sequence[int], spatial_compression: int | None = None
) -> dict[str, Any]:
    """The CogVideoX-2B configuration, overridden by config, sized to the text encoder and latents.

    latent_shape is [F, C, H, W] of one sample. sample_* set the size the sin-cos position table is
    built for, so the training shape never pays for recomputing it per step. spatial_compression
    (pixels per latent cell, measured) picks the patch unless the config sets one: 2 on CogVideoX's
    8x VAE, 1 on a 32x VAE (training.vae.default_patch_size).
    """
    from training.vae import default_patch_size

    f, c, h, w = latent_shape
    out = {**COGVIDEOX_2B, **cfg.model.transformer_config}
    if spatial_compression and "patch_size" not in cfg.model.transformer_config:
        out["patch_size"] = default_patch_size(spatial_compression)
    if h % out["patch_size"] or w % out["patch_size"]:
        raise ValueError(f"latents {h}x{w} are not divisible by the DiT patch_size {out['patch_size']}")
    out.update(text_embed_dim=text_dim, max_text_seq_length=cfg.text.max_length)
    user = cfg.model.transformer_config  # channels follow the latents unless the config pins them
    out["in_channels"] = user.get("in_channels", c)
    if out["in_channels"] != c:
        raise ValueError(f"model.transformer_config.in_channels={out['in_channels']} but the VAE gives {c}")
    out["out_channels"] = user.get("out_channels", c)
    # The DiT only uses these two to size its position table to F latent frames ((sample_frames - 1)
    # // 4 + 1 = F), so 4 is right for any VAE: the table follows the measured F, not the VAE's ratio.
    vae_t = 4
    out.update(sample_frames=(f - 1) * vae_t + 1, sample_height=h, sample_width=w)
    out.setdefault("temporal_compression_ratio", vae_t)
    if out.get("use_rotary_positional_embeddings"):
        raise ValueError("RoPE CogVideoX configs (5B) are not supported by the masked attention processor")
    return out


def build_transformer(
    cfg: TrainConfig, text_dim: int, latent_shape: Sequence[int], spatial_compression: int | None = None
) -> torch.nn.Module:
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
        model = CogVideoXTransformer3DModel(
            **transformer_config(cfg, text_dim, latent_shape, spatial_compression)
        )
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
    """A causal LM as a frozen text encoder, the one implementation of the trainer, the sampler and
    `vjp encode` (training.data.encode.Encoders): same tokenizer settings, same hidden layer.

    encode(): captions -> ([B, max_length, D] zero at padding, mask [B, max_length]) for the DiT;
    encode_unpadded(): each caption's real tokens [L_i, D], what latent shards store (the loader pads
    them again with zeros and a mask, so both paths give the DiT the same input).
    """

    def __init__(self, cfg: TextConfig, device: torch.device | str, dtype: torch.dtype) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.cfg, self.device = cfg, torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, revision=cfg.revision)
        if self.tokenizer.pad_token is None:  # padding is masked out; any id works
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"  # causal LM: right padding leaves real tokens unchanged
        from transformers.utils import logging as hf_logging

        # The encoder is the base model inside a causal-LM checkpoint: its unused lm_head is expected.
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            self.model = AutoModel.from_pretrained(cfg.model, revision=cfg.revision, dtype=dtype).to(
                self.device
            )
        finally:
            hf_logging.set_verbosity(level)
        self.model.eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def _hidden(self, captions: Sequence[str], padding: str) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(
            list(captions),
            max_length=self.cfg.max_length,
            truncation=True,
            padding=padding,
            return_tensors="pt",
        )
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=self.cfg.hidden_layer != -1)
        hidden = (
            out.last_hidden_state if self.cfg.hidden_layer == -1 else out.hidden_states[self.cfg.hidden_layer]
        )
        return hidden, mask.bool()

    def encode(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = self._hidden(captions, "max_length")
        # An empty caption (CFG dropout) still has its BOS/EOS token or nothing; keep >= 1 key so
        # attention over text is never all-masked (the softmax would have nothing to normalise).
        mask[:, 0] = True
        return hidden.float() * mask[..., None], mask

    def encode_unpadded(self, captions: Sequence[str]) -> list[torch.Tensor]:
        hidden, mask = self._hidden(captions, "longest")
        return [h[: int(n)] for h, n in zip(hidden, mask.sum(1).tolist(), strict=True)]


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
    from training.vae import vae_class

    return vae_class(path)


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
        self.decode_timestep, self.decode_noise_scale = cfg.decode_timestep, cfg.decode_noise_scale
        self.decode_settings(None, None)  # a decode setting on a decoder without conditioning: fail now
        self._shapes: dict[tuple[int, int, int], tuple[int, int, int, int]] = {}

    @torch.no_grad()
    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = video.to(self.device, self.dtype).permute(0, 2, 1, 3, 4)  # B, C, T, H, W
        from training.vae import normalize

        dist = self.model.encode(x).latent_dist
        lat = normalize(self.model, dist.mean if self.posterior == "mean" else dist.sample(generator))
        return (lat.float() * self.scaling_factor).permute(0, 2, 1, 3, 4).contiguous()

    def decode_settings(
        self, timestep: float | None = None, noise_scale: float | None = None
    ) -> tuple[float, float] | None:
        """(decode timestep, noise scale) of a timestep-conditioned decoder (LTX-Video 0.9.1+): the
        arguments, else the config's, else the recipe's; None for a decoder without conditioning."""
        from training.vae import decode_settings

        t = self.decode_timestep if timestep is None else timestep
        s = self.decode_noise_scale if noise_scale is None else noise_scale
        return decode_settings(self.model, t, s, where="vae")

    @torch.no_grad()
    def decode(
        self,
        latents: torch.Tensor,
        generators: Sequence[torch.Generator] | None = None,
        timestep: float | None = None,
        noise_scale: float | None = None,
    ) -> torch.Tensor:
        """Scaled latents [B, F, C, H, W] -> pixels [B, T, C, H, W]. A timestep-conditioned decoder
        (LTX-Video 0.9.1+) gets diffusers' LTXPipeline decode: seeded noise mixed into the latents and
        the decode timestep, video i drawing from generators[i] (default: seed 0 each), so a seed gives
        the same pixels whatever the batch. Other decoders ignore the generators."""
        from training.vae import decode_conditioned, denormalize, injects_noise

        z = (latents.float() / self.scaling_factor).permute(0, 2, 1, 3, 4).to(self.device, self.dtype)
        z = denormalize(self.model, z)
        settings = self.decode_settings(timestep, noise_scale)
        if settings is None and not injects_noise(self.model):
            return self.model.decode(z).sample.float().permute(0, 2, 1, 3, 4)
        if generators is None:
            generators = [torch.Generator().manual_seed(0) for _ in range(z.shape[0])]
        pixels = decode_conditioned(self.model, z, settings, generators, self.device)
        return pixels.float().permute(0, 2, 1, 3, 4)

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
