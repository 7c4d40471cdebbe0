"""`vjp shard`: captioned clips -> WebDataset tars of one resolution stage, with index; resumable.

    vjp shard --clips OUT/manifests --stage stage1 --out SHARDS [--config ...] [--address ...]

Plan first, then write: every kept clip gets a caption choice, a split, a probe of its file and
a frame window (or a recorded skip reason); samples are grouped into shards deterministically,
and one task per shard builds its samples' metas, checks its record and renders and writes its
tar (temporary name + rename) and a record. A rerun rewrites only shards whose plan changed or
whose file is missing.

--clips and --out may each be a folder or an fsspec URL (s3://, gs://): the manifests are read from
the bucket, each clip object is fetched by the task that renders it into a temporary file removed
right after, and shards and indexes are written as objects under their final names, index last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curation.configfile import add_set_argument, load_section
from jobs.runner import init_ray, map_ray, map_threads
from training.data import store

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "shard.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clips",
        required=True,
        help="OUT/manifests of the curation job (clips/ and captions/), a folder or an fsspec URL "
        "(s3://bucket/prefix/manifests): manifests and clip files are read from there",
    )
    p.add_argument("--stage", required=True, help="stage preset name from the config (stage1, stage2, ...)")
    p.add_argument(
        "--out",
        required=True,
        help="shard root, a folder or an fsspec URL (s3://bucket/prefix): writes "
        "OUT/<stage>/<split>/NNNNNN.tar + OUT/<stage>/__index__/",
    )
    p.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
    p.add_argument(
        "--address", default=None, help="Ray address; default RAY_ADDRESS or an embedded local Ray"
    )
    p.add_argument("--runner", choices=["ray", "local"], default="ray", help="local = threads, no Ray")
    p.add_argument("--verify", action="store_true", help="re-hash existing shards before trusting them")
    add_set_argument(p, "stages.stage1.crf=20")


# ---- inputs ----------------------------------------------------------------------------------
# The curation output (manifests and clip files) is a folder or an object-store URL: the manifests
# are read through curation.manifest's readers (committed files only, one listing per folder) and
# each clip is opened from where it lies, so no copy of the corpus is made anywhere.
def resolve_layout(clips_arg: str | Path) -> tuple[str, str, str]:
    """(OUT, clip manifest dir, caption manifest dir) from OUT/manifests, OUT/manifests/clips or OUT,
    each a local path or a URL (s3://bucket/prefix/manifests)."""
    from captioning.manifest import resolve_layout as resolve

    if not store.is_url(clips_arg):
        clips_arg = store.local_path(clips_arg)
    root, clips_dir, captions_dir = resolve(clips_arg)
    return os.fspath(root), os.fspath(clips_dir), os.fspath(captions_dir)


def _clip_columns(clips_dir: str | Path) -> list[str]:
    """The clip manifest's columns, with the ones every reader needs checked."""
    from curation.manifest import dataset_schema

    schema = dataset_schema(os.fspath(clips_dir))
    if schema is None:
        raise FileNotFoundError(f"no parquet parts in {clips_dir}")
    missing = {"clip_id", "video_id", "status", "clip_path"} - set(schema.names)
    if missing:
        raise ValueError(f"clip manifest {clips_dir} lacks columns {sorted(missing)}")
    return list(schema.names)


def read_kept_clips(clips_dir: str | Path) -> list[dict[str, Any]]:
    import pyarrow.dataset as ds

    from curation.manifest import read_table

    _clip_columns(clips_dir)
    rows = read_table(os.fspath(clips_dir), group_key=None, filter=ds.field("status") == "kept").to_pylist()
    return sorted((r for r in rows if r.get("clip_path")), key=lambda r: r["clip_id"])


def read_kept_table(clips_dir: str | Path) -> Any:
    """Kept clips with a file, sorted by clip id, as an Arrow table of the columns planning reads."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from curation.manifest import read_table
    from training.data.planning import PLAN_COLUMNS

    names = _clip_columns(clips_dir)
    cols = [c for c in PLAN_COLUMNS if c in names]
    table = read_table(
        os.fspath(clips_dir),
        columns=cols,
        group_key=None,
        filter=(ds.field("status") == "kept") & ds.field("clip_path").is_valid(),
    )
    table = table.filter(pc.not_equal(table.column("clip_path"), ""))  # a row with "" has no file either
    return table.sort_by("clip_id")


def _has_captions(captions_dir: str | Path) -> bool:
    from curation.manifest import committed_files

    return bool(committed_files(os.fspath(captions_dir)))


def read_caption_table(captions_dir: str | Path, clip_ids: Any) -> Any:
    """The latest caption per (clip, type) of the clips in `clip_ids` (training.data.planning)."""
    import pyarrow as pa

    from training.data.planning import VARIANT_COLUMNS, CaptionTable

    if not _has_captions(captions_dir):
        return CaptionTable(pa.table({}), clip_ids)
    from captioning.manifest import read_captions

    return CaptionTable(read_captions(captions_dir, latest=True, columns=list(VARIANT_COLUMNS)), clip_ids)


def read_caption_variants(captions_dir: str | Path) -> dict[str, dict[str, Any]]:
    """clip_id -> {caption_type: CaptionVariant}, latest row per (clip, type), every status."""
    from training.data.sample_format import CaptionVariant

    if not _has_captions(captions_dir):
        return {}
    from captioning.manifest import read_captions

    fields = set(CaptionVariant.model_fields)
    out: dict[str, dict[str, Any]] = {}
    for row in read_captions(captions_dir, latest=True).to_pylist():
        variant = CaptionVariant.model_validate({k: v for k, v in row.items() if k in fields})
        out.setdefault(row["clip_id"], {})[row["caption_type"]] = variant
    return out


def clip_locations(
    clips: Any, root: str, clips_dir: str, limit: int = 20
) -> tuple[list[tuple[str, str]], dict[str, str], list[str]]:
    """(clip id, file location) of every kept clip whose clip_path stays inside the curation output,
    the refused ones (clip id -> "unsafe_path"), and up to `limit` messages naming the manifest,
    the clip and its path (a manifest is input: `../x` or another bucket's URL is never opened)."""
    todo: list[tuple[str, str]] = []
    refused: dict[str, str] = {}
    messages: list[str] = []
    cids, rels = clips.column("clip_id").to_pylist(), clips.column("clip_path").to_pylist()
    for cid, rel in zip(cids, rels, strict=True):
        try:
            todo.append((cid, store.member(root, rel, f"{clips_dir}: clip {cid}")))
        except store.UnsafePath as e:
            refused[cid] = "unsafe_path"
            if len(messages) < limit:
                messages.append(str(e))
    return todo, refused, messages


def _probe_batch(batch: list[tuple[str, str]], storage_options: Any = None) -> list[tuple[str, Any]]:
    from training.data.shard_writer import probe_clip

    return [(cid, probe_clip(path, storage_options)) for cid, path in batch]


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _run(
    fn: Any, items: Any, extra: tuple[Any, ...], runner: str, cfg: Any
) -> Iterator[tuple[Any, Any, Any]]:
    if runner == "ray":
        return map_ray(fn, items, extra, cfg.runner.max_in_flight, cfg.runner.num_cpus_per_shard)
    return map_threads(fn, items, extra, cfg.runner.max_in_flight)


# ---- the job ---------------------------------------------------------------------------------
def _clean_stale(out: str, stage: str, planned: dict[str, int], storage_options: Any = None) -> list[str]:
    """Remove temporaries of killed runs and numbered shards beyond the current plan."""
    from training.data import store
    from training.data.sample_format import SPLITS, shard_number
    from training.data.shard_writer import record_path, split_dir

    removed = []
    for split in SPLITS:
        folder = split_dir(out, stage, split)
        for name in store.listdir(folder, storage_options):
            n = shard_number(name)
            stale_tmp = name.startswith(".") and ".tar.tmp-" in name
            if stale_tmp or (n is not None and n >= planned.get(split, 0)):
                store.remove(store.join(folder, name), storage_options)
                removed.append(f"{split}/{name}")
                rec = record_path(out, stage, split, name)
                if n is not None and store.exists(rec, storage_options):
                    store.remove(rec, storage_options)
    return removed


SAMPLE_COLUMNS = ("clip_id", "video_id", "split", "status", "reason", "shard")


class SampleRows:
    """samples.parquet as columns: one list entry per clip instead of a dict per clip (millions of
    clips). Rows are added skips first (clip order), then planned samples (shard order)."""

    def __init__(self) -> None:
        self.cols: dict[str, list[str | None]] = {c: [] for c in SAMPLE_COLUMNS}

    def add(
        self, clip_id: str, video_id: str, split: str, reason: str | None, shard: str | None, ok: bool = True
    ) -> None:
        status = "written" if reason is None else ("skipped" if ok else "failed")
        for c, v in zip(SAMPLE_COLUMNS, (clip_id, video_id, split, status, reason, shard), strict=True):
            self.cols[c].append(v)

    def __len__(self) -> int:
        return len(self.cols["clip_id"])

    def not_written(self, split: str | None = None) -> dict[str, int]:
        """Clips left out (of one split, or all), by reason, in row order."""
        out: dict[str, int] = {}
        for sp, st, reason in zip(self.cols["split"], self.cols["status"], self.cols["reason"], strict=True):
            if st != "written" and (split is None or sp == split):
                out[reason] = out.get(reason, 0) + 1  # type: ignore[index]
        return out

    def written(self) -> int:
        return sum(1 for st in self.cols["status"] if st == "written")

    def table(self) -> Any:
        """Sorted by clip id (the samples.parquet order)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        t = pa.table({c: pa.array(v, pa.string()) for c, v in self.cols.items()})
        return t.take(pc.sort_indices(t.column("clip_id")))


def _write_samples_table(path: str, rows: SampleRows, storage_options: Any = None) -> None:
    import io

    import pyarrow.parquet as pq

    from training.data import store

    buf = io.BytesIO()
    pq.write_table(rows.table(), buf)
    store.write_bytes(path, buf.getvalue(), storage_options)


def plan_stage(
    clips: Any,
    captions: Any,
    root: str,
    stage_name: str,
    cfg: Any,
    runner: str,
    clips_dir: str | None = None,
) -> tuple[list[Any], SampleRows, float | None]:
    """Probe every clip file (in parallel), then plan each sample: (plans, skipped rows, bytes estimate).

    `clips`: read_kept_table's Arrow table; `captions`: read_caption_table's; `root`: the curation
    output the clip paths are relative to (a folder or a URL). Plans are lazy
    (training.data.planning): a few hundred bytes per sample until a shard renders it."""
    from training.data.planning import plan_samples
    from training.data.shard_writer import estimate_sample_bytes, shard_order, split_of

    todo, probes, messages = clip_locations(clips, root, clips_dir or store.join(root, "manifests", "clips"))
    for msg in messages:
        print(f"vjp shard: {msg}", file=sys.stderr)
    if len(probes) > len(messages):
        print(
            f"vjp shard: {len(probes) - len(messages)} more clip paths refused (unsafe_path)", file=sys.stderr
        )
    so = cfg.storage_options
    for batch, result, exc in _run(_probe_batch, _batches(todo, cfg.runner.probe_batch), (so,), runner, cfg):
        for cid, probe in result if exc is None else [(cid, "unreadable") for cid, _ in batch or []]:
            probes[cid] = probe
    del todo
    plans, skips = plan_samples(clips, captions, probes.__getitem__, stage_name, cfg)
    rows = SampleRows()
    for sk in skips:
        rows.add(sk.clip_id, sk.video_id, split_of(sk.video_id, cfg.split), sk.reason, None)
    del skips
    # Bytes per sample from a few real encodes (deterministic: the first samples in shard order).
    stage = cfg.stage(stage_name)
    n_cal = cfg.runner.calibration_samples if stage.target_shard_bytes else 0
    calibrate = shard_order(plans, cfg.seed)[:n_cal]
    est = estimate_sample_bytes(calibrate, root, stage, cfg.runner.decode_threads, so) if calibrate else None
    return plans, rows, est


def write_indexes(
    out: str, stage_name: str, cfg: Any, shards: list[Any], records: dict, rows: SampleRows
) -> dict[str, Any]:
    """samples.parquet (where is clip X, or why is it not there?), then per split its sample table
    and index: the index is the commit record, written last."""
    from training.data import store
    from training.data.sample_format import SPLITS, samples_path
    from training.data.shard_writer import build_index, split_dir, write_split_index

    for sh in shards:
        rec = records.get((sh.split, sh.name))
        for p in sh.samples:
            # No record: the shard's task failed (reported, exit 1); a rerun retries it.
            reason = (rec.skipped.get(p.key) if rec else "shard_failed") or None
            shard = None if reason else f"{sh.split}/{sh.name}"
            rows.add(p.key, p.video_id, sh.split, reason, shard, ok=rec is not None)
    stage_dir = store.join(out, stage_name)
    so = cfg.storage_options
    _write_samples_table(samples_path(stage_dir), rows, so)
    result = {}
    for split in SPLITS:
        skipped = rows.not_written(split)
        keys = [(sh.split, sh.name) for sh in shards if sh.split == split]
        recs = [records[k] for k in keys if k in records]
        index = build_index(stage_name, split, cfg, recs, skipped)
        if not store.is_url(out):  # an empty split still has its folder (WebDataset clients list it)
            os.makedirs(split_dir(out, stage_name, split), exist_ok=True)
        index = write_split_index(stage_dir, index, {r.entry.name: r for r in recs}, so)
        result[split] = {"shards": len(index.shards), "samples": index.samples, "bytes": index.bytes}
    return result


def run_shards(
    shards: list[Any],
    root: str,
    out: str,
    stage_name: str,
    cfg: Any,
    runner: str,
    verify: bool = False,
    fn: Any = None,
) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """(task, ShardOutcome, exception or None) per shard as each finishes; fn: run_shard_task.

    Each task gets its samples' row numbers in the columnar plan source, builds their metas, checks
    its record and either returns the record of an identical finished shard or writes the shard:
    the driver builds no meta (at millions of samples that alone took minutes of one core). Threads
    share the source; a Ray task gets its own rows' columns, cut as it is submitted, so only the
    shards in flight hold a copy and a node receives only its shards' rows."""
    from training.data.shard_writer import run_shard_task, shard_tasks

    source, tasks = shard_tasks(shards)
    if not tasks:
        return iter(())
    if runner == "ray":
        items: Any = (t.cut(source) for t in tasks)
        extra: tuple[Any, ...] = (None, root, out, stage_name, cfg, verify)
    else:
        items, extra = tasks, (source, root, out, stage_name, cfg, verify)
    return _run(fn or run_shard_task, items, extra, runner, cfg)


def shard_stage(
    clips_arg: str,
    stage_name: str,
    out: str,
    cfg: Any,
    runner: str = "ray",
    address: str | None = None,
    verify: bool = False,
) -> dict[str, Any]:
    """The whole job for one stage; returns its summary. Safe to rerun: finished shards are kept."""
    from training.data import store
    from training.data.sample_format import SPLITS
    from training.data.shard_writer import group_shards, samples_per_shard

    t0 = time.time()
    stage = cfg.stage(stage_name)
    root, clips_dir, captions_dir = resolve_layout(clips_arg)
    clips = read_kept_table(clips_dir)
    captions = read_caption_table(captions_dir, clips.column("clip_id"))
    if runner == "ray":
        init_ray(address)

    # 1. plan everything and group into shards before writing anything
    plans, rows, est = plan_stage(clips, captions, root, stage_name, cfg, runner, clips_dir)
    per_shard = samples_per_shard(stage, est)
    shards = group_shards(plans, per_shard, cfg.seed)
    planned = {s: sum(1 for sh in shards if sh.split == s) for s in SPLITS}
    removed = _clean_stale(out, stage_name, planned, cfg.storage_options)

    # 2. one task per shard (run_shards)
    records, written, failed = {}, 0, []
    progress = _progress(cfg.runner.progress, len(shards))
    for task, outcome, exc in run_shards(shards, root, out, stage_name, cfg, runner, verify):
        progress()
        if exc is not None:
            failed.append(f"{task.split}/{task.name}: {type(exc).__name__}: {exc}")
        else:
            records[(task.split, task.name)] = outcome.record
            written += not outcome.reused

    # 3. index per split, per-clip table, summary
    splits = write_indexes(out, stage_name, cfg, shards, records, rows)
    reasons = rows.not_written()
    return {
        "stage": stage_name,
        "config_hash": cfg.stage_hash(stage_name),
        **splits,
        "clips_kept": clips.num_rows,
        "samples_written": rows.written(),
        "skipped_by_reason": dict(sorted(reasons.items())),
        "samples_per_shard": per_shard,
        "est_bytes_per_sample": round(est) if est else None,
        "shards_written": written,
        "shards_reused": len(records) - written,
        "stale_removed": removed,
        "failed_shards": failed,
        "elapsed_s": round(time.time() - t0, 2),
        "out": store.join(out, stage_name),
    }


def _progress(enabled: bool, total: int) -> Any:
    if not enabled or not total:
        return lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="shard", desc="shard", file=sys.stderr, dynamic_ncols=True)
    return lambda: bar.update(1)


def run(args: argparse.Namespace) -> int:
    from training.data.stages import parse_config

    cfg = parse_config(*load_section(args.config or DEFAULT_CONFIG, "shard", args.overrides))
    cfg.stage(args.stage)  # an unknown stage is a ConfigError: exit 2 with the configured names
    if cfg.storage_options:  # the manifest readers build their filesystems with fsspec's defaults
        from jobs.run_paths import install_storage_options

        for url in {args.clips, args.out}:
            install_storage_options(url, cfg.storage_options)
    try:
        summary = shard_stage(args.clips, args.stage, args.out, cfg, args.runner, args.address, args.verify)
    except (FileNotFoundError, ValueError) as e:
        print(f"vjp shard: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False))
    if summary["failed_shards"]:
        return 1
    # Skipped clips are recorded, not fatal; an empty stage from a non-empty manifest is.
    return 1 if summary["clips_kept"] and not summary["samples_written"] else 0
