"""The trainer: one config, components from small factories, one loop around training.step.train_step.

    torchrun --nproc_per_node 8 -m training.train --config jobs/configs/train.yaml \
        --shards SHARDS/stage1 --out RUN
    python -m training.train ... --resume          # one process (CPU or one GPU)

`vjp train` (jobs/train.py) runs the same `train()` in process, under torchrun, or in Ray Train
workers. `train.objective` picks what a step optimises (`build_objective`): rectified flow on stage
shards, or Video-DPO on pair shards from `vjp pairs` against a frozen reference (training/dpo.py).
Randomness of a step (noise, t, caption dropout, VAE posterior sample) is drawn from a
generator seeded by (seed, rank, step, micro-step) and the data stream is a function of the
position, so a resumed run repeats an uninterrupted one step for step.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from training import flow
from training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    set_rng_state,
    write_json,
)
from training.config import TrainConfig, load_train_config
from training.metrics import StepLog, peak_tflops, train_flops_per_sample
from training.modeling import (
    VAE,
    TextEncoder,
    pad_text,
)
from training.parallel import Dist, compute_dtype, init_distributed
from training.step import (
    LossFn,
    Micro,
    Trainer,
    build_model,
    build_trainer,
    flow_loss_fn,
    make_micro,
    train_step,
)
from training.stream import RankStream, SampleTable, make_loader, resume_consumed
from training.vae import check_latent_vae


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row: the run stops instead of training on NaNs."""


def step_seed(*parts: int) -> int:
    s = 0x9E3779B1
    for p in parts:
        s = (s * 1_000_003 + int(p)) & 0x7FFF_FFFF_FFFF
    return s


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
    pairs: bool = False  # Video-DPO pair shards (vjp pairs): batches have a rejected side too


def build_conditioning(
    cfg: TrainConfig, stream: RankStream, device: torch.device, dtype: torch.dtype
) -> Conditioning:
    first = stream[0]
    kind = "latents" if "latents" in first else "pixels"
    pairs = "rejected_latents" in first or "rejected_video" in first
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
            kind,
            shape,
            text.dim,
            uncond,
            vae,
            text,
            vae.scaling_factor,
            float(meta["fps"]),
            pixel_shape,
            pairs,
        )
    if cfg.text.hidden_layer != -1:  # vjp encode stores Encoders' (the same TextEncoder's) last layer
        raise ValueError(
            f"text.hidden_layer={cfg.text.hidden_layer} but latent shards hold the last hidden layer: "
            "train on pixel shards or use -1"
        )
    lat = first["latents"]  # [C, F, H, W], unscaled
    c, f, h, w = lat.shape
    if first["text_emb"].shape[-1] != text.dim:
        raise ValueError(
            f"text_emb dim {first['text_emb'].shape[-1]} != text encoder {cfg.text.model} ({text.dim})"
        )
    # the DiT would learn one VAE's latents and be decoded by another's: refuse before any step
    check_latent_vae(meta, cfg.vae, stream.table.row(stream.global_index(0))[0])
    scale = float(cfg.vae.scaling_factor or meta["latents"]["vae_scaling_factor"])
    return Conditioning(
        kind, (f, c, h, w), text.dim, uncond, None, None, scale, float(meta["fps"]), pixel_shape, pairs
    )


def prepare(
    cond: Conditioning, batch: dict[str, Any], cfg: TrainConfig, gen: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch -> (x1 [B, F, C, H, W] scaled latents, text [B, L, D], mask [B, L]), dropout applied."""
    x1 = latents_of(cond, batch, gen, device)
    if cond.kind == "pixels":
        assert cond.text is not None
        emb, mask = cond.text.encode(batch["caption"])
    else:
        emb, mask = pad_text(batch["text_emb"], batch["text_mask"], cfg.text.max_length)
    emb, mask = emb.to(device), mask.to(device)
    drop = torch.rand(x1.shape[0], generator=gen) < cfg.flow.caption_dropout
    if drop.any():
        d = drop.to(device)
        emb = torch.where(d[:, None, None], cond.uncond[0].to(device, emb.dtype), emb)
        mask = torch.where(d[:, None], cond.uncond[1].to(device), mask)
    return x1.float(), emb.float(), mask


def latents_of(
    cond: Conditioning, batch: dict[str, Any], gen: torch.Generator, device: torch.device, side: str = ""
) -> torch.Tensor:
    """x1 [B, F, C, H, W], scaled latents of a batch's videos (side "rejected_": a pair's other side)."""
    if cond.kind == "pixels":
        assert cond.vae is not None
        return cond.vae.encode(batch[side + "video"], generator=gen).float()
    return (batch[side + "latents"].permute(0, 2, 1, 3, 4).to(device) * cond.latent_scale).float()


@dataclass
class Objective:
    """What `train.objective` changes in the loop: how a loader batch becomes a micro-batch (with the
    step's randomness) and that micro-batch's loss and metrics."""

    make: Callable[[dict[str, Any], torch.Generator], Any]
    loss: LossFn
    flops_factor: float = 1.0  # model FLOPs of one item relative to one flow sample (for MFU)


def build_objective(
    cfg: TrainConfig, cond: Conditioning, alpha: float, model_config: dict[str, Any], d: Dist, spatial: int
) -> Objective:
    """flow: stage shards, one micro-batch per batch. dpo: pair shards; the pair's t and noise are
    drawn once (make_micro on the chosen side) and shared by the rejected side, against a frozen
    reference built like the policy (training.dpo.build_reference)."""
    want_pairs = cfg.objective == "dpo"
    if cond.pairs != want_pairs:
        have = "pair shards (vjp pairs)" if cond.pairs else "stage shards, not pair shards (vjp pairs)"
        raise ValueError(f"train.objective={cfg.objective} but --shards holds {have}")

    def flow_micro(batch: dict[str, Any], gen: torch.Generator) -> Micro:
        x1, emb, mask = prepare(cond, batch, cfg, gen, d.device)
        return make_micro(x1, emb, mask, cfg.flow, alpha, gen)

    if not want_pairs:
        return Objective(flow_micro, flow_loss_fn)
    from training import dpo

    reference = dpo.build_reference(cfg, cond.text_dim, cond.latent_shape, model_config, d, spatial)

    def pair_micro(batch: dict[str, Any], gen: torch.Generator) -> dpo.PairMicro:
        chosen = flow_micro(batch, gen)
        return dpo.PairMicro(chosen, latents_of(cond, batch, gen, d.device, "rejected_"))

    # per pair: policy forward + backward on both sides (2x), reference forward on both (2 x 1/3)
    return Objective(pair_micro, dpo.dpo_loss_fn(reference, cfg.dpo.beta), flops_factor=8 / 3)


class Feed:
    """Micro-batches from the rank's loader, with the step's randomness: counts the samples taken
    (the stream position a checkpoint saves) and the time spent waiting for data."""

    def __init__(
        self,
        batches: Iterator[dict[str, Any]],
        make: Callable[[dict[str, Any], torch.Generator], Any],
        cfg: TrainConfig,
        d: Dist,
        consumed: int,
    ) -> None:
        self.batches, self.make, self.cfg, self.d = batches, make, cfg, d
        self.consumed, self.wait = consumed, 0.0

    def micros(self, step: int) -> Iterator[Any]:
        cfg = self.cfg
        for i in range(cfg.grad_accum):
            tw = time.perf_counter()
            batch = next(self.batches)
            self.wait += time.perf_counter() - tw
            self.consumed += cfg.data.batch_size
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, self.d.rank, step, i))
            yield self.make(batch, gen)


def build_stream(cfg: TrainConfig, shards: str, out: str, d: Dist) -> RankStream:
    """This rank's view of the split: rank 0 builds (or fetches) the sample table first, the others
    then open the same file."""
    cache, so = os.path.join(out, "stream"), cfg.data.storage_options
    table = SampleTable.build(shards, cfg.data.split, cache, so) if d.is_main else None
    d.barrier()
    if table is None:
        table = SampleTable.build(shards, cfg.data.split, cache, so)
    return RankStream(table, cfg.seed, d.rank, d.world_size, cfg.data.decode_threads)


def open_run_dir(cfg: TrainConfig, out: str, resume: bool, d: Dist) -> str | None:
    """The run folder: its latest checkpoint (an error without --resume), config.json written."""
    os.makedirs(out, exist_ok=True)
    root = cfg.checkpoint.root(out)
    ckpt = latest_checkpoint(root, cfg.checkpoint.storage_options)
    if ckpt and not resume:
        raise FileExistsError(f"{root} has checkpoints ({ckpt}): pass --resume or a new --out")
    if d.is_main:
        write_json(os.path.join(out, "config.json"), cfg.model_dump(mode="json"))
    return ckpt


def restore(cfg: TrainConfig, tr: Trainer, ckpt: str | None, stream: RankStream) -> tuple[int, int, int]:
    """(step, consumed samples, skipped steps) after loading the run's checkpoint or init_from."""
    d = tr.d
    if ckpt:
        meta = load_checkpoint(d, ckpt, tr.model, tr.optimizer, tr.ema, cfg.checkpoint.storage_options)
        tr.scheduler.load_state_dict(meta["scheduler"])
        consumed = resume_consumed(meta["rank_state"]["position"], stream, cfg.parallel.allow_reshard)
        if meta["world_size"] == d.world_size:
            set_rng_state(meta["rank_state"]["rng"])
        if d.is_main:
            print(f"resumed from {ckpt} at step {meta['step']}", flush=True)
        return int(meta["step"]), consumed, int(meta.get("skipped_steps", 0))
    if cfg.model.init_from:
        so = cfg.checkpoint.storage_options
        src = resolve_checkpoint(cfg.model.init_from, so)
        optimizer = None if cfg.model.reset_optimizer else tr.optimizer
        meta = load_checkpoint(d, src, tr.model, optimizer, tr.ema, so)
        if d.is_main:
            print(f"initialised from {src} (step {meta['step']})", flush=True)
    return 0, 0, 0


def export_meta(cfg: TrainConfig, cond: Conditioning, alpha: float) -> dict[str, Any]:
    """What the sampler needs beside the weights (export/videojp.json)."""
    return {
        "objective": cfg.objective,
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
    ckpt = open_run_dir(cfg, out, resume, d)
    stream = build_stream(cfg, shards, out, d)
    cond = build_conditioning(cfg, stream, d.device, compute_dtype(cfg.parallel, d.device))
    alpha = flow.resolve_shift(cfg.flow, cond.latent_shape)
    spatial = cond.pixel_shape[1] // cond.latent_shape[2]  # measured: 8 on CogVideoX's VAE, 32 on LTX's
    model, model_config, params = build_model(cfg, cond.text_dim, cond.latent_shape, d, spatial)
    tr = build_trainer(cfg, model, d)
    objective = build_objective(cfg, cond, alpha, model_config, d, spatial)
    step, consumed, skipped_total = restore(cfg, tr, ckpt, stream)

    dc = cfg.data
    loader = make_loader(stream, consumed, dc.batch_size, dc.num_workers, dc.prefetch_factor, dc.pin_memory)
    feed = Feed(iter(loader), objective.make, cfg, d, consumed)
    log = StepLog(out, cfg.log.every, cfg.log.tensorboard, cfg.log.progress, cfg.steps, step, d.is_main)
    f_, _, h_, w_ = cond.latent_shape
    p = model_config["patch_size"]
    video_tokens = f_ * (h_ // p) * (w_ // p)
    flops = train_flops_per_sample(model_config, params, video_tokens, cfg.text.max_length)
    flops *= objective.flops_factor
    peak = peak_tflops(cfg.log.peak_tflops)
    meta_out = export_meta(cfg, cond, alpha) if cfg.checkpoint.export else None
    in_a_row, last_loss, last_ckpt = 0, float("nan"), ckpt
    while step < cfg.steps:
        t0, wait0 = time.perf_counter(), feed.wait
        r = train_step(tr, feed.micros(step), cfg.grad_accum, step, objective.loss)
        step += 1
        skipped_total += not r.finite
        in_a_row = 0 if r.finite else in_a_row + 1
        dt = time.perf_counter() - t0
        samples_s = cfg.data.batch_size * cfg.grad_accum * d.world_size / dt
        last_loss = r.loss
        log.log(
            {
                "step": step,
                "loss": r.loss,
                "lr": r.lr,
                "grad_norm": r.grad_norm,
                "samples_per_s": samples_s,
                "tokens_per_s": samples_s * (video_tokens + cfg.text.max_length),
                "data_wait": (feed.wait - wait0) / dt,
                "peak_mem_gb": _peak_mem_gb(d.device),
                "mfu": flops * samples_s / (peak * 1e12 * d.world_size) if peak else None,
                "skipped": not r.finite,
                "skipped_total": skipped_total,
                "step_time": dt,
                **r.metrics,
            }
        )
        if in_a_row >= cfg.max_nonfinite_in_a_row:
            raise NonFiniteError(
                f"{in_a_row} non-finite steps in a row up to step {step} (loss {r.loss}, grad norm "
                f"{r.grad_norm}): lower optim.lr, check the data, or use parallel.precision=fp32"
            )
        if step % cfg.checkpoint.every == 0 or step == cfg.steps:
            last_ckpt = save_checkpoint(
                d,
                cfg.checkpoint.root(out),
                step,
                tr.model,
                tr.optimizer,
                tr.ema,
                stream.position(feed.consumed).to_json(),
                {"skipped_steps": skipped_total, "scheduler": tr.scheduler.state_dict(), "seed": cfg.seed},
                meta_out,
                cfg.checkpoint.keep_last,
                export_raw=cfg.checkpoint.export_raw,
                storage_options=cfg.checkpoint.storage_options,
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
