"""Video VAE presets and the latent geometry that follows from them.

Two presets, both classes that ship in diffusers:

    cogvideox  AutoencoderKLCogVideoX  8x8 space, 4x time, 16 channels  (THUDM/CogVideoX-2b, vae/)
    ltx        AutoencoderKLLTXVideo   32x32 space, 8x time, 128 channels (Lightricks/LTX-Video, vae/)

`vae.cls` (train:) and `encode.vae_cls` (shard:) take a preset name or any `module:Class`. The DiT
is sized from the latents a clip actually gives (training.modeling.VAE.latent_shape encodes zeros
once per size): in_channels = C, the positional table = F x H x W, and the patch is chosen so one
token covers ~16x16 pixels (patch 2 on the 8x VAE, patch 1 on the 32x VAE).

Also here: the decode of LTX-Video >= 0.9.1's timestep-conditioned VAEs (decode timestep and seeded
noise, as diffusers' LTXPipeline), and what `vjp encode` records about the VAE in every latent
sample, with `check_latent_vae`, which refuses a run whose `vae` config is not that VAE.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
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


# ---- LTX-Video >= 0.9.1: the timestep-conditioned decoder ------------------------------------
# The 0.9.1+ VAE configs have timestep_conditioning: true: the decoder does the last denoising step
# itself. diffusers' LTXPipeline mixes noise into the (denormalised) latents and passes the decode
# timestep as temb: z <- (1 - s) z + s noise; decode(z, temb=t). Its own defaults are t = 0.0 and
# s = t; the LTX-Video recipes for the timestep-aware VAE (diffusers' LTX docs) use t = 0.05 and
# s = 0.025, which is what null means here on such a VAE.
RECIPE_DECODE_TIMESTEP = 0.05
RECIPE_DECODE_NOISE_SCALE = 0.025


def timestep_conditioned(model: Any) -> bool:
    """True when the VAE's decoder takes a decode timestep (LTX-Video 0.9.1+)."""
    return bool(getattr(model, "config", {}).get("timestep_conditioning", False))


def injects_noise(model: Any) -> bool:
    """True when the decoder draws its own noise (LTX 0.9.1+'s decoder_inject_noise): it draws from
    torch's global RNG, so decode must be seeded for a video to be reproducible."""
    return any(getattr(model, "config", {}).get("decoder_inject_noise", None) or ())


def decode_settings(
    model: Any, timestep: float | None, noise_scale: float | None, where: str = "vae"
) -> tuple[float, float] | None:
    """(decode timestep, noise scale) for a timestep-conditioned decoder, null = the recipe's value;
    None for a decoder without conditioning (LTX 0.9.0, CogVideoX), where setting either is an
    error rather than a silent no-op."""
    if not timestep_conditioned(model):
        given = {k: v for k, v in (("decode_timestep", timestep), ("decode_noise_scale", noise_scale)) if v}
        if given:
            name = type(model).__name__
            raise ValueError(
                f"{where}: {', '.join(f'{k}={v}' for k, v in given.items())} but this {name} decoder has no "
                "timestep conditioning (LTX-Video 0.9.0, CogVideoX): leave them null"
            )
        return None
    t = RECIPE_DECODE_TIMESTEP if timestep is None else float(timestep)
    s = RECIPE_DECODE_NOISE_SCALE if noise_scale is None else float(noise_scale)
    if t < 0 or not 0 <= s <= 1:
        raise ValueError(f"{where}: decode_timestep={t} must be >= 0 and decode_noise_scale={s} in [0, 1]")
    return t, s


def decode_conditioned(
    model: Any, z: Any, settings: tuple[float, float] | None, generators: Sequence[Any], device: Any
) -> Any:
    """Denormalised latents [B, C, T, H, W] -> pixels [B, C, T', H', W'] through a timestep-conditioned
    (settings = (t, s)) or noise-injecting (settings None) decoder, one video at a time so each depends
    only on its own generator, not on the batch: the mixing noise is drawn on the CPU from the video's
    generator (the same on any device), and the decoder's injected noise from torch's RNG seeded from
    it and restored after."""
    import torch

    out = []
    for zi, g in zip(z.split(1), generators, strict=True):
        temb = None
        if settings is not None:
            t, s = settings
            noise = torch.randn(zi.shape, generator=g, dtype=torch.float32).to(zi.device, zi.dtype)
            zi = (1 - s) * zi + s * noise
            temb = torch.full((1,), t, device=zi.device, dtype=zi.dtype)
        seed = int(torch.randint(0, 2**62, (1,), generator=g))
        cuda = [device] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            out.append(model.decode(zi, temb).sample)
    return torch.cat(out)


# ---- which VAE made a latent shard ------------------------------------------------------------
def vae_location(model: str, subfolder: str | None) -> str:
    """The one string a VAE's weights are named by in records: `model` or `model/subfolder`."""
    return model if not subfolder else f"{model}/{subfolder}"


def preset_of(cls: str) -> str | None:
    """The preset name of a class (a preset name or module:Class), or None for another class."""
    if cls in PRESETS:
        return cls
    return next((name for name, p in PRESETS.items() if p.cls == cls), None)


def latent_record(vae_cls: str, revision: str | None, model: Any) -> dict[str, Any]:
    """What `vjp encode` records beside `vae` (path) and `vae_scaling_factor` in every sample's
    latents info, so a run can check it decodes with the VAE that encoded its shards."""
    spatial, temporal = compression_of(model)
    return {
        "vae_cls": resolve_cls(vae_cls),
        "vae_preset": preset_of(vae_cls),
        "vae_revision": revision,
        "vae_compression": [spatial, temporal],
    }


def _same_location(a: str, b: str) -> bool:
    """Equal VAE locations: hub ids as written, local folders by their real path."""
    import os

    def norm(p: str) -> str:
        p = p.rstrip("/")
        return os.path.realpath(p) if os.path.exists(p) else p

    return norm(a) == norm(b)


def _describe(cls: str | None, path: str, revision: str | None) -> str:
    name = "class not recorded" if cls is None else (preset_of(cls) or cls)
    detail = f"{cls}, " if cls is not None and preset_of(cls) else ""
    return f"{name} ({detail}{path}{f' @ {revision}' if revision else ''})"


def check_latent_vae(meta: dict[str, Any], vae_cfg: Any, source: str | None = None) -> None:
    """Raise ValueError when a run's `vae` config (class, weights, revision) is not the VAE that
    encoded its latent shards: the DiT would learn one VAE's latents and be decoded by another.

    `meta` is a latent sample's json (its `latents` info, training.data.sample_format.LatentInfo),
    `source` names where it came from (the shard URL) for the message. Shards encoded before the
    class was recorded have only the path: they are checked on it, with a warning. The scaling
    factor is not compared: `vae.scaling_factor` is an override by design."""
    import warnings

    lat = meta.get("latents")
    where = f"{source or 'latent shards'} (sample {meta.get('key', '?')}, stage {meta.get('stage', '?')})"
    if not lat:
        raise ValueError(f"{where}: no latents info in the sample json: not a vjp encode shard")
    run_cls = resolve_cls(vae_cfg.cls)
    run_path = vae_location(vae_cfg.model, vae_cfg.subfolder)
    run_rev = vae_cfg.revision
    shard_cls, shard_path, shard_rev = lat.get("vae_cls"), lat["vae"], lat.get("vae_revision")
    if shard_cls is None:
        warnings.warn(
            f"{where}: encoded before vjp encode recorded the VAE class; checking the VAE path only "
            f"({shard_path}); re-run vjp encode to record it",
            stacklevel=2,
        )
    mismatch = [
        what
        for what, bad in (
            ("class", shard_cls is not None and resolve_cls(shard_cls) != run_cls),
            ("weights", not _same_location(shard_path, run_path)),
            ("revision", shard_cls is not None and (shard_rev or None) != (run_rev or None)),
        )
        if bad
    ]
    if mismatch:
        verb = "differ" if len(mismatch) > 1 or mismatch == ["weights"] else "differs"
        compression = lat.get("vae_compression")
        made = f", {compression[0]}x space / {compression[1]}x time" if compression else ""
        raise ValueError(
            f"{where}: the latents were encoded by VAE {_describe(shard_cls, shard_path, shard_rev)}{made}, "
            f"but this run's vae config is {_describe(run_cls, run_path, run_rev)} ({' and '.join(mismatch)} "
            f"{verb}): set vae.cls / vae.model / vae.subfolder / vae.revision to the encoding VAE, or "
            "re-run vjp encode with this one"
        )
