"""`vjp eval`: FVD of generated vs held-out real videos from their Japanese captions (the seed
report's protocol), with a baseline's FVD, the real-vs-real floor and an optional alignment proxy.

    vjp eval --ckpt RUN/checkpoints/step_N --shards SHARDS/stage1 [--num 1000] [--baseline-dir DIR] \\
        --out EVAL [--config eval.yaml] [--set fvd.weights=/models/i3d_pretrained_400.pt]

Writes EVAL/generated/<key>.mp4 + EVAL/prompts.jsonl (a rerun generates only what is missing),
EVAL/metrics.json, EVAL/features/*.npz, EVAL/strips/ and EVAL/report.html.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "eval.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ckpt", required=True, help="RUN/checkpoints/step_N, its export/ folder, or RUN (latest)"
    )
    p.add_argument("--shards", required=True, help="a stage folder written by vjp shard (SHARDS/stage1)")
    p.add_argument("--out", required=True, help="evaluation folder (EVAL)")
    p.add_argument("--num", type=int, default=None, help="eval samples (overrides eval.num; default 1000)")
    p.add_argument(
        "--baseline-dir", default=None, help="a baseline model's videos (<key>.mp4 to pair by prompt)"
    )
    p.add_argument("--config", default=None, help=f"YAML config, `eval` section (default: {DEFAULT_CONFIG})")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, dotted key, YAML value (repeatable), e.g. --set fvd.weights=PATH",
    )
    p.add_argument("--runner", choices=["local", "ray"], default=None, help="overrides generate.runner")
    p.add_argument(
        "--device", default=None, help="overrides generate.device, fvd.device and align.device (cpu | cuda)"
    )


def run(args: argparse.Namespace) -> int:
    from training.eval.config import load_eval_config
    from training.eval.evaluate import evaluate

    overrides = list(args.overrides)
    if args.num is not None:
        overrides.append(f"num={args.num}")
    if args.runner:
        overrides.append(f"generate.runner={args.runner}")
    if args.device:
        overrides += [
            f"generate.device={args.device}",
            f"fvd.device={args.device}",
            f"align.device={args.device}",
        ]
    cfg = load_eval_config(args.config or DEFAULT_CONFIG, overrides)  # ConfigError -> exit 2 in the CLI

    def log(msg: str) -> None:
        print(f"vjp eval: {msg}", file=sys.stderr, flush=True)

    try:
        metrics = evaluate(args.ckpt, args.shards, args.out, cfg, args.baseline_dir, log)
    except (FileNotFoundError, ValueError) as e:
        print(f"vjp eval: {e}", file=sys.stderr)
        return 2
    summary = {
        "out": args.out,
        "n": metrics.n,
        "fvd": metrics.fvd.model_dump(),
        "feature_network": metrics.feature_network,
        "checkpoint_step": metrics.checkpoint_step,
        "generated": {k: v for k, v in metrics.generated.items() if k != "failed"},
        "failed": len(metrics.generated["failed"]),
        "errors": len(metrics.errors),
    }
    print(json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False))
    return 1 if metrics.generated["failed"] else 0
