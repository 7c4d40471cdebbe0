"""`vjp decide`: re-decide every clip from stored scores with new thresholds; no frame is decoded.

Clips that become kept and were extracted before are published at once; clips that were never
extracted are listed, and a rerun of `vjp curate` with the same config extracts only those.
"""

from __future__ import annotations

import argparse
import json

from curation.config import parse_config
from curation.configfile import add_set_argument, load_section
from curation.pipeline import finalize
from jobs.curate import DEFAULT_CONFIG


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder of a previous `vjp curate`")
    p.add_argument("--config", default=None, help="YAML with the new thresholds")
    add_set_argument(p, "filters.blur_min=30")


def run(args: argparse.Namespace) -> int:
    cfg = parse_config(*load_section(args.config or DEFAULT_CONFIG, "curate", args.overrides))
    summary = finalize(args.out, cfg)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
