"""`vjp curate`: sources -> probe -> split -> filter -> clips, with Parquet manifests; resumable."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

from curation import __version__, atomic
from curation.atomic import join
from curation.config import CurateConfig, parse_config
from curation.configfile import add_set_argument, load_section
from curation.manifest import VIDEO_SCHEMA, write_table_atomic
from curation.pipeline import (
    Layout,
    ResumeIndex,
    base_row,
    error_row,
    finalize,
    process_video,
    process_videos,
)
from curation.sources import open_source
from curation.sources.base import VideoItem
from jobs.runner import BatchSizer, init_ray, map_ray_batched, map_threads

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "curate.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        required=True,
        help="pixabay:PATH_OR_URL | finevideo:PATH_OR_URL | files:'GLOB' | sample: (generated videos)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder: local, shared, or s3://BUCKET/PREFIX, gs://... (credentials from env)",
    )
    p.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
    p.add_argument(
        "--address", default=None, help="Ray address; default RAY_ADDRESS or an embedded local Ray"
    )
    p.add_argument("--runner", choices=["ray", "local"], default="ray", help="local = threads, no Ray")
    p.add_argument("--limit", type=int, default=0, help="process at most this many videos (0 = all)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    add_set_argument(p, "filters.blur_min=30")


def _source_spec(spec: str, out: str) -> str:
    if spec.startswith("sample:"):
        from curation.synth import write_sample_corpus

        # Generated deterministically, so with OUT on an object store a local cache does as well.
        folder = (
            os.path.join(tempfile.gettempdir(), "vjp-sample-videos")
            if atomic.is_url(out)
            else join(out, "sample_videos")
        )
        if not os.path.isdir(folder):
            write_sample_corpus(folder)
        return f"files:{folder}/*.mp4"
    return spec


def _limited(items: Any, limit: int) -> Any:
    for i, item in enumerate(items):
        if limit and i >= limit:
            return
        yield item


def curate(
    source: str, out: str, cfg: CurateConfig, runner: str = "ray", address: str | None = None, limit: int = 0
) -> dict[str, Any]:
    """The whole job; returns its summary. Safe to rerun: finished videos are skipped."""
    atomic.makedirs(out)
    src = open_source(_source_spec(source, out))
    # One read of the (compacted) manifests says which videos are done; workers get the rest.
    todo = ResumeIndex.load(out, cfg).pending(_limited(src.iter_items(), limit))
    if runner == "ray":
        init_ray(address)
        transnet = None
        if cfg.split.detector in ("transnetv2", "fused"):
            from curation.transnet import start_actor

            # On a GPU one actor holds TransNetV2 and every video's analysis sends it frames.
            transnet = start_actor(cfg.split.detector, cfg.split.transnet_device)
        # Videos go in batches (one Ray task and one manifest part each); each worker decodes
        # in a long-lived child.
        sizer = BatchSizer(cfg.runner.videos_per_task, cfg.runner.task_seconds)
        results = map_ray_batched(
            process_videos,
            todo,
            (out, cfg, transnet),
            cfg.runner.max_in_flight,
            cfg.runner.num_cpus_per_video,
            sizer,
            per_batch=True,
        )
    else:
        results = map_threads(process_video, todo, (out, cfg), cfg.runner.max_in_flight)
    progress = _progress(cfg.runner.progress)
    t0 = time.time()
    for item, row, exc in results:
        if exc is not None and isinstance(item, VideoItem):
            # The worker itself died (not a decoder: that is caught in the worker). Record it.
            row = error_row(base_row(item, cfg), "analyze", f"worker failed: {type(exc).__name__}: {exc}")
            write_table_atomic([row], VIDEO_SCHEMA, Layout(out).video_part(item.video_id))
        progress(row)
    summary = finalize(out, cfg)
    summary.update(
        elapsed_s=round(time.time() - t0, 2),
        config_hash=cfg.decision_hash,
        package_version=__version__,
        source=source,
        # Paths the source matched but did not treat as videos (directories...), by reason.
        inputs_skipped=dict(sorted(getattr(src, "skipped", {}).items())),
    )
    if summary["inputs_skipped"]:
        print(f"vjp curate: inputs skipped: {summary['inputs_skipped']}", file=sys.stderr)
    atomic.write_bytes(
        join(out, "manifests", "summary.json"), json.dumps(summary, indent=2, sort_keys=True).encode()
    )
    atomic.write_bytes(join(out, "manifests", "config.json"), cfg.model_dump_json(indent=2).encode())
    return summary


def _progress(enabled: bool) -> Any:
    if not enabled:
        return lambda row: None
    from tqdm import tqdm

    bar = tqdm(unit="video", desc="curate", file=sys.stderr, dynamic_ncols=True)
    counts = {"ok": 0, "error": 0}

    def update(row: dict[str, Any] | None) -> None:
        if row:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        bar.update(1)
        bar.set_postfix(counts)

    return update


def run(args: argparse.Namespace) -> int:
    cfg = parse_config(*load_section(args.config or DEFAULT_CONFIG, "curate", args.overrides))
    summary = curate(args.source, args.out, cfg, args.runner, args.address, args.limit)
    if not args.no_report:  # OUT/report.html, also into a bucket (jobs/report.py reads URLs)
        from jobs.report import write_report

        summary["report"] = write_report(args.out)
    print(json.dumps(summary, indent=2, sort_keys=True))
    # Non-zero only when nothing could be read: bad files are recorded, not fatal.
    return 1 if summary["videos"] and summary["videos_ok"] == 0 else 0
