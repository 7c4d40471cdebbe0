"""What `vjp eval`'s reproducibility and intervals cost.

1. generation: per-video forward passes (what `vjp eval` does, so a video does not depend on its
   batch) against one batched forward of the same prompts, on a tiny trained checkpoint, as a
   ratio measured in the same run (on a GPU the batched path gains more; run it there too);
2. the bootstrap: seconds per FVD interval at N = 1,000 with 400-d features (200 resamples).

    python benchmarks/eval_bench.py [--videos 8] [--reps 200] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from tests.train_fixtures import make_tiny_checkpoint
    from training.eval.stats import bootstrap_fvd
    from training.sample import Sampler, fixed_threads

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_tiny_checkpoint(Path(tmp) / "ck")
        sampler = Sampler.from_checkpoint(str(ckpt), device=args.device)
        prompts = [f"夕暮れの海辺を柴犬が走っている {i}" for i in range(args.videos)]
        seeds = list(range(args.videos))
        kw = {"frames": 16, "height": 32, "width": 32}
        sampler.generate(prompts[:1], seeds[:1], **kw)  # warm-up
        times = {}
        for name, bs in (("batched", args.videos), ("per_video", 1)):
            with fixed_threads(1):
                t0 = time.perf_counter()
                sampler.generate(prompts, seeds, batch_size=bs, **kw)
                times[name] = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1000, 400)), rng.normal(0.1, 1.0, size=(1000, 400))
    t0 = time.perf_counter()
    bootstrap_fvd(a, b, args.reps)
    boot = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "videos": args.videos,
                "device": args.device,
                "batched_s": round(times["batched"], 3),
                "per_video_s": round(times["per_video"], 3),
                "per_video_over_batched": round(times["per_video"] / times["batched"], 2),
                "bootstrap_reps": args.reps,
                "bootstrap_s_per_interval_n1000_d400": round(boot, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
