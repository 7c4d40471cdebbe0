"""`vjp decide`: re-decide every clip from stored scores with new thresholds; no frame is decoded.

Clips that become kept and were extracted before are published at once; clips that were never
extracted are listed, and a rerun of `vjp curate` with the same config extracts only those.
"""

from __future__ import annotations

import argparse
import json

from curation.config import load_config
from curation.pipeline import finalize
from jobs.curate import DEFAULT_CONFIG


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder of a previous `vjp curate`")
    p.add_argument("--config", default=None, help="YAML with the new thresholds")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config or DEFAULT_CONFIG)
    summary = finalize(args.out, cfg)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
