"""`vjp sample-corpus DIR`: the generated videos the README's quick start curates."""

from __future__ import annotations

import argparse

from curation.synth import write_sample_corpus


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="where to write the sample mp4 files")


def run(args: argparse.Namespace) -> int:
    for path in write_sample_corpus(args.folder):
        print(path)
    return 0
