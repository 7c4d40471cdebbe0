"""The sampler: Euler ODE from noise (t=0) to data (t=1) with classifier-free guidance.

    s = Sampler.from_checkpoint("RUN/checkpoints/step_000500")
    [video] = s.generate(["夕暮れの海辺を柴犬が走っている"], seeds=[0])   # uint8 [T, H, W, 3]
    write_mp4(video, "video.mp4", fps=s.settings["fps"])

It loads a checkpoint's export/ (EMA weights as a diffusers transformer folder plus videojp.json,
which names the text encoder and VAE and holds the training shape, shift and sampler defaults).
Defaults are the released VideoJP model's: 25 steps, guidance 2.5, the training size (256x256,
48 frames at 24 fps in stage 1). The unconditional branch is the empty caption, as in training's
caption dropout; a negative prompt replaces it.

Reproducibility: each video's noise comes from its own seed. Float results on the CPU (and kernel
choice on a GPU) depend on the batch shape and on torch's intra-op thread count, and one flipped
rounding changes the encoded mp4. With `batch_size=1` (the default: every video is its own
forward, cond and uncond together) under a fixed thread count (`fixed_threads`), a seed gives the
same video whatever else is generated with it and whichever process generates it (`vjp eval`
does this; a Ray actor starts with OMP_NUM_THREADS set to its CPU count).

A timestep-conditioned VAE (LTX-Video >= 0.9.1) decodes as diffusers' LTXPipeline does: noise mixed
into the latents and a decode timestep (vae.decode_timestep / vae.decode_noise_scale, null = the
LTX recipe's 0.05 / 0.025). That noise, and the decoder's own injected noise, come from the video's
seed too, and each such video is decoded on its own.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from training import flow
from training.checkpoint import EXPORT, EXPORT_META, fetch_step
from training.config import TextConfig, VAEConfig
from training.modeling import VAE, TextEncoder, joint_mask, load_transformer


def resolve_export(path: str) -> str:
    """export/ of a step folder, a run folder's latest, or an export folder itself; a checkpoint on a
    store (s3://, gs://, credentials from the environment) is fetched into the local cache first."""
    if os.path.isfile(os.path.join(path, EXPORT_META)):
        return path
    step = fetch_step(path)
    folder = os.path.join(step, EXPORT)
    if not os.path.isfile(os.path.join(folder, EXPORT_META)):
        raise FileNotFoundError(f"{step}: no export/ (the run had checkpoint.export=false)")
    return folder


class Sampler:
    def __init__(self, export_dir: str, device: str | None = None, dtype: torch.dtype | None = None) -> None:
        with open(os.path.join(export_dir, EXPORT_META), encoding="utf-8") as f:
            self.meta: dict[str, Any] = json.load(f)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.transformer = load_transformer(os.path.join(export_dir, "transformer"), dtype=self.dtype)
        self.transformer.to(self.device)
        self.transformer.eval().requires_grad_(False)
        self.text_cfg = TextConfig.model_validate(self.meta["text"])
        self.text = TextEncoder(self.text_cfg, self.device, self.dtype)
        self.vae = VAE(VAEConfig.model_validate(self.meta["vae"]), self.device, self.dtype)
        # The scale training multiplied the latents by (from the latent shards' json in latent mode).
        self.vae.scaling_factor = float(self.meta["latent_scale"])
        frames, height, width = self.meta["pixel_shape"]
        s = self.meta["sample"]
        self.settings: dict[str, Any] = {
            "frames": s.get("frames") or frames,
            "height": s.get("height") or height,
            "width": s.get("width") or width,
            "fps": s.get("fps") or self.meta["fps"],
            "steps": s["steps"],
            "guidance": s["guidance"],
            "negative_prompt": s["negative_prompt"],
            "shift": self.meta["shift"],
            "step": self.meta["step"],
        }
        decode = self.vae.decode_settings()  # LTX-Video >= 0.9.1's timestep-conditioned decoder only
        if decode is not None:
            self.settings["decode_timestep"], self.settings["decode_noise_scale"] = decode

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str, device: str | None = None) -> Sampler:
        return cls(resolve_export(ckpt_dir), device)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        steps: int | None = None,
        guidance: float | None = None,
        negative_prompt: str | None = None,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 1,
        decode_timestep: float | None = None,
        decode_noise_scale: float | None = None,
    ) -> list[np.ndarray]:
        """uint8 [T, H, W, 3] per (prompt, seed). decode_timestep / decode_noise_scale (timestep-
        conditioned VAEs only) override the export's vae settings; their noise comes from the seed."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        decode = self.vae.decode_settings(decode_timestep, decode_noise_scale)  # bad values fail here
        st = self.settings
        steps = steps or st["steps"]
        guidance = st["guidance"] if guidance is None else guidance
        negative = st["negative_prompt"] if negative_prompt is None else negative_prompt
        shape = self.vae.latent_shape(frames or st["frames"], height or st["height"], width or st["width"])
        times = flow.euler_times(steps, float(st["shift"]))
        out: list[np.ndarray] = []
        for i in range(0, len(prompts), batch_size):
            out += self._generate_batch(
                list(prompts[i : i + batch_size]),
                list(seeds[i : i + batch_size]),
                shape,
                times,
                guidance,
                negative,
                decode,
            )
        return out

    def _generate_batch(
        self,
        prompts: list[str],
        seeds: list[int],
        shape: tuple[int, ...],
        times: torch.Tensor,
        guidance: float,
        negative: str,
        decode: tuple[float, float] | None = None,
    ) -> list[np.ndarray]:
        b = len(prompts)
        # Each video's noise comes from its own seed, so a video does not depend on its batch; the same
        # generator then gives a timestep-conditioned VAE's decode noise (as diffusers' LTXPipeline).
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        x = torch.stack([torch.randn(shape, generator=g) for g in gens])
        x = x.to(self.device)
        emb, mask = self.text.encode(prompts)
        use_cfg = guidance != 1.0
        if use_cfg:
            u_emb, u_mask = self.text.encode([negative] * b)
            emb, mask = torch.cat([emb, u_emb]), torch.cat([mask, u_mask])
        f, _, h, w = shape
        p = self.transformer.config.patch_size
        kwargs = None
        if self.text_cfg.mask_padding:
            kwargs = {"attention_mask": joint_mask(mask, f * (h // p) * (w // p))}
        emb = emb.to(self.dtype)
        for t0, t1 in itertools.pairwise(times):
            xin = torch.cat([x, x]) if use_cfg else x
            t = torch.full((xin.shape[0],), float(t0), device=self.device)
            v = self.transformer(
                hidden_states=xin.to(self.dtype),
                encoder_hidden_states=emb,
                timestep=flow.model_timestep(t),
                attention_kwargs=kwargs,
                return_dict=False,
            )[0].float()
            if use_cfg:
                v_c, v_u = v.chunk(2)
                v = v_u + guidance * (v_c - v_u)
            x = x + float(t1 - t0) * v
        t_dec, s_dec = decode if decode is not None else (None, None)
        video = self.vae.decode(x, gens, t_dec, s_dec)  # [B, T, C, H, W] in ~[-1, 1]
        frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2)
        return [v.cpu().numpy() for v in frames]


@contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count is `n` inside the block (0: left as it is), restored after."""
    if n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_mp4(frames: np.ndarray, path: str, fps: float, crf: int = 18) -> None:
    """uint8 [T, H, W, 3] -> H.264 mp4 (yuv420p, so H and W must be even), written atomically."""
    from training.data.shard_writer import encode_mp4, write_atomic

    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"{path}: H.264 yuv420p needs even sizes, got {w}x{h}")
    write_atomic(path, encode_mp4(np.ascontiguousarray(frames), fps, crf=crf))
