"""The per-video unit of work and the job-wide finalize step. No Ray in here: the same functions
run in a unit test, in a thread pool and inside a Ray task.

Output layout under OUT:
  manifests/videos/<video_id>.parquet   one row per source video (written last: the commit marker)
  manifests/scores/<video_id>.parquet   one row per candidate clip, scores only
  manifests/thumbs/<video_id>.parquet   a small JPEG per candidate clip (contact sheets)
  manifests/clips/clips.parquet         every candidate with its verdict (finalize)
  staging/<clip_id>.mp4                 clips extracted but not (or no longer) kept
  clips/<clip_id>.mp4                   kept clips
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from curation import __version__
from curation.analyze import VideoAnalysis, analyze_clips, analyze_video, apply_transnet, clip_thumbnails
from curation.config import CurateConfig
from curation.decide import content_size, decide_clips, failing_checks
from curation.extract import ClipSpan, extract_clips
from curation.ids import clip_id, sha256_file
from curation.isolate import IsolatedError, run_isolated
from curation.manifest import (
    CLIP_SCHEMA,
    SCORES_SCHEMA,
    THUMB_SCHEMA,
    VIDEO_SCHEMA,
    read_one,
    read_rows,
    write_table_atomic,
)
from curation.probe import ProbeError, probe
from curation.sources.base import VideoItem


@dataclass
class Layout:
    out: str

    @property
    def videos(self) -> str:
        return os.path.join(self.out, "manifests", "videos")

    @property
    def scores(self) -> str:
        return os.path.join(self.out, "manifests", "scores")

    @property
    def clips_manifest(self) -> str:
        return os.path.join(self.out, "manifests", "clips", "clips.parquet")

    @property
    def staging(self) -> str:
        return os.path.join(self.out, "staging")

    @property
    def clips(self) -> str:
        return os.path.join(self.out, "clips")

    def video_part(self, vid: str) -> str:
        return os.path.join(self.videos, f"{vid}.parquet")

    def scores_part(self, vid: str) -> str:
        return os.path.join(self.scores, f"{vid}.parquet")

    @property
    def thumbs(self) -> str:
        return os.path.join(self.out, "manifests", "thumbs")

    def thumbs_part(self, vid: str) -> str:
        return os.path.join(self.thumbs, f"{vid}.parquet")


# ---------------------------------------------------------------- child-process work (decoding)


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
    stage = "probe"
    try:
        info = probe(path)
        stage = "analyze"
        a = analyze_video(
            path, info, cfg.split, cfg.analysis, [SplitHint(**h) for h in hints], defer_transnet
        )
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
        if not os.path.exists(os.path.join(layout.staging, f"{r['clip_id']}.mp4"))
        and not os.path.exists(os.path.join(layout.clips, f"{r['clip_id']}.mp4"))
    ]


def _resume_state(item: VideoItem, layout: Layout, cfg: CurateConfig) -> tuple[dict[str, Any] | None, list]:
    """(video row of a previous run under the same analysis settings, clips it still lacks)."""
    prev = read_one(layout.video_part(item.video_id))
    if not prev or prev[0]["analysis_hash"] != cfg.analysis_hash:
        return None, []
    video = prev[0]
    if video["status"] == "error":
        return video, []
    scores = read_one(layout.scores_part(item.video_id))
    return video, _missing_files(_locally_passing(scores, video, cfg), layout)


def needs_work(item: VideoItem, out: str, cfg: CurateConfig) -> bool:
    """False when a previous run finished this video under the same analysis settings."""
    video, todo = _resume_state(item, Layout(out), cfg)
    return video is None or bool(todo)


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
        write_table_atomic([row], VIDEO_SCHEMA, layout.video_part(item.video_id))
        return row
    video, todo = _resume_state(item, layout, cfg)
    if video is not None:
        if not todo:
            return video
        with local_copy(item) as path:
            video = _extract(path, video, todo, layout, cfg)
        write_table_atomic([video], VIDEO_SCHEMA, layout.video_part(item.video_id))
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
                write_table_atomic(thumbs, THUMB_SCHEMA, layout.thumbs_part(item.video_id))
                write_table_atomic(scores, SCORES_SCHEMA, layout.scores_part(item.video_id))
                todo = _missing_files(_locally_passing(scores, row, cfg), layout)
                row = _extract(path, row, todo, layout, cfg)
    write_table_atomic([row], VIDEO_SCHEMA, layout.video_part(item.video_id))
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
    try:
        run_isolated(
            _extract_in_child,
            path,
            video["stream_index"],
            video["rotation"],
            video["fps"],
            spans,
            layout.staging,
            cfg.model_dump_json(),
            timeout=cfg.analysis.timeout_s,
        )
    except IsolatedError as e:
        return error_row({k: v for k, v in video.items() if k not in ("status", "error")}, "extract", str(e))
    return video


# ---------------------------------------------------------------- job-wide step


def finalize(out: str, cfg: CurateConfig) -> dict[str, Any]:
    """Decide every clip of the job (deduplication included), publish kept clips, write the clip manifest.

    Cheap and repeatable: it reads only manifests and renames files, so a threshold change takes
    seconds. Clips that stop being kept go back to staging instead of being deleted.
    """
    layout = Layout(out)
    videos = {v["video_id"]: v for v in read_rows(layout.videos, VIDEO_SCHEMA) if v["status"] == "ok"}
    scores = [r for r in read_rows(layout.scores, SCORES_SCHEMA) if r["video_id"] in videos]
    decided = decide_clips(scores, videos, cfg.split, cfg.filters)
    os.makedirs(layout.clips, exist_ok=True)
    os.makedirs(layout.staging, exist_ok=True)
    rows = []
    for r in sorted(decided, key=lambda r: r["clip_id"]):
        name = f"{r['clip_id']}.mp4"
        published, staged = os.path.join(layout.clips, name), os.path.join(layout.staging, name)
        if r["status"] == "kept":
            if not os.path.exists(published) and os.path.exists(staged):
                os.replace(staged, published)
            if not os.path.exists(published):
                r["status"], r["reason"] = "rejected", "extract_failed"
                r["failed_checks"] = [*r["failed_checks"], "extract_failed"]
        elif os.path.exists(published):
            os.replace(published, staged)
        cw, ch = content_size(r, r["width"], r["height"])
        rows.append(
            {
                **r,
                "clip_path": f"clips/{name}" if r["status"] == "kept" else None,
                "content_width": cw,
                "content_height": ch,
                "decision_hash": cfg.decision_hash,
            }
        )
    write_table_atomic(rows, CLIP_SCHEMA, layout.clips_manifest)
    all_videos = read_rows(layout.videos, VIDEO_SCHEMA)
    return summarize(all_videos, rows)


def summarize(videos: list[dict[str, Any]], clips: list[dict[str, Any]]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for c in clips:
        if c["status"] == "rejected":
            reasons[c["reason"]] = reasons.get(c["reason"], 0) + 1
    errors: dict[str, int] = {}
    for v in videos:
        if v["status"] == "error":
            errors[v["error_stage"]] = errors.get(v["error_stage"], 0) + 1
    kept = [c for c in clips if c["status"] == "kept"]
    return {
        "videos": len(videos),
        "videos_ok": sum(v["status"] == "ok" for v in videos),
        "videos_error": sum(v["status"] == "error" for v in videos),
        "errors_by_stage": dict(sorted(errors.items())),
        "clips": len(clips),
        "clips_kept": len(kept),
        "kept_seconds": round(sum(c["duration_s"] for c in kept), 3),
        "source_seconds": round(sum(v["duration_s"] or 0 for v in videos), 3),
        "rejected_by_reason": dict(sorted(reasons.items())),
    }
