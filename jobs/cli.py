"""`vjp`: a thin command line over the job entrypoints in jobs/."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand -> module exposing add_arguments(parser) and run(args) -> int. Modules are
# imported lazily so `vjp curate` never pays for torch or transformers.
COMMANDS = {
    "curate": ("jobs.curate", "sources -> probe -> split -> filter -> clips and manifests"),
    "decide": ("jobs.decide", "re-decide kept/rejected from stored scores with new thresholds"),
    "report": ("jobs.report", "HTML report (filter funnel, score histograms, contact sheet)"),
    "sample-corpus": ("jobs.sample_corpus", "write the generated sample videos"),
    "caption": ("jobs.caption", "Japanese captions with Qwen2-VL (vLLM, OpenAI API, transformers)"),
    "shard": ("jobs.shard", "captioned clips -> WebDataset shards of one resolution stage, with index"),
    "encode": ("jobs.encode", "optional: VAE latents + text embeddings -> derived shards"),
    "pairs": ("jobs.pairs", "Video-DPO preference pairs (JSONL or vjp compare votes) -> pair shards"),
    "train": ("jobs.train", "train the rectified-flow video DiT on stage shards (torchrun or Ray Train)"),
    "sample": ("jobs.sample", "generate videos from Japanese prompts with a trained checkpoint"),
    "eval": ("jobs.eval", "FVD of generated vs held-out videos from their Japanese captions"),
    "compare": ("jobs.compare", "blind A/B web page for the human study of two video folders, and its tally"),
    "run": ("jobs.run", "the whole pipeline from one config: curate, caption, shard, encode, train"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vjp", description="videojp-data: curate, caption and shard video")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            p.set_defaults(_missing=module)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"vjp {args.command}: not available ({args._missing} missing)", file=sys.stderr)
        return 2
    from curation.configfile import ConfigError

    try:
        return int(importlib.import_module(args._module).run(args))
    except ConfigError as e:  # every step's config errors name the bad key path; no traceback
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
