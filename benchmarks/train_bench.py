"""Trainer throughput: the real CogVideoX-2B configuration, LLM-jp-sized text, synthetic latents.

    python benchmarks/train_bench.py                       # stage 1 and 2 shapes on one GPU
    torchrun --nproc_per_node 8 benchmarks/train_bench.py  # FSDP2 across the GPUs
    python benchmarks/train_bench.py --loader SHARDS/stage1   # also the data stream's own rate

Prints, per shape: step time, samples/s, tokens/s, peak memory and MFU against the GPU's dense
bf16 peak (FLOPs from the config: 6 N S for the linears + 12 L S^2 d for attention). Anchors:
torchtitan reports 33-39% MFU for Llama-3-8B on 8 H100; at 40% MFU one H100 runs about 11.7
stage-1 samples/s. `--loader` times the seekable shard stream (decode included, no model) so
it can be compared with the trainer's rate: the loader must never be the limit. Without a GPU it
says so and exits 0 (`--cpu` runs a 2-layer model as a smoke test; its MFU is meaningless).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.config import parse_train_config
from training.metrics import matmul_params, peak_tflops, train_flops_per_sample
from training.modeling import build_transformer
from training.parallel import compute_dtype, init_distributed, parallelize
from training.train import flow_step_loss

SHAPES = {"stage1": (12, 16, 32, 32), "stage2": (12, 16, 60, 106)}  # latents F, C, H, W
TEXT_DIM, TEXT_LEN = 2048, 226
ANCHOR_STAGE1_SAMPLES_S = 11.7  # LLM-jp-3-1.8B hidden size, the DiT's text slots


def bench_shape(name: str, shape: tuple[int, int, int, int], args: argparse.Namespace) -> dict[str, object]:
    overrides = [
        f"data.batch_size={args.batch_size}",
        f"parallel.activation_checkpointing={args.ac}",
        f"parallel.compile={args.compile}",
    ]
    if args.cpu:
        overrides.append('model.transformer_config={"num_layers": 2}')
    cfg = parse_train_config({}, overrides=overrides)
    d = init_distributed(cfg.parallel)
    dtype = compute_dtype(cfg.parallel, d.device)
    torch.manual_seed(0)
    model = build_transformer(cfg, TEXT_DIM, shape)
    model_cfg, n_linear = dict(model.config), matmul_params(model)
    model = parallelize(model.to(d.device), cfg.parallel, d).train()
    fsdp = hasattr(model, "set_requires_gradient_sync")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), foreach=True)
    b = args.batch_size
    x1 = torch.randn(b, *shape, device=d.device)
    emb = torch.randn(b, TEXT_LEN, TEXT_DIM, device=d.device)
    mask = torch.ones(b, TEXT_LEN, dtype=torch.bool, device=d.device)
    mask[:, 100:] = False  # a typical caption length; the rest is masked padding
    gen = torch.Generator().manual_seed(0)
    times = []
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = flow_step_loss(
            model, x1, emb, mask, cfg, 1.0, gen, dtype, autocast=dtype != torch.float32 and not fsdp
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if d.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step = sorted(times)[len(times) // 2]
    f, _, h, w = shape
    video_tokens = f * (h // 2) * (w // 2)
    flops = train_flops_per_sample(model_cfg, n_linear, video_tokens, TEXT_LEN)
    samples_s = b * d.world_size / step
    peak = peak_tflops(args.peak_tflops)
    row = {
        "shape": name,
        "latents": list(shape),
        "tokens": video_tokens + TEXT_LEN,
        "batch_per_gpu": b,
        "world": d.world_size,
        "params_b": round(
            sum(p.numel() for p in model.parameters()) * (d.world_size if fsdp else 1) / 1e9, 3
        ),
        "step_s": round(step, 4),
        "samples_per_s": round(samples_s, 2),
        "tokens_per_s": round(samples_s * (video_tokens + TEXT_LEN)),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1) if d.device.type == "cuda" else None,
        "tflops_per_gpu": round(flops * samples_s / d.world_size / 1e12, 1),
        "mfu": round(flops * samples_s / (peak * 1e12 * d.world_size), 3) if peak else None,
        "ac": args.ac,
        "compile": args.compile,
        "dtype": str(dtype).removeprefix("torch."),
    }
    del model, opt
    if d.device.type == "cuda":
        torch.cuda.empty_cache()
    return row


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="stage1,stage2")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ac", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    p.add_argument("--compile", type=lambda s: s.lower() in ("1", "true", "yes"), default=False)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--cpu", action="store_true", help="2-layer smoke run on the CPU")
    p.add_argument("--loader", default=None, help="a stage folder: also time the shard stream alone")
    p.add_argument("--loader-workers", type=int, default=8)
    args = p.parse_args()
    rates = []
    if torch.cuda.is_available() or args.cpu:
        for name in args.shapes.split(","):
            row = bench_shape(name, SHAPES[name], args)
            rates.append(row["samples_per_s"] / row["world"])
            print(json.dumps(row), flush=True)
    else:
        print("train_bench: no CUDA device; trainer shapes skipped (use --cpu for a smoke run)")
    if args.loader:
        row = bench_loader(args.loader, args.batch_size, args.loader_workers, 20.0)
        # Without a GPU here, compare with the anchor: 11.7 stage-1 samples/s per H100 at 40% MFU.
        need = rates[0] if rates else ANCHOR_STAGE1_SAMPLES_S
        row.update(
            trainer_samples_per_s_per_gpu=need,
            loader_over_trainer=round(row["loader_samples_per_s"] / need, 2),
        )
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
