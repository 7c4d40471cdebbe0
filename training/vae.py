"""Video VAE presets and the latent geometry that follows from them.

Two presets, both classes that ship in diffusers:

    cogvideox  AutoencoderKLCogVideoX  8x8 space, 4x time, 16 channels  (THUDM/CogVideoX-2b, vae/)
    ltx        AutoencoderKLLTXVideo   32x32 space, 8x time, 128 channels (Lightricks/LTX-Video, vae/)

`vae.cls` (train:) and `encode.vae_cls` (shard:) take a preset name or any `module:Class`. The DiT
is sized from the latents a clip actually gives (training.modeling.VAE.latent_shape encodes zeros
once per size): in_channels = C, the positional table = F x H x W, and the patch is chosen so one
token covers ~16x16 pixels (patch 2 on the 8x VAE, patch 1 on the 32x VAE).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VAEPreset:
    cls: str
    model: str
    subfolder: str | None
    spatial: int  # pixels per latent cell per side
    temporal: int  # pixel frames per latent frame after the first (causal: 1 + temporal * (F - 1))
    channels: int


PRESETS: dict[str, VAEPreset] = {
    "cogvideox": VAEPreset("diffusers:AutoencoderKLCogVideoX", "THUDM/CogVideoX-2b", "vae", 8, 4, 16),
    "ltx": VAEPreset("diffusers:AutoencoderKLLTXVideo", "Lightricks/LTX-Video", "vae", 32, 8, 128),
}
TOKEN_PIXELS = 16  # pixels per DiT token per side that the patch size aims at (CogVideoX: 8 x patch 2)


def resolve_cls(name: str) -> str:
    """A preset name -> its module:Class; a module:Class is returned as it is."""
    return PRESETS[name].cls if name in PRESETS else name


def vae_class(name: str) -> Any:
    path = resolve_cls(name)
    module, _, cls = path.partition(":")
    if not cls:
        raise ValueError(f"vae class {name!r}: expected a preset ({', '.join(PRESETS)}) or module:Class")
    return getattr(importlib.import_module(module), cls)


def latent_shape(preset: VAEPreset, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """[F, C, H, W] from the compression ratios alone (both VAEs are causal in time: the first frame
    is its own latent frame; a side that is not a multiple of the ratio rounds up, as LTX's strided
    convs do: 848 -> 27 cells, decoded back to 864 pixels). tests/test_deep_vae.py checks it against
    real encodes of both classes."""
    s = preset.spatial
    return (frames - 1) // preset.temporal + 1, preset.channels, -(-height // s), -(-width // s)


def default_patch_size(spatial_compression: int) -> int:
    """The DiT patch that makes a token ~TOKEN_PIXELS wide: 2 on an 8x VAE, 1 on a 16x or 32x VAE."""
    return max(1, TOKEN_PIXELS // max(1, spatial_compression))


def compression_of(model: Any) -> tuple[int, int]:
    """(spatial, temporal) compression of a loaded diffusers video VAE, from its attributes or config."""
    own = vars(model)  # LTX sets both as attributes; CogVideoX has the temporal one in its config only
    cfg = model.config
    s = own.get("spatial_compression_ratio") or cfg.get("spatial_compression_ratio")
    t = own.get("temporal_compression_ratio") or cfg.get("temporal_compression_ratio", 1)
    if s is None:  # CogVideoX: one 2x downsample per block after the first
        s = 2 ** (len(cfg.block_out_channels) - 1)
    return int(s), int(t)


def _channel_stats(model: Any, like: Any) -> tuple[Any, Any] | None:
    """LTX's per-channel latents_mean / latents_std buffers as [1, C, 1, 1, 1], or None (CogVideoX)."""
    # buffers only: a plain getattr falls through to diffusers' deprecated config attribute access
    buffers = dict(model.named_buffers(recurse=False)) if hasattr(model, "named_buffers") else {}
    mean, std = buffers.get("latents_mean"), buffers.get("latents_std")
    if mean is None or std is None:
        return None
    shape = (1, -1, 1, 1, 1)
    return mean.view(shape).to(like.device, like.dtype), std.view(shape).to(like.device, like.dtype)


def normalize(model: Any, latents: Any) -> Any:
    """Posterior latents [B, C, T, H, W] -> per-channel standardised ones, as diffusers' LTX pipeline
    does before scaling_factor (identity for a VAE without latents_mean / latents_std)."""
    stats = _channel_stats(model, latents)
    return latents if stats is None else (latents - stats[0]) / stats[1]


def denormalize(model: Any, latents: Any) -> Any:
    """The inverse of normalize, before decode."""
    stats = _channel_stats(model, latents)
    return latents if stats is None else latents * stats[1] + stats[0]
