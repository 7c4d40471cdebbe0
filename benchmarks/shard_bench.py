"""Stage-shard throughput: samples/s written per core, loader samples/s per core, ratio to the trainer.

    .venv/bin/python benchmarks/shard_bench.py [--clips 8] [--size 1920x1080] [--seconds 5]
        [--stages stage1,stage2] [--step-time stage1=1.0,stage2=2.0] [--batch stage1=8,stage2=1]

Generates textured, panning H.264 clips at --size (the curated clips the writer reads; 1080p short
side at most), shards them with the presets of jobs/configs/shard.yaml on ONE thread, and times:
- writer: samples per CPU-second (decode the window, crop/resize, x264 encode, tar), with the
  split between decode, resize and encode;
- loader: samples per CPU-second of ShardDataModule (tar read, H.264 decode, float tensor
  [T, C, H, W] in [-1, 1]) with num_workers=0, so one core;
- trainer: samples/s one GPU consumes at the stated step time and per-GPU batch, and the ratio
  loader/trainer = how many GPUs one loader core keeps fed (< 1: give each GPU 1/ratio cores).
CPU seconds are process CPU time, so numbers are per core even on a busy shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.shard import shard_stage  # noqa: E402
from tests.test_shards import make_clips  # noqa: E402
from training.data.loader import ShardDataModule  # noqa: E402
from training.data.shard_writer import encode_mp4, load_window, plan_sample, probe_clip  # noqa: E402
from training.data.stages import load_config, parse_config  # noqa: E402


def _pairs(text: str, cast: Any) -> dict[str, Any]:
    return {k: cast(v) for k, v in (p.split("=") for p in text.split(",") if p)}


def bench_stage(
    stage: str, cfg: Any, manifests: Path, out: Path, step_time: float, batch: int
) -> dict[str, Any]:
    root = manifests.parent
    # Writer, one thread: the whole job (probe, plan, render, tar, index).
    c0, t0 = time.process_time(), time.time()
    summary = shard_stage(str(manifests), stage, str(out), cfg, runner="local")
    writer_cpu, writer_wall = time.process_time() - c0, time.time() - t0
    n = summary["samples_written"]
    # Where the writer's time goes, on the same clips.
    import pyarrow.parquet as pq

    parts = {"decode+crop/scale": 0.0, "encode": 0.0}
    preset = cfg.stage(stage)
    for clip in pq.read_table(manifests / "clips" / "clips.parquet").to_pylist()[:4]:
        plan = plan_sample(clip, {}, probe_clip(str(root / clip["clip_path"])), stage, cfg)
        if isinstance(plan, str):
            continue
        c = time.process_time()
        w = plan.meta.window
        frames = load_window(
            str(root / plan.clip_path), w.frame_indices, w.region, preset.width, preset.height
        )
        parts["decode+crop/scale"] += time.process_time() - c
        c = time.process_time()
        encode_mp4(frames, preset.fps, preset.codec, preset.crf, preset.preset)
        parts["encode"] += time.process_time() - c
    total = sum(parts.values()) or 1.0
    # Loader, one core: decode every sample of the stage into float tensors, twice.
    dm = ShardDataModule(out / stage, batch_size=1, num_workers=0, resampled=False, shuffle_buffer=0)
    c0 = time.process_time()
    loaded = 0
    for _ in range(2):
        for b in dm.loader():
            loaded += b["video"].shape[0]
    loader_cpu = time.process_time() - c0
    trainer = batch / step_time
    loader_rate = loaded / loader_cpu
    return {
        "stage": stage,
        "size": f"{preset.width}x{preset.height}x{preset.frames}",
        "samples": n,
        "writer_samples_per_core_s": round(n / writer_cpu, 3),
        "writer_wall_s": round(writer_wall, 2),
        "writer_split": {k: f"{100 * v / total:.0f}%" for k, v in parts.items()},
        "bytes_per_sample": round(summary["train"]["bytes"] / max(1, summary["train"]["samples"])),
        "loader_samples_per_core_s": round(loader_rate, 2),
        "trainer_samples_per_gpu_s": round(trainer, 2),
        "step_time_s": step_time,
        "batch_per_gpu": batch,
        "loader_to_trainer_ratio_per_core": round(loader_rate / trainer, 2),
        "loader_cores_per_gpu": round(trainer / loader_rate, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--size", default="1920x1080", help="clip file size WxH (curation caps at 1080p)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--stages", default="stage1,stage2")
    ap.add_argument("--step-time", default="stage1=1.0,stage2=2.0", help="trainer seconds per step")
    ap.add_argument("--batch", default="stage1=8,stage2=1", help="trainer samples per GPU per step")
    ap.add_argument("--work", default=None, help="folder to keep clips and shards (default: a temp dir)")
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    steps, batches = _pairs(args.step_time, float), _pairs(args.batch, int)
    data = load_config(REPO / "jobs" / "configs" / "shard.yaml").model_dump(mode="json")
    data["captions"]["fallback"] = "source_caption"
    data["split"]["eval_fraction"] = 0.0
    for preset in data["stages"].values():  # steady state: no calibration encodes (8 per job)
        preset["target_shard_bytes"] = None
    data["runner"].update(progress=False, max_in_flight=1)  # one writer thread: per-core numbers
    cfg = parse_config(data)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        frames = int(args.seconds * args.fps)
        specs = [
            {
                "clip_id": f"bench{i:03d}_0000000_{frames:07d}",
                "video_id": f"bench{i:03d}",
                "width": w,
                "height": h,
                "frames": frames,
                "fps": args.fps,
                "caption": f"ベンチマーク用のクリップ{i}。",
            }
            for i in range(args.clips)
        ]
        t0 = time.time()
        manifests = make_clips(work / "curated", specs)
        made = f"{args.clips} clips {w}x{h}, {frames} frames at {args.fps} fps"
        print(f"# {made} made in {time.time() - t0:.1f} s", file=sys.stderr)
        results = [
            bench_stage(s, cfg, manifests, work / "shards", steps.get(s, 1.0), batches.get(s, 1))
            for s in args.stages.split(",")
        ]
    print(json.dumps(results, indent=2, ensure_ascii=False))
    for r in results:
        split = ", ".join(f"{k} {v}" for k, v in r["writer_split"].items())
        print(
            f"{r['stage']} {r['size']}: writer {r['writer_samples_per_core_s']} samples/s/core ({split}); "
            f"loader {r['loader_samples_per_core_s']} samples/s/core; trainer "
            f"{r['trainer_samples_per_gpu_s']} samples/s/GPU (batch {r['batch_per_gpu']} "
            f"@ {r['step_time_s']} s/step): ratio {r['loader_to_trainer_ratio_per_core']} "
            f"-> {r['loader_cores_per_gpu']} loader cores per GPU"
        )


if __name__ == "__main__":
    main()
