"""`vjp caption`: Japanese captions for every kept clip -> OUT/manifests/captions/.

    vjp caption --clips OUT/manifests --backend vllm|openai|transformers [--model ID_OR_PATH]
                [--config jobs/configs/caption.yaml] [--address RAY_ADDRESS] [--retry-rejected]
                [--endpoint URL]

Exit status: 0 when every pending caption got a row that is ok or rejected, 1 when some rows are
errors (rerun to retry them), 2 for bad arguments or config. Runs under .venv-vllm too (no Ray
there: use --executor local).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from curation.configfile import add_set_argument, load_section

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "caption.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clips",
        required=True,
        help="OUT/manifests (holding the clips/ Parquet dataset); OUT may be s3://...",
    )
    parser.add_argument("--backend", choices=["vllm", "openai", "transformers"], default="vllm")
    parser.add_argument("--model", default=None, help="hub id or local dir (overrides model.id)")
    parser.add_argument("--revision", default=None, help="model revision to pin (overrides model.revision)")
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None,
        help="caption YAML config",
    )
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    parser.add_argument("--retry-rejected", action="store_true", help="also redo captions that were rejected")
    parser.add_argument(
        "--endpoint", default=None, help="OpenAI-compatible base URL (overrides openai.endpoint)"
    )
    parser.add_argument(
        "--redo-stale",
        action="store_true",
        help="also redo captions written under another config hash (new model, prompt, sampling, QA)",
    )
    parser.add_argument(
        "--executor",
        choices=["auto", "ray", "local"],
        default="auto",
        help="auto: Ray Data for vllm or when a cluster address is given, local threads otherwise",
    )
    parser.add_argument("--limit", type=int, default=None, help="caption at most this many pending clips")
    add_set_argument(parser, "retry.max_tries=2")
    parser.add_argument("--no-progress", action="store_true")


def choose_executor(executor: str, backend: str, address: str | None) -> str:
    if executor != "auto":
        return executor
    return "ray" if backend == "vllm" or address or os.environ.get("RAY_ADDRESS") else "local"


def caption_clips(
    clips_arg: str | Path,
    cfg: Any,
    backend: str = "vllm",
    executor: str = "auto",
    address: str | None = None,
    *,
    retry_rejected: bool = False,
    redo_stale: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Caption every pending kept clip of OUT/manifests; returns the run's counts. Raises
    FileNotFoundError (no clip manifest) and captioning.ray_runner.ResourceError."""
    from captioning.manifest import (
        compact_captions,
        new_run_id,
        pending_work,
        read_captions,
        read_kept_clips,
        resolve_layout,
    )
    from captioning.runner import RunContext, RunStats

    out_dir, clips_dir, captions_dir = resolve_layout(clips_arg)
    clips = read_kept_clips(clips_dir)
    compact_captions(captions_dir)  # a killed run's parts: merged before reading them
    work = pending_work(
        clips,
        read_captions(captions_dir),
        cfg.enabled_types(),
        retry_rejected,
        current_hash=cfg.content_hash() if redo_stale else None,
    )
    if limit is not None:
        work = work[:limit]
    executor = choose_executor(executor, backend, address)
    print(
        f"vjp caption: {len(clips)} kept clips, {len(work)} to caption "
        f"({backend}, {executor}, model {cfg.model.id}, config {cfg.content_hash()})",
        file=sys.stderr,
    )
    ctx = RunContext(
        backend_name=backend,
        model_id=cfg.model.id,
        model_revision=cfg.model.revision,
        run_id=new_run_id(),
        config_hash=cfg.content_hash(),
    )
    stats = RunStats()
    if work and executor == "ray":
        from captioning.ray_runner import run_ray

        stats = run_ray(work, backend, cfg, ctx, out_dir, captions_dir, address)
    elif work:
        from captioning.backends.base import make_backend
        from captioning.runner import run_local

        gen = make_backend(backend, cfg)
        batch = cfg.vllm.batch_size if backend in ("vllm", "openai") else cfg.transformers.batch_size
        try:
            stats = run_local(work, gen, cfg, ctx, out_dir, captions_dir, batch, progress=progress)
        finally:
            gen.close()
    if work:
        compact_captions(captions_dir)  # this run's per-batch parts -> few large files
    return {
        "run_id": ctx.run_id,
        "kept_clips": len(clips),
        "clips": len(work),
        "rows": stats.rows,
        "status": dict(stats.status),
        "tokens_out": stats.tokens_out,
        "wall_s": round(stats.wall_s, 2),
        "captions": str(captions_dir),
    }


def run(args: argparse.Namespace) -> int:
    from captioning.config import ConfigError, config_from_dict
    from captioning.ray_runner import ResourceError

    try:
        data, origin = load_section(args.config, "caption", args.overrides, what="caption config")
        # Flags are plain strings (a model path must not be read as YAML).
        for flag, section, key in (
            (args.model, "model", "id"),
            (args.revision, "model", "revision"),
            (args.endpoint, "openai", "endpoint"),
        ):
            if flag:
                data.setdefault(section, {})[key] = flag
        cfg = config_from_dict(data, origin)
        result = caption_clips(
            args.clips,
            cfg,
            args.backend,
            args.executor,
            args.address,
            retry_rejected=args.retry_rejected,
            redo_stale=args.redo_stale,
            limit=args.limit,
            progress=not args.no_progress,
        )
    except (ConfigError, ValueError, FileNotFoundError, ResourceError) as e:
        print(f"vjp caption: {e}", file=sys.stderr)
        return 2
    result.pop("kept_clips")
    print(json.dumps(result, ensure_ascii=False))
    return 1 if result["status"].get("error") else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vjp caption", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    # Make `python jobs/caption.py` work from a checkout without installing the package
    # (the .venv-vllm case: vLLM's venv gets the code via the path, not pip).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
