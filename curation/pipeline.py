"""The per-video unit of work and the job-wide finalize step. No Ray in here: the same functions
run in a unit test, in a thread pool and inside a Ray task.

Output layout under OUT (a local folder, or s3:// gs://... through fsspec):
  manifests/videos/   one row per source video (a video's part is written last: its commit marker)
  manifests/scores/   one row per candidate clip, scores only
  manifests/thumbs/   a small JPEG per candidate clip (contact sheets)
    each of these three: <video_id>.parquet parts while a step runs, compacted into
    c-<gen>-<i>.parquet files + a _compact-<gen>.json record when it ends and on resume
    (curation.manifest)
  manifests/clips/clips.parquet         every candidate with its verdict (finalize)
  staging/<clip_id>.mp4                 clips extracted but not (or no longer) kept
  clips/<clip_id>.mp4                   kept clips
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem
from pyarrow.dataset import field as pc_field

from curation import __version__, atomic
from curation.analyze import VideoAnalysis, analyze_clips, analyze_video, apply_transnet, clip_thumbnails
from curation.atomic import join
from curation.config import CurateConfig
from curation.decide import decide_table, failing_checks, failing_matrix
from curation.extract import ClipSpan, extract_clips
from curation.ids import clip_id, sha256_file
from curation.isolate import IsolatedError, run_isolated
from curation.manifest import (
    CLIP_SCHEMA,
    SCORES_SCHEMA,
    THUMB_SCHEMA,
    VIDEO_SCHEMA,
    compact,
    is_compact,
    iter_batches,
    read_one,
    read_table,
    write_batches,
    write_table_atomic,
)
from curation.probe import ProbeError, probe
from curation.sources.base import VideoItem


@dataclass
class Layout:
    out: str

    @property
    def manifests(self) -> str:
        return join(self.out, "manifests")

    @property
    def videos(self) -> str:
        return join(self.out, "manifests", "videos")

    @property
    def scores(self) -> str:
        return join(self.out, "manifests", "scores")

    @property
    def clips_manifest(self) -> str:
        return join(self.out, "manifests", "clips", "clips.parquet")

    @property
    def staging(self) -> str:
        return join(self.out, "staging")

    @property
    def clips(self) -> str:
        return join(self.out, "clips")

    def video_part(self, vid: str) -> str:
        return join(self.videos, f"{vid}.parquet")

    def scores_part(self, vid: str) -> str:
        return join(self.scores, f"{vid}.parquet")

    @property
    def thumbs(self) -> str:
        return join(self.out, "manifests", "thumbs")

    def thumbs_part(self, vid: str) -> str:
        return join(self.thumbs, f"{vid}.parquet")


# ---------------------------------------------------------------- child-process work (decoding)

# FFmpeg threads per analysis decode in a worker when `analysis.decode_threads` is 0. Workers run
# one video per core (runner.max_in_flight, num_cpus_per_video), so frame threads add no
# throughput, only CPU: on the shared real videos one thread decoded with 10-35% less CPU than
# FFmpeg's choice (benchmarks/curation_bench.py). Pixels, hence scores, are bit-exact under any
# threading (tests/test_reproducible.py).
WORKER_DECODE_THREADS = 1


def _analysis_result(probe_row: dict[str, Any], a: VideoAnalysis, cfg: CurateConfig) -> dict[str, Any]:
    return {
        "probe": probe_row,
        "n_frames": a.n_frames,
        "duration_s": a.duration_s,
        "fps": a.fps_measured,
        "fps_variable": a.fps_variable,
        "cuts": a.cuts,
        "clips": analyze_clips(a, cfg.split),
        "thumbs": clip_thumbnails(a, cfg.split),
    }


def _analyze_in_child(
    path: str, cfg_json: str, hints: list[dict[str, Any]], defer_transnet: bool = False
) -> dict[str, Any]:
    from curation.sources.base import SplitHint

    cfg = CurateConfig.model_validate_json(cfg_json)
    analysis = cfg.analysis
    if analysis.decode_threads == 0:
        analysis = analysis.model_copy(update={"decode_threads": WORKER_DECODE_THREADS})
    stage = "probe"
    try:
        info = probe(path)
        stage = "analyze"
        a = analyze_video(path, info, cfg.split, analysis, [SplitHint(**h) for h in hints], defer_transnet)
        if a.transnet_frames is not None:
            return {"probe": info.to_dict(), "deferred": a}  # TransNetV2 runs on the GPU actor
        return _analysis_result(info.to_dict(), a, cfg)
    except ProbeError as e:
        return {"error": str(e), "stage": "probe"}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "stage": stage}


def _extract_in_child(
    path: str,
    stream_index: int,
    rotation: int,
    fps: float,
    spans: list[dict[str, Any]],
    out_dir: str,
    cfg_json: str,
) -> dict[str, int]:
    cfg = CurateConfig.model_validate_json(cfg_json)
    return extract_clips(
        path, stream_index, rotation, fps, [ClipSpan(**s) for s in spans], out_dir, cfg.extract
    )


# ---------------------------------------------------------------- per-video unit


@contextlib.contextmanager
def local_copy(item: VideoItem) -> Iterator[str]:
    """A local file path for the decoder: bytes are spooled, remote files downloaded, local used as is."""
    if item.data is None and item.path is not None:
        fs, p = fsspec.core.url_to_fs(item.path)
        if isinstance(fs, LocalFileSystem):
            yield p
            return
    suffix = os.path.splitext(item.key.split("::")[-1].split("#")[0])[1] or ".mp4"
    with tempfile.NamedTemporaryFile(suffix=suffix, prefix="vjp-") as tmp:
        if item.data is not None:
            tmp.write(item.data)
        else:
            assert item.path is not None
            with fsspec.open(item.path, "rb") as src:
                shutil.copyfileobj(src, tmp, 1 << 22)
        tmp.flush()
        yield tmp.name


def base_row(item: VideoItem, cfg: CurateConfig) -> dict[str, Any]:
    return {
        "video_id": item.video_id,
        "source": item.source,
        "source_key": item.key,
        "uri": item.uri,
        "source_caption": item.source_caption,
        "source_meta": json.dumps(item.meta, ensure_ascii=False, sort_keys=True),
        "hints": json.dumps([asdict(h) for h in item.hints], ensure_ascii=False),
        "analysis_hash": cfg.analysis_hash,
        "package_version": __version__,
    }


def error_row(base: dict[str, Any], stage: str, reason: str) -> dict[str, Any]:
    return {**base, "status": "error", "error": reason, "error_stage": stage}


def _locally_passing(
    rows: list[dict[str, Any]], video: dict[str, Any], cfg: CurateConfig
) -> list[dict[str, Any]]:
    """Clips that pass every check but deduplication, which needs the whole job."""
    return [r for r in rows if not failing_checks(r, video["width"], video["height"], cfg.split, cfg.filters)]


def _missing_files(rows: list[dict[str, Any]], layout: Layout) -> list[dict[str, Any]]:
    return [
        r
        for r in rows
        if not atomic.exists(join(layout.staging, f"{r['clip_id']}.mp4"))
        and not atomic.exists(join(layout.clips, f"{r['clip_id']}.mp4"))
    ]


def _stored_rows(folder: str, part: str, schema: Any, vid: str) -> list[dict[str, Any]]:
    """One video's rows: its loose part if there is one, else the compacted files (filtered read)."""
    rows = read_one(part)
    if rows:
        return rows
    return read_table(folder, schema, filter=pc_field("video_id") == vid).to_pylist()


def _resume_state(item: VideoItem, layout: Layout, cfg: CurateConfig) -> tuple[dict[str, Any] | None, list]:
    """(video row of a previous run under the same analysis settings, clips it still lacks).

    The driver computes this once for every video (ResumeIndex) and hands it over with the item;
    reading it here is the fallback for a direct call."""
    if item.resume is not None:
        return item.resume
    prev = _stored_rows(layout.videos, layout.video_part(item.video_id), VIDEO_SCHEMA, item.video_id)
    if not prev or prev[0]["analysis_hash"] != cfg.analysis_hash:
        return None, []
    video = prev[0]
    if video["status"] == "error":
        return video, []
    scores = _stored_rows(layout.scores, layout.scores_part(item.video_id), SCORES_SCHEMA, item.video_id)
    return video, _missing_files(_locally_passing(scores, video, cfg), layout)


def needs_work(item: VideoItem, out: str, cfg: CurateConfig) -> bool:
    """False when a previous run finished this video under the same analysis settings."""
    video, todo = _resume_state(item, Layout(out), cfg)
    return video is None or bool(todo)


def compact_manifests(out: str) -> dict[str, dict[str, int]]:
    """Merge the per-video parts of videos/, scores/ and thumbs/ into few large files."""
    layout = Layout(out)
    return {
        "videos": compact(layout.videos, VIDEO_SCHEMA, sort_by=("video_id",)),
        "scores": compact(layout.scores, SCORES_SCHEMA, sort_by=("video_id", "clip_id")),
        "thumbs": compact(layout.thumbs, THUMB_SCHEMA, sort_by=("video_id", "clip_id")),
    }


def _video_index(videos: pa.Table, scores: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """For each score row: the row of its video in `videos` (or -1), and whether the score row was
    analysed under the same settings as that video row (a rerun killed between writing a video's
    scores and its video row leaves them apart)."""
    idx = pc.index_in(scores.column("video_id"), value_set=videos.column("video_id"))
    pos = idx.to_numpy(zero_copy_only=False)
    pos = np.where(np.isnan(pos.astype(np.float64)), -1, pos).astype(np.int64) if len(pos) else pos
    hashes = videos.column("analysis_hash").take(pa.array(np.maximum(pos, 0)))
    same = pc.equal(hashes, scores.column("analysis_hash")).to_numpy(zero_copy_only=False)
    return pos, (pos >= 0) & same


@dataclass
class ResumeIndex:
    """What earlier runs finished, computed once by the driver from the (compacted) manifests:
    one read of each manifest and one listing of the clip folders, instead of per-video reads."""

    finished: set[str]
    partial: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]

    @classmethod
    def load(cls, out: str, cfg: CurateConfig) -> ResumeIndex:
        layout = Layout(out)
        compact_manifests(out)
        videos = read_table(layout.videos, VIDEO_SCHEMA)
        videos = videos.filter(pc.equal(videos.column("analysis_hash"), cfg.analysis_hash))
        finished = set(videos.column("video_id").to_pylist())
        ok = videos.filter(pc.equal(videos.column("status"), "ok"))
        partial: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        if ok.num_rows:
            cols = [*DECISION_COLUMNS, "start_s", "end_s", "n_frames"]  # what extraction needs
            scores = read_table(layout.scores, SCORES_SCHEMA, columns=cols)
            pos, same = _video_index(ok, scores)
            scores, pos = scores.filter(pa.array(same)), pos[same]
            width = ok.column("width").to_numpy(zero_copy_only=False).astype(np.float64)[pos]
            height = ok.column("height").to_numpy(zero_copy_only=False).astype(np.float64)[pos]
            passing = ~failing_matrix(scores, width, height, cfg.split, cfg.filters).any(axis=1)
            on_disk = set(atomic.listdir(layout.staging)) | set(atomic.listdir(layout.clips))
            ids = scores.column("clip_id").to_pylist()
            lacking = [i for i in np.nonzero(passing)[0].tolist() if f"{ids[i]}.mp4" not in on_disk]
            if lacking:
                rows = scores.take(pa.array(lacking, type=pa.int64())).to_pylist()
                video_rows = {
                    v["video_id"]: v
                    for v in ok.filter(
                        pc.is_in(ok.column("video_id"), value_set=pa.array({r["video_id"] for r in rows}))
                    ).to_pylist()
                }
                for r in rows:
                    partial.setdefault(r["video_id"], (video_rows[r["video_id"]], []))[1].append(r)
        return cls(finished - set(partial), partial)

    def pending(self, items: Iterable[VideoItem]) -> Iterator[VideoItem]:
        """The items that still need work, each carrying its resume state for the worker."""
        for item in items:
            vid = item.video_id
            if vid in self.finished:
                continue
            item.resume = self.partial.get(vid, (None, []))
            yield item


def _resolve_transnet(
    res: dict[str, Any], transnet: Any, item: VideoItem, cfg: CurateConfig
) -> dict[str, Any]:
    """TransNetV2 on the actor for an analysis that deferred it, then clips as the child makes them."""
    import ray

    a = res["deferred"]
    try:
        probs = ray.get(transnet.predict.remote(a.transnet_frames))
        apply_transnet(a, probs, cfg.split, item.hints, res["probe"]["fps"])
    except Exception as e:
        return {"error": f"TransNetV2 actor: {type(e).__name__}: {e}", "stage": "analyze"}
    return _analysis_result(res["probe"], a, cfg)


# One part file per video, or per batch of videos when process_videos runs them (one Ray task):
# a part file costs ~5 ms to write and as much to compact, more than a small video's analysis.
_BATCH = threading.local()


def _write_part(rows: list[dict[str, Any]], schema: Any, folder: str, vid: str) -> None:
    batch = getattr(_BATCH, "parts", None)
    if batch is None:
        write_table_atomic(rows, schema, join(folder, f"{vid}.parquet"))
    else:
        batch.setdefault(folder, (schema, []))[1].extend(rows)


def process_videos(
    items: list[VideoItem], out: str, cfg: CurateConfig, transnet: Any = None
) -> list[tuple[dict[str, Any] | None, Exception | None]]:
    """process_video over a batch; (video row, None) or (None, exception) per item, in order.

    The rows of the whole batch go into one part file per manifest folder, written when the
    batch ends, the video rows last: they commit the batch's scores and thumbnails, as a video's
    row commits its own in a per-video part. A batch killed before that is redone on resume,
    with the same result (clips already extracted to staging/ are not extracted again).
    """
    layout = Layout(out)
    _BATCH.parts = parts = {}
    results: list[tuple[dict[str, Any] | None, Exception | None]] = []
    try:
        for item in items:
            try:
                results.append((process_video(item, out, cfg, transnet), None))
            except Exception as e:  # this item's own failure; the driver records it
                results.append((None, e))
    finally:
        _BATCH.parts = None
    ids = "\n".join(item.video_id for item in items)
    name = f"batch-{hashlib.sha256(ids.encode()).hexdigest()[:20]}.parquet"
    for folder in (layout.thumbs, layout.scores, layout.videos):
        if folder in parts and parts[folder][1]:
            schema, rows = parts[folder]
            write_table_atomic(rows, schema, join(folder, name))
    return results


def process_video(item: VideoItem, out: str, cfg: CurateConfig, transnet: Any = None) -> dict[str, Any]:
    """Probe, analyze and extract one video; writes its manifest parts; returns its video row.

    Idempotent: a finished video is skipped, and one whose analysis is stored but whose clips
    are missing (killed mid-extraction, or thresholds changed) is only extracted. `transnet`:
    a TransNetV2 actor (curation.transnet.start_actor) that runs the learned detector on a GPU.
    """
    layout = Layout(out)
    base = base_row(item, cfg)
    if item.error:
        row = error_row(base, "source", item.error)
        _write_part([row], VIDEO_SCHEMA, layout.videos, item.video_id)
        return row
    video, todo = _resume_state(item, layout, cfg)
    if video is not None:
        if not todo:
            return video
        with local_copy(item) as path:
            video = _extract(path, video, todo, layout, cfg)
        _write_part([video], VIDEO_SCHEMA, layout.videos, item.video_id)
        return video
    with local_copy(item) as path:
        size = os.path.getsize(path)
        base.update(size_bytes=size)
        if size == 0:
            row = error_row(base, "probe", "empty file (0 bytes)")
        else:
            base["content_sha256"] = sha256_file(path)
            try:
                res = run_isolated(
                    _analyze_in_child,
                    path,
                    cfg.model_dump_json(),
                    [asdict(h) for h in item.hints],
                    transnet is not None,
                    timeout=cfg.analysis.timeout_s,
                )
            except IsolatedError as e:
                res = {"error": str(e), "stage": "analyze"}
            if "deferred" in res:
                res = _resolve_transnet(res, transnet, item, cfg)
            if "error" in res:
                row = error_row(base, res["stage"], res["error"])
            else:
                row, scores = _rows_from_analysis(base, item, res, cfg)
                thumbs = [
                    {"clip_id": s["clip_id"], "video_id": item.video_id, "jpeg": jpg}
                    for s, jpg in zip(scores, res["thumbs"], strict=True)
                    if jpg is not None
                ]
                _write_part(thumbs, THUMB_SCHEMA, layout.thumbs, item.video_id)
                _write_part(scores, SCORES_SCHEMA, layout.scores, item.video_id)
                todo = _missing_files(_locally_passing(scores, row, cfg), layout)
                row = _extract(path, row, todo, layout, cfg)
    _write_part([row], VIDEO_SCHEMA, layout.videos, item.video_id)
    return row


def _rows_from_analysis(
    base: dict[str, Any], item: VideoItem, res: dict[str, Any], cfg: CurateConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    p = res["probe"]
    row = {
        **base,
        "status": "ok",
        "container": p["container"],
        "codec": p["codec"],
        "pix_fmt": p["pix_fmt"],
        "stream_index": p["stream_index"],
        "coded_width": p["coded_width"],
        "coded_height": p["coded_height"],
        "width": p["width"],
        "height": p["height"],
        "rotation": p["rotation"],
        "fps": res["fps"],
        "fps_variable": res["fps_variable"],
        "duration_s": res["duration_s"],
        "n_frames": res["n_frames"],
        "bit_rate": p["bit_rate"],
        "has_audio": p["has_audio"],
        "cuts": res["cuts"],
        "n_candidates": len(res["clips"]),
    }
    scores = [
        {
            **c,
            "clip_id": clip_id(item.video_id, c["start_frame"], c["end_frame"]),
            "video_id": item.video_id,
            "source": item.source,
            "fps": res["fps"],
            "width": p["width"],
            "height": p["height"],
            "source_caption": item.source_caption,
            "source_meta": base["source_meta"],
            "analysis_hash": cfg.analysis_hash,
            "package_version": __version__,
        }
        for c in res["clips"]
    ]
    return row, scores


def _extract(
    path: str, video: dict[str, Any], todo: list[dict[str, Any]], layout: Layout, cfg: CurateConfig
) -> dict[str, Any]:
    if not todo:
        return video
    spans = [
        {"clip_id": r["clip_id"], "start_s": r["start_s"], "end_s": r["end_s"], "n_frames": r["n_frames"]}
        for r in todo
    ]
    remote = atomic.is_url(layout.staging)
    # On an object store clips are encoded locally, then each is uploaded under its final name.
    target = tempfile.mkdtemp(prefix="vjp-clips-") if remote else layout.staging
    try:
        run_isolated(
            _extract_in_child,
            path,
            video["stream_index"],
            video["rotation"],
            video["fps"],
            spans,
            target,
            cfg.model_dump_json(),
            timeout=cfg.analysis.timeout_s,
        )
        if remote:
            for name in sorted(os.listdir(target)):
                if not name.startswith("."):
                    with atomic.atomic_output(join(layout.staging, name)) as tmp:
                        shutil.move(os.path.join(target, name), tmp)
    except IsolatedError as e:
        return error_row({k: v for k, v in video.items() if k not in ("status", "error")}, "extract", str(e))
    finally:
        if remote:
            shutil.rmtree(target, ignore_errors=True)
    return video


# ---------------------------------------------------------------- job-wide step


def finalize(out: str, cfg: CurateConfig) -> dict[str, Any]:
    """Decide every clip of the job (deduplication included), publish kept clips, write the clip manifest.

    Cheap and repeatable: it reads only manifests and moves files, so a threshold change takes
    seconds. Clips that stop being kept go back to staging instead of being deleted. Columnar
    (Arrow + numpy), so millions of clips need no Python dict each.
    """
    layout = Layout(out)
    compact_manifests(out)
    all_videos = read_table(layout.videos, VIDEO_SCHEMA)
    videos = all_videos.filter(pc.equal(all_videos.column("status"), "ok"))
    # Pass 1 on the columns the decision needs; pass 2 streams the full rows into the manifest.
    key = read_table(layout.scores, SCORES_SCHEMA, columns=DECISION_COLUMNS)
    _, same = _video_index(videos, key)
    keep = np.nonzero(same)[0]
    order = keep[pc.sort_indices(key.column("clip_id").take(pa.array(keep))).to_numpy()]
    identity = len(order) == key.num_rows and bool(np.all(order == np.arange(len(order))))
    decided = _decide(key if identity else key.take(pa.array(order, type=pa.int64())), videos, cfg)
    del key
    atomic.makedirs(layout.clips)
    atomic.makedirs(layout.staging)
    decided = _publish(decided, layout)
    crop = {k: decided.column(k).to_numpy(zero_copy_only=False) for k in _CROPS}
    width = decided.column("width").to_numpy(zero_copy_only=False).astype(np.float64)
    height = decided.column("height").to_numpy(zero_copy_only=False).astype(np.float64)
    kept = pc.equal(decided.column("status"), "kept")
    paths = pc.binary_join_element_wise("clips/", decided.column("clip_id"), ".mp4", "")
    verdict = pa.table(
        {
            "status": decided.column("status"),
            "reason": decided.column("reason"),
            "failed_checks": decided.column("failed_checks"),
            "duplicate_of": decided.column("duplicate_of"),
            "clip_path": pc.if_else(kept, paths, pa.scalar(None, pa.string())),
            "content_width": pa.array(width * (1.0 - crop["crop_left"] - crop["crop_right"])),
            "content_height": pa.array(height * (1.0 - crop["crop_top"] - crop["crop_bottom"])),
            "decision_hash": pa.array([cfg.decision_hash] * decided.num_rows, type=pa.string()),
        }
    )
    write_batches(_clip_rows(layout, same, order, verdict), CLIP_SCHEMA, layout.clips_manifest)
    return summarize(all_videos, decided)


_CROPS = ("crop_left", "crop_right", "crop_top", "crop_bottom")
DECISION_COLUMNS = [
    "clip_id", "video_id", "analysis_hash", "duration_s", "width", "height", *_CROPS, "luma_mean",
    "luma_std", "luma_p99", "dark_fraction", "motion", "sharpness", "border_fraction", "text_fraction",
    "phashes",
]  # fmt: skip


def _clip_rows(layout: Layout, same: np.ndarray, order: np.ndarray, verdict: pa.Table) -> Iterator[pa.Table]:
    """Full score rows joined with their verdicts, in clip id order. A compacted manifest is already
    in that order, so it streams batch by batch; otherwise (small, uncompacted) it is read whole."""
    if is_compact(layout.scores) and bool(np.all(np.diff(order) > 0)):
        start = done = 0
        for batch in iter_batches(layout.scores, SCORES_SCHEMA):
            rows = batch.filter(pa.array(same[start : start + batch.num_rows]))
            start += batch.num_rows
            part = verdict.slice(done, rows.num_rows)
            done += rows.num_rows
            for name in verdict.column_names:
                rows = rows.append_column(name, part.column(name))
            yield rows.select(CLIP_SCHEMA.names)
        return
    rows = read_table(layout.scores, SCORES_SCHEMA).take(pa.array(order, type=pa.int64()))
    for name in verdict.column_names:
        rows = rows.append_column(name, verdict.column(name))
    yield rows.select(CLIP_SCHEMA.names)


def _decide(scores: pa.Table, videos: pa.Table, cfg: CurateConfig) -> pa.Table:
    pos, _ = _video_index(videos, scores)
    width = videos.column("width").to_numpy(zero_copy_only=False).astype(np.float64)[pos]
    height = videos.column("height").to_numpy(zero_copy_only=False).astype(np.float64)[pos]
    return decide_table(scores, width, height, cfg.split, cfg.filters)


def _publish(decided: pa.Table, layout: Layout) -> pa.Table:
    """Move kept clips into clips/ and no-longer-kept ones back to staging/ (one listing of each
    folder, then only the moves that change something); kept clips without a file are rejected as
    extract_failed."""
    names = pc.binary_join_element_wise(decided.column("clip_id"), ".mp4", "")
    published = pc.is_in(names, value_set=pa.array(atomic.listdir(layout.clips), pa.string()))
    staged = pc.is_in(names, value_set=pa.array(atomic.listdir(layout.staging), pa.string()))
    published = published.to_numpy(zero_copy_only=False)
    staged = staged.to_numpy(zero_copy_only=False)
    kept = pc.equal(decided.column("status"), "kept").to_numpy(zero_copy_only=False)
    # Python strings only for the clips whose file moves (none when nothing changed).
    for i in np.nonzero(kept & ~published & staged)[0].tolist():
        name = names[i].as_py()
        atomic.move(join(layout.staging, name), join(layout.clips, name))
    for i in np.nonzero(kept & published & staged)[0].tolist():
        atomic.remove(join(layout.staging, names[i].as_py()))  # a move killed between copy and delete
    for i in np.nonzero(~kept & published)[0].tolist():
        name = names[i].as_py()
        atomic.move(join(layout.clips, name), join(layout.staging, name))
    failed = np.nonzero(kept & ~published & ~staged)[0].tolist()
    if not failed:
        return decided
    status = decided.column("status").to_pylist()
    reason = decided.column("reason").to_pylist()
    checks = decided.column("failed_checks").to_pylist()
    for i in failed:
        status[i], reason[i], checks[i] = "rejected", "extract_failed", [*checks[i], "extract_failed"]
    for name, values in (("status", status), ("reason", reason), ("failed_checks", checks)):
        col = decided.column_names.index(name)
        decided = decided.set_column(col, name, pa.array(values, type=decided.schema.field(name).type))
    return decided


def summarize(videos: pa.Table, clips: pa.Table) -> dict[str, Any]:
    """summarize() over Arrow tables: counts without a dict per row, and without filtering whole
    tables (at 6M clips a filtered copy of the decided table was the peak of `vjp decide`): each
    count reads the one column it needs under a mask."""

    def counts(col: pa.ChunkedArray | pa.Array) -> dict[str, int]:
        if len(col) == 0:
            return {}
        vc = pc.value_counts(col).to_pylist()
        return dict(sorted((d["values"], d["counts"]) for d in vc if d["values"] is not None))

    def where(table: pa.Table, col: str, status: str) -> pa.ChunkedArray | pa.Array:
        if table.num_rows == 0:
            return pa.array([], table.schema.field(col).type)
        return pc.filter(table.column(col), pc.equal(table.column("status"), status))

    def total(col: pa.ChunkedArray | pa.Array) -> float:
        return float(pc.sum(col).as_py() or 0.0) if len(col) else 0.0

    vstatus = counts(videos.column("status"))
    kept_seconds = where(clips, "duration_s", "kept")
    return {
        "videos": videos.num_rows,
        "videos_ok": vstatus.get("ok", 0),
        "videos_error": vstatus.get("error", 0),
        "errors_by_stage": counts(where(videos, "error_stage", "error")),
        "clips": clips.num_rows,
        "clips_kept": len(kept_seconds),
        "kept_seconds": round(total(kept_seconds), 3),
        "source_seconds": round(total(videos.column("duration_s")) if videos.num_rows else 0.0, 3),
        "rejected_by_reason": counts(where(clips, "reason", "rejected")),
    }
