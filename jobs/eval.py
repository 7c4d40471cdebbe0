"""`vjp eval`: FVD of generated vs held-out real videos from their Japanese captions (the seed
report's protocol), under named presets (fvd16 and stage), with bootstrap intervals, a baseline's
FVD, the real-vs-real reference at the same N and an optional alignment proxy.

    vjp eval --ckpt RUN/checkpoints/step_N --shards SHARDS/stage1 [--sources pixabay] [--num 1000] \\
        [--baseline-dir DIR] --out EVAL [--config eval.yaml] [--set fvd.weights=i3d_pretrained_400.pt]
    vjp eval --ckpt ... --real-dir DIR --prompts PROMPTS.jsonl --out EVAL    # an external eval set

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
    p.add_argument(
        "--shards", default=None, help="a stage folder written by vjp shard (SHARDS/stage1): its eval split"
    )
    p.add_argument(
        "--sources", default=None, help="comma-separated sources to keep (e.g. pixabay); sets real.sources"
    )
    p.add_argument("--real-dir", default=None, help="an external eval set's videos instead of the shards")
    p.add_argument(
        "--prompts", default=None, help='with --real-dir: JSONL of {"file", "prompt"} (Japanese captions)'
    )
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
    if args.sources:
        names = [x.strip() for x in args.sources.split(",") if x.strip()]
        overrides.append("real.sources=" + json.dumps(names))
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
        metrics = evaluate(
            args.ckpt, args.shards, args.out, cfg, args.baseline_dir, log, args.real_dir, args.prompts
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"vjp eval: {e}", file=sys.stderr)
        return 2
    summary = {
        "out": args.out,
        "n": metrics.n,
        "protocol": metrics.protocol,
        "fvd": {
            name: {
                k: (v["value"] if isinstance(v, dict) and "value" in v else v)
                for k, v in r.model_dump().items()
                if k.endswith("_real") or k.startswith("n_")
            }
            for name, r in metrics.fvd.items()
        },
        "feature_network": metrics.feature_network,
        "checkpoint_step": metrics.checkpoint_step,
        "generated": {k: v for k, v in metrics.generated.items() if k != "failed"},
        "failed": len(metrics.generated["failed"]),
        "errors": len(metrics.errors),
    }
    print(json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False))
    return 1 if metrics.generated["failed"] else 0
