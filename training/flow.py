"""Rectified flow in the seed report's (Liu-style) direction: t=0 is noise, t=1 is data.

    x_t = (1 - t) * x0 + t * x1,   x0 ~ N(0, I),  x1 = scaled VAE latents
    v*  = x1 - x0,                 loss = mean ||v(x_t, t, text) - v*||^2
    sampling: Euler from t=0 to t=1,  x <- x + (t_next - t) * v

SD3, Open-Sora and Hunyuan put noise at t=1; every shift and logit-normal rule taken from them is
applied to (1 - t) here. `model_timestep` is the one place where t meets the DiT's timestep
embedding.
"""

from __future__ import annotations

import math

import torch

from training.config import FlowConfig

# The CogVideoX timestep embedding was trained on DDPM steps 0..999 with 999 = pure noise; keep
# that convention so a pretrained CogVideoX transformer sees noise levels where it expects them.
NUM_TRAIN_TIMESTEPS = 1000


def model_timestep(t: torch.Tensor) -> torch.Tensor:
    """Our t (0 = noise, 1 = data) -> the DiT's timestep input (999 = noise, 0 = data), float."""
    return (1.0 - t) * (NUM_TRAIN_TIMESTEPS - 1)


def auto_shift(latent_tokens: int, latent_frames: int) -> float:
    """Open-Sora 2.0's resolution shift: alpha = lin(HW/4 tokens: 256 -> 1, 4096 -> 3) * sqrt(T).

    latent_tokens is the spatial latent area (H' * W', before patchify) of one latent frame.
    256^2 x 48 frames gives ~3.5, 848x480 ~5.9: more of the budget goes to noisy steps at larger sizes.
    """
    hw = latent_tokens / 4.0
    base = 1.0 + (hw - 256.0) * (3.0 - 1.0) / (4096.0 - 256.0)
    return max(1.0, base) * math.sqrt(latent_frames)


def shift_noise_level(t: torch.Tensor, alpha: float) -> torch.Tensor:
    """Shift towards noise: with s = 1 - t the noise level, s' = alpha s / (1 + (alpha - 1) s)."""
    if alpha == 1.0:
        return t
    s = 1.0 - t
    s = alpha * s / (1.0 + (alpha - 1.0) * s)
    return 1.0 - s


def resolve_shift(cfg: FlowConfig, latent_shape: tuple[int, ...]) -> float:
    """The shift alpha for latents [F, C, H, W] (per sample)."""
    if cfg.shift is None:
        return 1.0
    if cfg.shift == "auto":
        f, _, h, w = latent_shape
        return auto_shift(h * w, f)
    return float(cfg.shift)


def sample_t(n: int, cfg: FlowConfig, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Training times t in (0, 1) for a batch of n, from the config's distribution, then shifted."""
    if cfg.timestep_sampling == "uniform":
        t = torch.rand(n, generator=generator)
    else:
        # logit-normal on the noise level s = 1 - t, as SD3 defines it, mapped to our direction
        s = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=generator))
        t = 1.0 - s
    return shift_noise_level(t, alpha)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    tt = t.view(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
    return (1.0 - tt) * x0 + tt * x1


def flow_loss(v_pred: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Mean squared error against the straight-line velocity, computed in fp32."""
    return torch.mean((v_pred.float() - (x1.float() - x0.float())) ** 2)


def euler_times(steps: int, alpha: float = 1.0) -> torch.Tensor:
    """steps+1 times from 0 (noise) to 1 (data), shifted like training so the schedules match."""
    return shift_noise_level(torch.linspace(0.0, 1.0, steps + 1), alpha)
