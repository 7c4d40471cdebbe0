"""Trainer throughput: the real CogVideoX-2B configuration, LLM-jp-sized text, synthetic latents.

    python benchmarks/train_bench.py                              # stage 1, each attention mode
    python benchmarks/train_bench.py --shapes stage2 --batch-size 1 --attention flex
    python benchmarks/train_bench.py --ac off --compile on --json rows.jsonl   # one JSON line per row
    torchrun --nproc_per_node 8 benchmarks/train_bench.py         # FSDP2 across the GPUs
    python benchmarks/train_bench.py --loader SHARDS/stage1       # also the data stream's own rate
    python benchmarks/train_bench.py --dry-run                    # tiny DiT on the CPU (the tests)
    python benchmarks/train_bench.py --vaes cogvideox,ltx --shapes stage1,stage2 --batch-size 1
                                        # tokens and step time per sample on each VAE's latents

One row per (shape, AC, compile, attention mode), through the trainer's own step
(training.step.train_step: forward, backward, clip, AdamW, EMA): median step time, samples/s,
tokens/s, peak memory and MFU against the GPU's dense bf16 peak. FLOPs per sample come from
training.metrics.train_flops_per_sample: 6 x (per-token weights x tokens + per-sample weights)
+ 12 L S^2 d, with the adaLN/time-embedding linears counted once per sample (33.8 TFLOP per
stage-1 sample). Attention modes: flex (FlexAttention, padding block mask), sdpa (boolean mask,
no flash kernel), none (padding attends: the unmasked flash-attention ceiling). A row that runs
out of memory is recorded as such and the next one runs. Captions are 100 tokens of 226 (the rest
padding). `benchmarks/gpu_check.sh` runs the matrix the README quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.config import TrainConfig, parse_train_config
from training.metrics import peak_tflops, train_flops_per_sample
from training.parallel import compute_dtype, init_distributed
from training.step import Micro, build_model, build_trainer, micro_loss, train_step

SHAPES = {"stage1": (12, 16, 32, 32), "stage2": (12, 16, 60, 106)}  # latents F, C, H, W
TEXT_DIM, TEXT_LEN, CAPTION_TOKENS = 2048, 226, 100  # LLM-jp-3-1.8B hidden size, the DiT's text slots
ANCHOR_STAGE1_SAMPLES_S = 11.7  # one H100 at 40% MFU with the corrected FLOPs would do ~11.7
# The dry run: a 2-layer DiT with small heads on tiny latents, the same code path on the CPU.
DRY = {
    "shape": (2, 4, 8, 8),
    "text_dim": 64,
    "text_len": 16,
    "caption_tokens": 6,
    "transformer": {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16,
                    "time_embed_dim": 32, "in_channels": 4, "out_channels": 4},
}  # fmt: skip


def bench_config(ac: bool, compile_: bool, attention: str, dry: bool, ac_every: int = 1) -> TrainConfig:
    data: dict[str, Any] = {
        "text": {"max_length": DRY["text_len"] if dry else TEXT_LEN, "mask_padding": attention != "none"},
        "model": {"attention": "sdpa" if attention == "none" else attention},
        "parallel": {"activation_checkpointing": ac, "ac_every": ac_every, "compile": compile_},
        "optim": {"warmup_steps": 0},
    }
    if dry:
        data["model"]["transformer_config"] = DRY["transformer"]
    return parse_train_config(data)


def _micro(
    b: int, shape: tuple[int, ...], text_len: int, text_dim: int, dry: bool, device: torch.device
) -> Micro:
    """A fixed batch: latents, noise, times and captions of CAPTION_TOKENS real tokens + padding."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(b, text_len, dtype=torch.bool)
    mask[:, : DRY["caption_tokens"] if dry else CAPTION_TOKENS] = True
    return Micro(
        torch.randn(b, *shape, generator=g).to(device),
        torch.randn(b, text_len, text_dim, generator=g).to(device),
        mask.to(device),
        torch.randn(b, *shape, generator=g).to(device),
        torch.rand(b, generator=g).to(device),
    )


def bench_row(
    shape_name: str, ac: bool, compile_: bool, attention: str, args: argparse.Namespace
) -> dict[str, Any]:
    dry = args.dry_run
    shape = DRY["shape"] if dry else SHAPES[shape_name]
    text_dim = DRY["text_dim"] if dry else TEXT_DIM
    text_len = DRY["text_len"] if dry else TEXT_LEN
    cfg = bench_config(ac, compile_, attention, dry, args.ac_every)
    row: dict[str, Any] = {
        "shape": shape_name,
        "latents": list(shape),
        "attention": attention,
        "ac": ac,
        "ac_every": args.ac_every if ac else None,
        "compile": compile_,
        "batch_per_gpu": args.batch_size,
        "dry_run": dry,
    }
    d = init_distributed(cfg.parallel)
    if attention == "flex" and d.device.type != "cuda":
        # No FlexAttention backward on the CPU: the dry run checks the forward (block mask, kernel).
        model, _, _ = build_model(cfg.model_copy(update={"parallel": cfg.parallel.model_copy(
            update={"compile": False})}), text_dim, shape, d)  # fmt: skip
        with torch.no_grad():
            loss = micro_loss(model, _micro(args.batch_size, shape, text_len, text_dim, dry, d.device),
                              "flex", torch.float32, False)  # fmt: skip
        return {**row, "forward_only": True, "loss_finite": bool(torch.isfinite(loss)),
                "skipped": "FlexAttention has no backward on the CPU: forward only"}  # fmt: skip
    if compile_ and dry and not args.dry_run_compile:
        return {**row, "skipped": "compile is not timed in the dry run (tests/test_train_units covers it)"}
    dtype = compute_dtype(cfg.parallel, d.device)
    cuda = d.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    tr = None
    try:
        model, model_cfg, params = build_model(cfg, text_dim, shape, d)
        tr = build_trainer(cfg, model, d)
        micro = _micro(args.batch_size, shape, text_len, text_dim, dry, d.device)
        times, compile_s = [], None
        for i in range(args.warmup + args.steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            r = train_step(tr, [micro], 1, i)
            if cuda:
                torch.cuda.synchronize()
            if i == 0:
                compile_s = round(time.perf_counter() - t0, 2)  # first step: compile + autotune
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError as e:
        return {**row, "error": f"out of memory: {str(e).splitlines()[0][:200]}"}
    finally:
        del tr
        if cuda:
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    step = sorted(times)[len(times) // 2]
    f, _, h, w = shape
    p = model_cfg["patch_size"]
    video_tokens = f * (h // p) * (w // p)
    flops = train_flops_per_sample(model_cfg, params, video_tokens, text_len)
    samples_s = args.batch_size * d.world_size / step
    peak = None if dry else peak_tflops(args.peak_tflops)
    return {
        **row,
        "tokens": video_tokens + text_len,
        "world": d.world_size,
        "params_b": round(params.total / 1e9, 3),
        "per_sample_params_b": round(params.sample / 1e9, 3),
        "tflop_per_sample": round(flops / 1e12, 3),
        "first_step_s": compile_s,
        "step_s": round(step, 4),
        "samples_per_s": round(samples_s, 3),
        "tokens_per_s": round(samples_s * (video_tokens + text_len)),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
        "tflops_per_gpu": round(flops * samples_s / d.world_size / 1e12, 1),
        "mfu": round(flops * samples_s / (peak * 1e12 * d.world_size), 4) if peak else None,
        "loss_finite": bool(r.finite),
        "dtype": str(dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }


# --vaes: the same DiT on each VAE's latents of a stage's real clip size (frames, height, width).
STAGE_PIXELS = {"stage1": (48, 256, 256), "stage2": (48, 480, 848)}
SMALL_DIT = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16, "time_embed_dim": 32}


def vae_row(stage: str, vae: str, args: argparse.Namespace) -> dict[str, Any]:
    """Tokens per sample and step time per sample of a small DiT (SMALL_DIT on the CPU, the 2B
    configuration on a GPU) on `vae`'s latents at `stage`'s clip size; patch from the compression."""
    from training.vae import PRESETS, latent_shape

    preset = PRESETS[vae]
    shape = latent_shape(preset, *STAGE_PIXELS[stage])
    small = args.dry_run or not torch.cuda.is_available()
    text_len, text_dim = (16, 64) if small else (TEXT_LEN, TEXT_DIM)
    cfg = parse_train_config(
        {
            "text": {"max_length": text_len, "mask_padding": False},  # no mask: the flash kernel
            "model": {"attention": "sdpa", "transformer_config": SMALL_DIT if small else {}},
            "parallel": {"activation_checkpointing": not small},
            "optim": {"warmup_steps": 0},
        }
    )
    d = init_distributed(cfg.parallel)
    model, model_cfg, _ = build_model(cfg, text_dim, shape, d, preset.spatial)
    tr = build_trainer(cfg, model, d)
    g = torch.Generator().manual_seed(0)
    b = args.batch_size
    micro = Micro(
        torch.randn(b, *shape, generator=g).to(d.device),
        torch.randn(b, text_len, text_dim, generator=g).to(d.device),
        torch.ones(b, text_len, dtype=torch.bool, device=d.device),
        torch.randn(b, *shape, generator=g).to(d.device),
        torch.rand(b, generator=g).to(d.device),
    )
    times = []
    for i in range(args.warmup + args.steps):
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(tr, [micro], 1, i)
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    f, _, h, w = shape
    p = model_cfg["patch_size"]
    return {
        "stage": stage,
        "vae": vae,
        "pixels": list(STAGE_PIXELS[stage]),
        "latents": list(shape),
        "patch": p,
        "video_tokens": f * (h // p) * (w // p),
        "step_s_per_sample": round(sorted(times)[len(times) // 2] / b, 4),
        "dit": "small" if small else "2b",
        "device": "cpu" if d.device.type == "cpu" else torch.cuda.get_device_name(),
    }


def vae_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (stage, VAE) and a ratio row per stage against the first VAE (same run)."""
    rows = []
    vaes = args.vaes.split(",")
    for stage in args.shapes.split(","):
        per = [vae_row(stage, v, args) for v in vaes]
        base = per[0]
        for r in per:
            r["tokens_vs_" + base["vae"]] = round(r["video_tokens"] / base["video_tokens"], 4)
            r["step_time_vs_" + base["vae"]] = round(r["step_s_per_sample"] / base["step_s_per_sample"], 4)
        rows += per
    return rows


def bench_loader(shards: str, batch: int, workers: int, seconds: float) -> dict[str, object]:
    from training.stream import RankStream, SampleTable, make_loader

    stream = RankStream(SampleTable.build(shards, "train"), 0, 0, 1)
    it = iter(make_loader(stream, 0, batch, workers, 4, False))
    next(it)  # workers started
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += len(next(it)["key"])
    return {
        "loader_samples_per_s": round(n / (time.perf_counter() - t0), 2),
        "workers": workers,
        "batch": batch,
    }


def _switch(values: str) -> list[bool]:
    return [v.strip().lower() in ("1", "on", "true", "yes") for v in values.split(",")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="stage1", help="stage1,stage2")
    p.add_argument("--attention", default="flex,sdpa,none", help="modes, comma-separated")
    p.add_argument("--ac", default="on", help="on, off or on,off")
    p.add_argument("--ac-every", type=int, default=1, help="partial AC: every k-th block")
    p.add_argument("--compile", default="off", help="on, off or off,on")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json", default=None, help="append one JSON line per row to this file")
    p.add_argument("--dry-run", action="store_true", help="tiny DiT on the CPU: the code path, no figures")
    p.add_argument("--dry-run-compile", action="store_true", help="also compile in the dry run (minutes)")
    p.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)  # former name of --dry-run
    p.add_argument(
        "--vaes",
        default=None,
        help="cogvideox,ltx: tokens and step time per sample on each VAE's latents at --shapes "
        "(a small DiT on the CPU, the 2B DiT on a GPU); replaces the attention/AC matrix",
    )
    p.add_argument("--loader", default=None, help="a stage folder: also time the shard stream alone")
    p.add_argument("--loader-workers", type=int, default=8)
    args = p.parse_args(argv)
    args.dry_run = args.dry_run or args.cpu
    if args.dry_run:
        args.steps, args.warmup, args.batch_size = (
            min(args.steps, 2),
            min(args.warmup, 1),
            min(args.batch_size, 2),
        )
    rates = []
    if args.vaes:
        for row in vae_table(args):
            line = json.dumps(row)
            print(line, flush=True)
            if args.json:
                with open(args.json, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
    elif torch.cuda.is_available() or args.dry_run:
        for shape in args.shapes.split(","):
            for ac in _switch(args.ac):
                for compile_ in _switch(args.compile):
                    for attention in args.attention.split(","):
                        row = bench_row(shape, ac, compile_, attention, args)
                        if "samples_per_s" in row:
                            rates.append(row["samples_per_s"] / row["world"])
                        line = json.dumps(row)
                        print(line, flush=True)
                        if args.json:
                            with open(args.json, "a", encoding="utf-8") as f:
                                f.write(line + "\n")
    else:
        print("train_bench: no CUDA device; trainer shapes skipped (use --dry-run for the CPU path)")
    if args.loader:
        row = bench_loader(args.loader, args.batch_size, args.loader_workers, 20.0)
        # Without a GPU here, compare with the anchor: ~11.7 stage-1 samples/s per H100 at 40% MFU.
        need = rates[0] if rates and not args.dry_run else ANCHOR_STAGE1_SAMPLES_S
        row.update(
            trainer_samples_per_s_per_gpu=need,
            loader_over_trainer=round(row["loader_samples_per_s"] / need, 2),
        )
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
