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
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pyarrow.dataset import field as pc_field

from curation import __version__, atomic
from curation.analyze import VideoAnalysis, analyze_clips, analyze_video, apply_transnet, clip_thumbnails
from curation.atomic import join
from curation.config import CurateConfig
from curation.decide import REASONS, failing_checks, failing_matrix, near_duplicate_of, reason_lists
from curation.extract import ClipSpan, extract_clips
from curation.ids import clip_id, sha256_file
from curation.isolate import IsolatedError, run_isolated
from curation.manifest import (
    CLIP_SCHEMA,
    SCORES_SCHEMA,
    THUMB_SCHEMA,
    VIDEO_SCHEMA,
    committed_files,
    compact,
    is_compact,
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


def _video_index(
    videos: pa.Table, scores: pa.Table, lookup: _Sorted | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each score row: the row of its video in `videos` (or -1), and whether the score row was
    analysed under the same settings as that video row (a rerun killed between writing a video's
    scores and its video row leaves them apart). `lookup`: `videos`' ids sorted once, for many batches."""
    if videos.num_rows == 0:  # e.g. every video failed on a rerun: no score row is decided
        return np.full(scores.num_rows, -1, dtype=np.int64), np.zeros(scores.num_rows, dtype=bool)
    lookup = lookup if lookup is not None else _Sorted(videos.column("video_id"))
    pos = lookup.index_in(scores.column("video_id"))
    hashes = videos.column("analysis_hash").take(pa.array(np.maximum(pos, 0)))
    same = pc.equal(hashes, scores.column("analysis_hash")).to_numpy(zero_copy_only=False)
    return pos, (pos >= 0) & same


BATCH_ROWS = 131_072  # score rows held at a time by the job-wide passes (finalize, ResumeIndex)


def _score_batches(folder: str, columns: list[str]) -> Iterator[pa.Table]:
    """The committed score rows in read order, `columns` only: batch by batch when the folder is
    one compaction's (the usual case after compact_manifests), else the whole table at once."""
    schema = pa.schema([SCORES_SCHEMA.field(c) for c in columns])
    if not is_compact(folder):
        yield read_table(folder, SCORES_SCHEMA, columns=columns)
        return
    for name in committed_files(folder):
        with atomic.local_file(join(folder, name)) as local:
            for batch in pq.ParquetFile(local).iter_batches(batch_size=BATCH_ROWS, columns=columns):
                yield pa.Table.from_batches([batch]).select(columns).cast(schema)


def _is_sorted(ids: pa.Array | pa.ChunkedArray) -> bool:
    """Non-decreasing (ids of a compacted score manifest are, being sorted by video and clip id)."""
    return len(ids) < 2 or not pc.any(pc.less(ids[1:], ids[: len(ids) - 1])).as_py()


class _Sorted:
    """Unique strings (video ids, clip ids) sorted once: a sorted batch of keys is looked up in the
    slice between its first and last key only, not in a hash of all of them (millions of values,
    looked up batch after batch: rebuilding that hash per batch was most of the lookup cost)."""

    def __init__(self, values: pa.Array | pa.ChunkedArray) -> None:
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        self.perm = pc.sort_indices(values).to_numpy()
        self.values = values.take(pa.array(self.perm))

    @classmethod
    def listing(cls, names: list[str]) -> _Sorted:
        """The clip ids of a clip folder's `<clip_id>.mp4` files."""
        arr = pa.array(names, pa.string())
        return cls(pc.utf8_slice_codeunits(arr.filter(pc.ends_with(arr, ".mp4")), 0, -4))

    def _bound(self, value: str, right: bool) -> int:
        lo, hi = 0, len(self.values)
        while lo < hi:
            mid = (lo + hi) // 2
            v = self.values[mid].as_py()
            if v < value or (right and v == value):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def index_in(self, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Per key: its row in the values as given (or -1)."""
        if not len(keys) or not len(self.values):
            return np.full(len(keys), -1, dtype=np.int64)
        lo, hi = 0, len(self.values)
        if _is_sorted(keys):
            lo = self._bound(keys[0].as_py(), right=False)
            hi = self._bound(keys[len(keys) - 1].as_py(), right=True)
        idx = pc.index_in(keys, value_set=self.values.slice(lo, hi - lo))
        found = idx.is_valid().to_numpy(zero_copy_only=False)
        at = idx.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return np.where(found, self.perm[np.minimum(lo + at, len(self.perm) - 1)], -1).astype(np.int64)

    def contains(self, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
        return self.index_in(keys) >= 0


def _video_dims(videos: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    return tuple(  # type: ignore[return-value]
        videos.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in ("width", "height")
    )


@dataclass
class ResumeIndex:
    """What earlier runs finished, computed once by the driver from the (compacted) manifests:
    one read of each manifest and one listing of the clip folders, instead of per-video reads.
    Score rows are read in batches and only the rows of clips that still lack a file become dicts."""

    finished: set[str]
    partial: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]

    @classmethod
    def load(cls, out: str, cfg: CurateConfig) -> ResumeIndex:
        layout = Layout(out)
        compact_manifests(out)
        columns = ["video_id", "analysis_hash", "status", *_DIMS]
        videos = read_table(layout.videos, VIDEO_SCHEMA, columns=columns)
        videos = videos.filter(pc.equal(videos.column("analysis_hash"), cfg.analysis_hash))
        finished = set(videos.column("video_id").to_pylist())
        ok = videos.filter(pc.equal(videos.column("status"), "ok"))
        partial: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        if not ok.num_rows:
            return cls(finished, partial)
        vwidth, vheight = _video_dims(ok)
        lookup = _Sorted(ok.column("video_id"))
        on_disk = _Sorted.listing(atomic.listdir(layout.staging) + atomic.listdir(layout.clips))
        cols = [*DECISION_COLUMNS, "start_s", "end_s", "n_frames"]  # what extraction needs
        lacking: list[pa.Table] = []
        for scores in _score_batches(layout.scores, cols):
            pos, same = _video_index(ok, scores, lookup)
            scores, pos = scores.filter(pa.array(same)), pos[same]
            fails = failing_matrix(scores, vwidth[pos], vheight[pos], cfg.split, cfg.filters)
            passing = np.nonzero(~fails.any(axis=1))[0]
            ids = scores.column("clip_id").take(pa.array(passing, type=pa.int64()))
            missing = passing[~on_disk.contains(ids)]
            if len(missing):
                lacking.append(scores.take(pa.array(missing, type=pa.int64())))
        if lacking:
            rows = pa.concat_tables(lacking).to_pylist()
            wanted = sorted({r["video_id"] for r in rows})
            full = read_table(layout.videos, VIDEO_SCHEMA, filter=pc_field("video_id").isin(wanted))
            same_ok = pc.and_(
                pc.equal(full.column("analysis_hash"), cfg.analysis_hash),
                pc.equal(full.column("status"), "ok"),
            )
            full = full.filter(same_ok)
            video_rows = {v["video_id"]: v for v in full.to_pylist()}
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
    seconds. Clips that stop being kept go back to staging instead of being deleted. Columnar and
    in two passes over the score rows, a batch at a time: the first keeps per clip only its failed
    checks (a bit each), whether its file is in clips/ or staging/, and the id and hashes of the
    clips that may be kept or moved; the second joins the verdicts to the full rows as it writes
    them. Millions of clips need neither a dict each nor the whole score table in memory.
    """
    layout = Layout(out)
    compact_manifests(out)
    all_videos = read_table(layout.videos, VIDEO_SCHEMA, columns=_VIDEO_COLUMNS)
    videos = all_videos.filter(pc.equal(all_videos.column("status"), "ok"))
    atomic.makedirs(layout.clips)
    atomic.makedirs(layout.staging)
    try:
        d = _Decisions.collect(layout, videos, cfg, streamed=is_compact(layout.scores))
    except _Unsorted:  # a compacted manifest not in clip id order: read it whole and sort it
        d = _Decisions.collect(layout, videos, cfg, streamed=False)
    d.dedup(cfg.filters.dedup_max_distance)
    d.publish(layout)
    status: list[pa.Array] = []
    reasons: list[pa.Array] = []
    seconds: list[pa.Array] = []

    def rows() -> Iterator[pa.Table]:
        for lo, batch in d.batches(layout, SCORES_SCHEMA.names):
            verdict = d.verdict(lo, batch, cfg.decision_hash)
            status.append(verdict["status"])
            reasons.append(verdict["reason"])
            seconds.append(batch.column("duration_s").combine_chunks())
            for name, col in verdict.items():
                batch = batch.append_column(name, col)
            yield batch.select(CLIP_SCHEMA.names)

    write_batches(rows(), CLIP_SCHEMA, layout.clips_manifest)
    clips = pa.table(
        {
            "status": pa.chunked_array(status, pa.string()),
            "reason": pa.chunked_array(reasons, pa.string()),
            "duration_s": pa.chunked_array(seconds, pa.float64()),
        }
    )
    return summarize(all_videos, clips)


_CROPS = ("crop_left", "crop_right", "crop_top", "crop_bottom")
_DIMS = ("width", "height")
_VIDEO_COLUMNS = ["video_id", "status", "error_stage", "duration_s", "analysis_hash", *_DIMS]
DECISION_COLUMNS = [
    "clip_id", "video_id", "analysis_hash", "duration_s", "width", "height", *_CROPS, "luma_mean",
    "luma_std", "luma_p99", "dark_fraction", "motion", "sharpness", "border_fraction", "text_fraction",
    "phashes",
]  # fmt: skip
_LABELS = (*REASONS, "extract_failed")  # a kept clip without a file is rejected as extract_failed
_NEAR_DUPLICATE = REASONS.index("near_duplicate")
_PHASHES = SCORES_SCHEMA.field("phashes").type


class _Unsorted(Exception):
    """The compacted score rows are not in clip id order (the streamed passes need that order)."""


@dataclass
class _Decisions:
    """Per decided clip (the score rows analysed under their video's settings, in clip id order):
    its failed checks, where its file is, and the clip it duplicates. `named_*`: the ids of the clips
    that may be kept (pass every check) or are published, with their rows; the other ids are never
    needed. `same` (streamed) marks the decided rows among all the rows read; `order` (read whole)
    lists them sorted by clip id."""

    fails: np.ndarray  # [n, len(_LABELS)] bool
    published: np.ndarray
    staged: np.ndarray
    named_ids: pa.Array
    named_rows: np.ndarray  # ascending
    cand: np.ndarray  # indices into named_ids of the dedup candidates (passing, with hashes)
    cand_hashes: pa.Array
    same: np.ndarray | None
    order: np.ndarray | None
    dup: np.ndarray | None = None  # per row: index into named_ids of the clip it duplicates, or -1

    @classmethod
    def collect(cls, layout: Layout, videos: pa.Table, cfg: CurateConfig, streamed: bool) -> _Decisions:
        vwidth, vheight = _video_dims(videos)
        lookup = _Sorted(videos.column("video_id"))
        clips_dir, staging = (_Sorted.listing(atomic.listdir(d)) for d in (layout.clips, layout.staging))
        fails, published, staged, same = [], [], [], []
        named_ids: list[pa.Array] = []
        named_rows, cand, cand_hashes = [], [], []
        order, n, n_named, last = None, 0, 0, None
        tables = (
            _score_batches(layout.scores, DECISION_COLUMNS)
            if streamed
            else iter([read_table(layout.scores, SCORES_SCHEMA, columns=DECISION_COLUMNS)])
        )
        for t in tables:
            pos, ok = _video_index(videos, t, lookup)
            if streamed:
                t, pos = t.filter(pa.array(ok)), pos[ok]
                same.append(ok)
                ids = t.column("clip_id")
                if not _is_sorted(ids) or (len(ids) and last is not None and ids[0].as_py() < last):
                    raise _Unsorted
                last = ids[len(ids) - 1].as_py() if len(ids) else last
            else:
                keep = np.nonzero(ok)[0]
                order = keep[pc.sort_indices(t.column("clip_id").take(pa.array(keep))).to_numpy()]
                t, pos = t.take(pa.array(order, type=pa.int64())), pos[order]
            m = failing_matrix(t, vwidth[pos], vheight[pos], cfg.split, cfg.filters)
            ids = t.column("clip_id")
            pub, stg = clips_dir.contains(ids), staging.contains(ids)
            passing = ~m.any(axis=1)
            named = np.nonzero(passing | pub)[0]
            ph = t.column("phashes").take(pa.array(named, type=pa.int64()))
            has_ph = passing[named] & (pc.list_value_length(ph).to_numpy(zero_copy_only=False) > 0)
            named_ids.append(ids.take(pa.array(named, type=pa.int64())).combine_chunks())
            named_rows.append(n + named)
            cand.append(n_named + np.nonzero(has_ph)[0])
            cand_hashes.append(ph.filter(pa.array(has_ph)).combine_chunks())
            fails.append(np.concatenate([m, np.zeros((len(m), 1), dtype=bool)], axis=1))
            published.append(pub)
            staged.append(stg)
            n, n_named = n + t.num_rows, n_named + len(named)

        def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        return cls(
            fails=np.concatenate(fails) if fails else np.zeros((0, len(_LABELS)), dtype=bool),
            published=cat(published, bool),
            staged=cat(staged, bool),
            named_ids=pa.concat_arrays(named_ids) if named_ids else pa.array([], pa.string()),
            named_rows=cat(named_rows, np.int64),
            cand=cat(cand, np.int64),
            cand_hashes=pa.concat_arrays(cand_hashes) if cand_hashes else pa.array([], _PHASHES),
            same=cat(same, bool) if streamed else None,
            order=order if not streamed else None,
        )

    def dedup(self, max_distance: int) -> None:
        """Near-duplicates among the candidates: the losers fail near_duplicate."""
        dup = near_duplicate_of(self.named_ids.take(pa.array(self.cand, type=pa.int64())), self.cand_hashes,
                                max_distance)  # fmt: skip
        self.cand_hashes = self.cand_hashes[:0]
        losers = np.nonzero(dup >= 0)[0]
        rows = self.named_rows[self.cand[losers]]
        self.fails[rows, _NEAR_DUPLICATE] = True
        self.dup = np.full(len(self.fails), -1, dtype=np.int64)
        self.dup[rows] = self.cand[dup[losers]]

    def _names(self, rows: np.ndarray) -> list[str]:
        at = np.searchsorted(self.named_rows, rows)
        return [f"{c}.mp4" for c in self.named_ids.take(pa.array(at, type=pa.int64())).to_pylist()]

    def publish(self, layout: Layout) -> None:
        """Move kept clips into clips/ and no-longer-kept ones back to staging/ (only the moves that
        change something); kept clips without a file are rejected as extract_failed."""
        kept = ~self.fails.any(axis=1)
        pub, stg = self.published, self.staged
        for name in self._names(np.nonzero(kept & ~pub & stg)[0]):
            atomic.move(join(layout.staging, name), join(layout.clips, name))
        for name in self._names(np.nonzero(kept & pub & stg)[0]):
            atomic.remove(join(layout.staging, name))  # a move killed between copy and delete
        for name in self._names(np.nonzero(~kept & pub)[0]):
            atomic.move(join(layout.clips, name), join(layout.staging, name))
        self.fails[kept & ~pub & ~stg, len(_LABELS) - 1] = True

    def batches(self, layout: Layout, columns: list[str]) -> Iterator[tuple[int, pa.Table]]:
        """(first decided row, full rows) in the order of the first pass."""
        if self.order is not None:
            yield (
                0,
                read_table(layout.scores, SCORES_SCHEMA, columns=columns).take(
                    pa.array(self.order, type=pa.int64())
                ),
            )
            return
        assert self.same is not None
        start = done = 0
        for batch in _score_batches(layout.scores, columns):
            rows = batch.filter(pa.array(self.same[start : start + batch.num_rows]))
            start += batch.num_rows
            yield done, rows
            done += rows.num_rows

    def verdict(self, lo: int, batch: pa.Table, decision_hash: str) -> dict[str, pa.Array]:
        """The verdict columns of decided rows [lo, lo + len(batch))."""
        n = batch.num_rows
        fails = self.fails[lo : lo + n]
        failed = fails.any(axis=1)
        labels = pa.array(_LABELS, type=pa.string())
        assert self.dup is not None
        dup = self.dup[lo : lo + n]
        ids = batch.column("clip_id")
        paths = pc.binary_join_element_wise("clips/", ids, ".mp4", "")

        def dims(size: str, a: str, b: str) -> pa.Array:
            col = {k: batch.column(k).to_numpy(zero_copy_only=False).astype(np.float64) for k in (size, a, b)}
            return pa.array(col[size] * (1.0 - col[a] - col[b]))

        return {
            "status": pc.if_else(pa.array(failed), "rejected", "kept") if n else pa.array([], pa.string()),
            "reason": pc.take(labels, pa.array(fails.argmax(axis=1).astype(np.int64), mask=~failed)),
            "failed_checks": reason_lists(fails, _LABELS),
            "duplicate_of": pc.take(self.named_ids, pa.array(dup, mask=dup < 0)),
            "clip_path": pc.if_else(pa.array(~failed), paths, pa.scalar(None, pa.string())),
            "content_width": dims("width", "crop_left", "crop_right"),
            "content_height": dims("height", "crop_top", "crop_bottom"),
            "decision_hash": pa.array([decision_hash] * n, type=pa.string()),
        }


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
