"""Ray Data adapter: CPU tasks sample frames, an actor pool (one engine per actor, num_gpus each)
captions batches and writes one manifest part per batch.

The per-batch logic is runner.caption_batch; this module only moves rows between stages. Rows
carry the clip as JSON and frames as raw bytes + shape (no pickled objects). Each actor writes its
own part files, so a job that dies half-way keeps what it finished and a rerun does the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from captioning.config import CaptionConfig
from captioning.frames import FrameSample
from captioning.manifest import write_part
from captioning.runner import (
    ClipWork,
    RunContext,
    RunStats,
    batch_key,
    caption_batch,
    error_rows,
    missing_keys,
    prepare_clip,
)

PREP_SCHEMA = pa.schema(
    [
        ("clip_json", pa.string()),
        ("error", pa.string()),
        ("frames_bytes", pa.large_binary()),
        ("frames_shape", pa.list_(pa.int32())),
        ("sample_fps", pa.float64()),
        ("source_fps", pa.float64()),
        ("frame_indices", pa.list_(pa.int64())),
        ("prep_s", pa.float64()),
    ]
)
SUMMARY_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("caption_type", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("tokens_out", pa.int64()),
        ("prep_s", pa.float64()),
        ("gen_s", pa.float64()),
    ]
)


def prep_frames_batch(batch: pa.Table, cfg_json: str, out_dir: str) -> pa.Table:
    """Ray task body: sample frames of each clip in the batch (errors stay in the row)."""
    cfg = CaptionConfig.model_validate_json(cfg_json)
    out = []
    for rec in batch.to_pylist():
        work = prepare_clip(json.loads(rec["clip_json"]), out_dir, cfg)
        row: dict[str, Any] = {"clip_json": rec["clip_json"], "error": work.error}
        if work.frames is not None:
            row.update(work.frames.to_record())
        out.append(row)
    return pa.Table.from_pylist(out, schema=PREP_SCHEMA)


class CaptionActor:
    """Ray actor: loads the backend once (setup), captions batches (process)."""

    def __init__(self, backend_name: str, cfg_json: str, out_dir: str, captions_dir: str, ctx: dict) -> None:
        from captioning.backends.base import make_backend

        self.cfg = CaptionConfig.model_validate_json(cfg_json)
        self.backend = make_backend(backend_name, self.cfg)
        # Strings, not Path: OUT may be a URL (s3://...), which Path would mangle.
        self.out_dir = out_dir
        self.captions_dir = captions_dir
        self.ctx = RunContext(**ctx)

    def __call__(self, batch: pa.Table) -> pa.Table:
        works = []
        for rec in batch.to_pylist():
            clip = json.loads(rec["clip_json"])
            frames = FrameSample.from_record(rec) if rec["error"] is None else None
            works.append(ClipWork(clip, frames=frames, error=rec["error"]))
        rows = caption_batch(works, self.backend, self.cfg, self.ctx, self.out_dir)
        write_part(rows, self.captions_dir, self.ctx.run_id, batch_key([w.clip for w in works]))
        return pa.Table.from_pylist(
            [
                {
                    "clip_id": r.clip_id,
                    "caption_type": r.caption_type,
                    "status": r.status,
                    "reason": r.reason,
                    "tokens_out": r.tokens_out,
                    "prep_s": r.prep_s,
                    "gen_s": r.gen_s,
                }
                for r in rows
            ],
            schema=SUMMARY_SCHEMA,
        )


def ensure_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        # A local one-node Ray for laptops and tests; RAY_ADDRESS, if set, is honoured by ray.init.
        ray.init(include_dashboard=False)


class ResourceError(RuntimeError):
    """The Ray cluster lacks the resources the actor pool asks for."""


def check_gpus(num_gpus: float, actors: int) -> None:
    """Fail fast instead of letting Ray wait forever for GPUs the cluster does not have."""
    import ray

    if num_gpus <= 0:
        return
    have = float(ray.cluster_resources().get("GPU", 0))
    need = num_gpus * actors
    if have < need:
        raise ResourceError(
            f"the vllm actor pool needs {need:g} GPU(s) ({actors} actor(s) x {num_gpus:g}); the Ray cluster "
            f"has {have:g}. Use a GPU cluster (--address), or set vllm.num_gpus_per_actor: 0 for a CPU "
            "build of vLLM."
        )


def run_ray(
    work: list[dict[str, Any]],
    backend_name: str,
    cfg: CaptionConfig,
    ctx: RunContext,
    out_dir: str | Path,
    captions_dir: str | Path,
    address: str | None = None,
) -> RunStats:
    import time

    import ray
    import ray.data

    t0 = time.perf_counter()
    ensure_ray(address)
    stats = RunStats(clips=len(work))
    if not work:
        return stats
    if backend_name == "vllm":
        num_gpus, actors, batch_size = cfg.vllm.num_gpus_per_actor, cfg.vllm.num_actors, cfg.vllm.batch_size
        check_gpus(num_gpus, actors)
    else:
        num_gpus, actors = 0.0, 1
        batch_size = cfg.transformers.batch_size if backend_name == "transformers" else cfg.vllm.batch_size

    dctx = ray.data.DataContext.get_current()
    # A dead actor or task fails its block; with this limit the job goes on and the clips of that
    # block simply have no rows yet, so the next run picks them up.
    dctx.max_errored_blocks = cfg.run.max_errored_blocks
    cfg_json = cfg.model_dump_json()
    items = [{"clip_json": json.dumps(c, ensure_ascii=False, default=str)} for c in work]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 64)))
    ds = ds.map_batches(
        prep_frames_batch,
        fn_kwargs={"cfg_json": cfg_json, "out_dir": str(out_dir)},
        batch_size=cfg.run.frame_batch_size,
        batch_format="pyarrow",
        num_cpus=1,
        concurrency=cfg.run.frame_workers,
    )
    ds = ds.map_batches(
        CaptionActor,
        fn_constructor_kwargs={
            "backend_name": backend_name,
            "cfg_json": cfg_json,
            "out_dir": str(out_dir),
            "captions_dir": str(captions_dir),
            "ctx": ctx.__dict__,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        num_gpus=num_gpus,
        num_cpus=1,
        concurrency=actors,
    )
    summary = ds.take_all()
    for row in summary:
        stats.rows += 1
        stats.status[row["status"]] += 1
        stats.tokens_out += row["tokens_out"] or 0
        stats.prep_s += row["prep_s"] or 0.0
        stats.gen_s += row["gen_s"] or 0.0
    # Blocks lost to a dead actor or task (tolerated by max_errored_blocks) left no rows: record
    # them as errors so nothing disappears silently; the next run retries them.
    lost = missing_keys(work, {(r["clip_id"], r["caption_type"]) for r in summary}, cfg)
    if lost:
        rows = error_rows(lost, "worker: batch lost (Ray actor or task died)", cfg, ctx)
        write_part(rows, captions_dir, ctx.run_id, "lost-" + batch_key(lost))
        stats.add_rows(rows)
    stats.wall_s = time.perf_counter() - t0
    return stats
