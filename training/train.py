"""The trainer: one config, components from small factories, one flat loop.

    torchrun --nproc_per_node 8 -m training.train --config jobs/configs/train.yaml \
        --shards SHARDS/stage1 --out RUN
    python -m training.train ... --resume          # one process (CPU or one GPU)

`vjp train` (jobs/train.py) runs the same `train()` in process, under torchrun, or in Ray Train
workers. Randomness of a step (noise, t, caption dropout, VAE posterior sample) is drawn from a
generator seeded by (seed, rank, step, micro-step) and the data stream is a function of the
position, so a resumed run repeats an uninterrupted one step for step.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from training import flow
from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state, write_json
from training.config import TrainConfig, load_train_config
from training.ema import EMA
from training.metrics import StepLog, matmul_params, peak_tflops, train_flops_per_sample
from training.modeling import VAE, TextEncoder, build_transformer, joint_mask, pad_text
from training.parallel import Dist, compute_dtype, full_tensor, init_distributed, parallelize
from training.stream import RankStream, SampleTable, make_loader, resume_consumed


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row: the run stops instead of training on NaNs."""


def step_seed(*parts: int) -> int:
    s = 0x9E3779B1
    for p in parts:
        s = (s * 1_000_003 + int(p)) & 0x7FFF_FFFF_FFFF
    return s


def lr_lambda(cfg: TrainConfig) -> Any:
    o = cfg.optim

    def f(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@dataclass
class Conditioning:
    """What turns a batch into (x1, text embeddings, text mask) on the device."""

    kind: str  # pixels | latents
    latent_shape: tuple[int, int, int, int]  # F, C, H, W
    text_dim: int
    uncond: tuple[torch.Tensor, torch.Tensor]  # [1, L, D], [1, L]: the empty caption (CFG dropout)
    vae: VAE | None
    text: TextEncoder | None
    latent_scale: float
    fps: float
    pixel_shape: tuple[int, int, int]  # frames, height, width


def build_conditioning(
    cfg: TrainConfig, stream: RankStream, device: torch.device, dtype: torch.dtype
) -> Conditioning:
    first = stream[0]
    kind = "latents" if "latents" in first else "pixels"
    if cfg.data.kind != "auto" and cfg.data.kind != kind:
        raise ValueError(f"data.kind={cfg.data.kind} but the shards hold {kind}")
    meta = first["meta"]
    pixel_shape = (int(meta["frames"]), int(meta["height"]), int(meta["width"]))
    # The empty caption is always encoded by the real text encoder, so the unconditional input the
    # model learns is the one the sampler gives it, also when training from precomputed latents.
    text = TextEncoder(cfg.text, device, dtype)
    uncond = text.encode([""])
    if kind == "pixels":
        vae = VAE(cfg.vae, device, dtype)
        shape = vae.latent_shape(*pixel_shape)
        return Conditioning(
            kind, shape, text.dim, uncond, vae, text, vae.scaling_factor, float(meta["fps"]), pixel_shape
        )
    lat = first["latents"]  # [C, F, H, W], unscaled
    c, f, h, w = lat.shape
    if first["text_emb"].shape[-1] != text.dim:
        raise ValueError(
            f"text_emb dim {first['text_emb'].shape[-1]} != text encoder {cfg.text.model} ({text.dim})"
        )
    scale = float(cfg.vae.scaling_factor or meta["latents"]["vae_scaling_factor"])
    return Conditioning(
        kind, (f, c, h, w), text.dim, uncond, None, None, scale, float(meta["fps"]), pixel_shape
    )


def prepare(
    cond: Conditioning, batch: dict[str, Any], cfg: TrainConfig, gen: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch -> (x1 [B, F, C, H, W] scaled latents, text [B, L, D], mask [B, L]), dropout applied."""
    if cond.kind == "pixels":
        assert cond.vae is not None and cond.text is not None
        x1 = cond.vae.encode(batch["video"], generator=gen)
        emb, mask = cond.text.encode(batch["caption"])
    else:
        x1 = batch["latents"].permute(0, 2, 1, 3, 4).to(device) * cond.latent_scale
        emb, mask = pad_text(batch["text_emb"], batch["text_mask"], cfg.text.max_length)
    emb, mask = emb.to(device), mask.to(device)
    drop = torch.rand(x1.shape[0], generator=gen) < cfg.flow.caption_dropout
    if drop.any():
        d = drop.to(device)
        emb = torch.where(d[:, None, None], cond.uncond[0].to(device, emb.dtype), emb)
        mask = torch.where(d[:, None], cond.uncond[1].to(device), mask)
    return x1.float(), emb.float(), mask


def flow_step_loss(
    model: torch.nn.Module,
    x1: torch.Tensor,
    emb: torch.Tensor,
    mask: torch.Tensor,
    cfg: TrainConfig,
    alpha: float,
    gen: torch.Generator,
    dtype: torch.dtype,
    autocast: bool,
) -> torch.Tensor:
    device = x1.device
    x0 = torch.randn(x1.shape, generator=gen).to(device)
    t = flow.sample_t(x1.shape[0], cfg.flow, alpha, gen).to(device)
    xt = flow.interpolate(x0, x1, t)
    f, _, h, w = x1.shape[1:]
    p = model.config.patch_size
    kwargs = {"attention_mask": joint_mask(mask, f * (h // p) * (w // p))} if cfg.text.mask_padding else None
    ctx = torch.autocast(device.type, dtype=dtype) if autocast else nullcontext()
    with ctx:
        v = model(
            hidden_states=xt.to(dtype),
            encoder_hidden_states=emb.to(dtype),
            timestep=flow.model_timestep(t),
            attention_kwargs=kwargs,
            return_dict=False,
        )[0]
    return flow.flow_loss(v, x0, x1)


def _peak_mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def train(cfg: TrainConfig, shards: str, out: str, resume: bool = False) -> dict[str, Any]:
    """Train until cfg.steps; returns (and rank 0 writes) RUN/summary.json."""
    d = init_distributed(cfg.parallel)
    try:
        return _train(cfg, shards, out, resume, d)
    finally:
        d.close()


def _train(cfg: TrainConfig, shards: str, out: str, resume: bool, d: Dist) -> dict[str, Any]:
    t_start = time.time()
    os.makedirs(out, exist_ok=True)
    ckpt = latest_checkpoint(out)
    if ckpt and not resume:
        raise FileExistsError(
            f"{out} has checkpoints ({os.path.basename(ckpt)}): pass --resume or a new --out"
        )
    if d.is_main:
        write_json(os.path.join(out, "config.json"), cfg.model_dump(mode="json"))
    # The sample table: rank 0 reads the tar headers once, the others take its cache.
    cache = os.path.join(out, "stream")
    table = SampleTable.build(shards, cfg.data.split, cache) if d.is_main else None
    d.barrier()
    if table is None:
        table = SampleTable.build(shards, cfg.data.split, cache)
    stream = RankStream(table, cfg.seed, d.rank, d.world_size, cfg.data.decode_threads)
    dtype = compute_dtype(cfg.parallel, d.device)
    cond = build_conditioning(cfg, stream, d.device, dtype)
    alpha = flow.resolve_shift(cfg.flow, cond.latent_shape)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank before FSDP shards them
    model = build_transformer(cfg, cond.text_dim, cond.latent_shape)
    model_config = dict(model.config)
    n_linear = matmul_params(model)
    model.train()
    model = parallelize(model.to(d.device), cfg.parallel, d)
    fsdp = hasattr(model, "set_requires_gradient_sync")
    autocast = dtype != torch.float32 and not fsdp
    ema = EMA(model, cfg.optim.ema_decay, cfg.optim.ema_start_step)
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=o.lr,
        betas=o.betas,
        eps=o.eps,
        weight_decay=o.weight_decay,
        foreach=True,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))

    step, consumed, skipped_total = 0, 0, 0
    if ckpt:
        meta = load_checkpoint(d, ckpt, model, optimizer, ema)
        step, skipped_total = int(meta["step"]), int(meta.get("skipped_steps", 0))
        scheduler.load_state_dict(meta["scheduler"])
        consumed = resume_consumed(meta["rank_state"]["position"], stream, cfg.parallel.allow_reshard)
        if meta["world_size"] == d.world_size:
            set_rng_state(meta["rank_state"]["rng"])
        if d.is_main:
            print(f"resumed from {ckpt} at step {step}", flush=True)
    elif cfg.model.init_from:
        from training.checkpoint import resolve_checkpoint

        src = resolve_checkpoint(cfg.model.init_from)
        meta = load_checkpoint(d, src, model, None if cfg.model.reset_optimizer else optimizer, ema)
        if d.is_main:
            print(f"initialised from {src} (step {meta['step']})", flush=True)

    per_step = cfg.data.batch_size * cfg.grad_accum
    dc = cfg.data
    loader = make_loader(stream, consumed, dc.batch_size, dc.num_workers, dc.prefetch_factor, dc.pin_memory)
    batches = iter(loader)
    log = StepLog(out, cfg.log.every, cfg.log.tensorboard, cfg.log.progress, cfg.steps, step, d.is_main)
    f_, _, h_, w_ = cond.latent_shape
    p = model_config["patch_size"]
    video_tokens = f_ * (h_ // p) * (w_ // p)
    flops = train_flops_per_sample(model_config, n_linear, video_tokens, cfg.text.max_length)
    peak = peak_tflops(cfg.log.peak_tflops)
    export_meta = {
        "text": cfg.text.model_dump(mode="json"),
        "vae": cfg.vae.model_dump(mode="json"),
        "flow": cfg.flow.model_dump(mode="json"),
        "sample": cfg.sample.model_dump(mode="json"),
        "latent_shape": list(cond.latent_shape),
        "latent_scale": cond.latent_scale,
        "pixel_shape": list(cond.pixel_shape),
        "fps": cond.fps,
        "shift": alpha,
    }
    in_a_row, last_loss, last_ckpt = 0, float("nan"), ckpt
    while step < cfg.steps:
        t0, wait = time.perf_counter(), 0.0
        loss_sum = torch.zeros((), device=d.device)
        for micro in range(cfg.grad_accum):
            tw = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - tw
            consumed += cfg.data.batch_size
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, d.rank, step, micro))
            x1, emb, mask = prepare(cond, batch, cfg, gen, d.device)
            if fsdp:
                model.set_requires_gradient_sync(micro == cfg.grad_accum - 1)
            loss = flow_step_loss(model, x1, emb, mask, cfg, alpha, gen, dtype, autocast)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip))
        loss_mean = d.all_mean(loss_sum / cfg.grad_accum)
        finite = bool(torch.isfinite(loss_mean).item() and torch.isfinite(grad_norm).item())
        if finite:
            optimizer.step()
            ema.update(step + 1)
            in_a_row = 0
        else:
            skipped_total += 1
            in_a_row += 1
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        step += 1
        dt = time.perf_counter() - t0
        samples_s = per_step * d.world_size / dt
        last_loss = float(loss_mean.item())
        log.log(
            {
                "step": step,
                "loss": last_loss,
                "lr": lr,
                "grad_norm": float(grad_norm.item()),
                "samples_per_s": samples_s,
                "tokens_per_s": samples_s * (video_tokens + cfg.text.max_length),
                "data_wait": wait / dt,
                "peak_mem_gb": _peak_mem_gb(d.device),
                "mfu": flops * samples_s / (peak * 1e12 * d.world_size) if peak else None,
                "skipped": not finite,
                "skipped_total": skipped_total,
                "step_time": dt,
            }
        )
        if in_a_row >= cfg.max_nonfinite_in_a_row:
            raise NonFiniteError(
                f"{in_a_row} non-finite steps in a row up to step {step} (loss {last_loss}, grad norm "
                f"{float(grad_norm.item())}): lower optim.lr, check the data, or use parallel.precision=fp32"
            )
        if step % cfg.checkpoint.every == 0 or step == cfg.steps:
            last_ckpt = save_checkpoint(
                d,
                out,
                step,
                model,
                optimizer,
                ema,
                stream.position(consumed).to_json(),
                {"skipped_steps": skipped_total, "scheduler": scheduler.state_dict(), "seed": cfg.seed},
                export_meta if cfg.checkpoint.export else None,
                cfg.checkpoint.keep_last,
            )
    log.close()
    summary = {
        "steps": step,
        "final_loss": last_loss,
        "checkpoint": last_ckpt,
        "skipped_steps": skipped_total,
        "world_size": d.world_size,
        "elapsed_s": round(time.time() - t_start, 2),
        "data": cond.kind,
        "latent_shape": list(cond.latent_shape),
        "run_dir": out,
    }
    if d.is_main:
        write_json(os.path.join(out, "summary.json"), summary)
    return summary


def add_arguments(p: argparse.ArgumentParser, default_config: str | None = None) -> None:
    from curation.configfile import add_set_argument

    p.add_argument(
        "--config", default=default_config, help=f"YAML with a `train:` section (default: {default_config})"
    )
    p.add_argument(
        "--shards", required=True, help="stage folder from vjp shard (pixels) or vjp encode (latents)"
    )
    p.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, summary.json")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    add_set_argument(p, "optim.lr=2e-4")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    from curation.configfile import ConfigError

    try:
        cfg = load_train_config(args.config, args.overrides)
        train(cfg, args.shards, args.out, args.resume)
    except (ConfigError, FileExistsError, FileNotFoundError, NonFiniteError, ValueError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
