"""`vjp pairs`: Video-DPO preference pairs -> pair shards for `vjp train` with `train.objective: dpo`.

    vjp pairs --from-jsonl PAIRS.jsonl --stage stage1 --out PAIRS [--encode]
    vjp pairs --from-votes STUDY [--question alignment] --stage stage1 --out PAIRS [--encode]

Pairs come from a JSONL of {"prompt", "chosen", "rejected"} (video paths, relative to the file) or
from a `vjp compare` study's votes (the raters' majority per pair). Both videos of every pair are
fitted to the stage preset of the shard config (`--config`, default jobs/configs/shard.yaml) and
written to PAIRS/<stage>/train/NNNNNN.tar with an index, a sample table and
PAIRS/<stage>/__index__/pairs.jsonl (every input pair: ok with its shard, or error with the file and
reason). `--encode` stores VAE latents and the prompt's text embedding instead of the videos, with
the `encode:` section's models (as `vjp encode`). A rerun reuses shards whose pairs and settings
are unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from curation.configfile import add_set_argument
from jobs.encode import add_encoder_arguments, encode_config

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "shard.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-jsonl", default=None, help='JSONL of {"prompt", "chosen", "rejected"} per line')
    src.add_argument("--from-votes", default=None, help="a vjp compare study folder (STUDY with votes.jsonl)")
    p.add_argument("--question", default="alignment", help="with --from-votes: alignment or quality")
    p.add_argument("--stage", required=True, help="stage preset of the shard config the videos are fitted to")
    p.add_argument(
        "--out", required=True, help="root of the pair shards: OUT/<stage>/ (a folder or fsspec URL)"
    )
    p.add_argument("--config", default=None, help=f"shard YAML (`shard:` section; default {DEFAULT_CONFIG})")
    p.add_argument("--encode", action="store_true", help="store VAE latents + text embeddings (vjp encode's)")
    p.add_argument("--pairs-per-shard", type=int, default=500)
    add_encoder_arguments(p)
    add_set_argument(p, "stages.stage1.fps=24")


def read_preferences(args: argparse.Namespace) -> tuple[list[Any], list[Any], str]:
    """(preferences, error rows, source) from the JSONL or the study's votes."""
    from training.data.pair_format import PairRow
    from training.data.pairs import pairs_from_votes, read_pair_jsonl

    if args.from_jsonl:
        source = os.path.abspath(args.from_jsonl)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"pair file not found: {source}")
        prefs, errors = read_pair_jsonl(source)
    else:
        source = os.path.abspath(args.from_votes)
        if not os.path.isdir(source):
            raise FileNotFoundError(f"study folder not found: {source}")
        prefs, errors = pairs_from_votes(source, args.question)
    rows = []
    for e in errors:  # "FILE:LINE: reason" / "STUDY:KEY: reason": the row keeps the whole message
        rows.append(PairRow(source=e.partition(": ")[0] or source, status="error", reason=e))
    return prefs, rows, source


def run(args: argparse.Namespace) -> int:
    from training.data.pair_shards import plan_pairs, write_pair_shards

    t0 = time.time()
    cfg = encode_config(args)
    try:
        cfg.stage(args.stage)
        if args.pairs_per_shard < 1:
            raise ValueError("--pairs-per-shard must be >= 1")
        prefs, errors, source = read_preferences(args)
        plans, plan_errors = plan_pairs(prefs, args.stage, cfg)
        summary = write_pair_shards(
            plans,
            [*errors, *plan_errors],
            args.out,
            args.stage,
            cfg,
            source,
            args.encode,
            args.pairs_per_shard,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"vjp pairs: {e}", file=sys.stderr)
        return 2
    summary["elapsed_s"] = round(time.time() - t0, 2)
    print(json.dumps(summary, indent=2, ensure_ascii=False, sort_keys=True))
    if not summary["pairs"]:
        print(
            f"vjp pairs: no usable pair in {source} (see {summary['out']}/__index__/pairs.jsonl)",
            file=sys.stderr,
        )
        return 2
    return 0
