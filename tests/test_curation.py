"""The curation core on generated videos with known ground truth, bad files, and resume."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from curation.analyze import analyze_video
from curation.config import CurateConfig
from curation.manifest import read_rows
from curation.pipeline import Layout, finalize, process_video
from curation.probe import probe
from curation.sources import open_source
from curation.synth import sample_corpus
from jobs.curate import curate
from jobs.schemas import generate
from tests.conftest import parquet_rows

CFG = CurateConfig()


@pytest.fixture(scope="module")
def curated(corpus_dir: Path, bad_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("curated")
    curate(f"files:{corpus_dir}/*.mp4", str(out), CFG, runner="local")
    curate(f"files:{bad_dir}/*", str(out), CFG, runner="local")
    return out


@pytest.mark.parametrize("name", ["cuts", "quality"])
def test_cuts_found_within_two_frames(corpus_dir: Path, name: str) -> None:
    truth = next(v for v in sample_corpus() if v.name == name).cuts
    path = str(corpus_dir / f"{name}.mp4")
    a = analyze_video(path, probe(path), CFG.split, CFG.analysis)
    assert len(a.cuts) == len(truth), (a.cuts, truth)
    for found, expected in zip(a.cuts, truth, strict=True):
        assert abs(found - expected) <= 2, (a.cuts, truth)


def _clips(out: Path) -> list[dict]:
    return parquet_rows(Layout(str(out)).clips_manifest)


def _video_ids(out: Path) -> dict[str, str]:
    return {Path(v["uri"]).stem: v["video_id"] for v in read_rows(Layout(str(out)).videos)}


def test_each_segment_gets_its_verdict(curated: Path) -> None:
    clips, ids = _clips(curated), _video_ids(curated)
    for v in sample_corpus():
        mine = sorted((c for c in clips if c["video_id"] == ids[v.name]), key=lambda c: c["start_frame"])
        for shot, expected in v.expected.items():
            got = [c for c in mine if c["shot_index"] == int(shot)]
            assert got, f"{v.name}: no clip for shot {shot}"
            reason = got[0]["reason"] or "kept"
            assert reason == expected, f"{v.name} shot {shot}: {reason} != {expected} ({got[0]})"


def test_letterbox_crop_box_recorded(curated: Path) -> None:
    ids = _video_ids(curated)
    clip = next(c for c in _clips(curated) if c["video_id"] == ids["cuts"] and c["shot_index"] == 3)
    assert clip["status"] == "kept"
    assert clip["crop_top"] == pytest.approx(1 / 8, abs=0.03)
    assert clip["crop_bottom"] == pytest.approx(1 / 8, abs=0.03)
    assert clip["crop_left"] == pytest.approx(0.0, abs=0.02)
    assert clip["content_height"] == pytest.approx(360 * 0.75, abs=10)


def test_long_shot_cut_into_equal_windows(curated: Path) -> None:
    ids = _video_ids(curated)
    mine = [c for c in _clips(curated) if c["video_id"] == ids["long"]]
    assert len(mine) == 3
    assert all(c["status"] == "kept" for c in mine)
    assert all(5.0 <= c["duration_s"] <= CFG.split.max_clip_s for c in mine)
    assert sum(c["n_frames"] for c in mine) == 25 * 24


def test_duplicate_survivor_is_deterministic(curated: Path) -> None:
    ids = _video_ids(curated)
    dup = next(c for c in _clips(curated) if c["video_id"] == ids["duplicate"])
    original = next(c for c in _clips(curated) if c["video_id"] == ids["cuts"] and c["shot_index"] == 0)
    assert dup["reason"] == "near_duplicate"
    assert dup["duplicate_of"] == original["clip_id"] < dup["clip_id"]


def test_kept_clips_are_files_with_their_frames(curated: Path) -> None:
    import av

    kept = [c for c in _clips(curated) if c["status"] == "kept"]
    assert kept
    for c in kept:
        path = curated / c["clip_path"]
        assert path.exists(), path
        with av.open(str(path)) as f:
            s = f.streams.video[0]
            assert s.codec_context.name == "h264"
            assert float(s.average_rate) == pytest.approx(c["fps"], rel=1e-3)
            pts = [frame.pts for frame in f.decode(s)]
        assert len(pts) == c["n_frames"], (c["clip_id"], len(pts), c["n_frames"])
        # Clean, increasing timestamps: readers such as decord hang on clips whose frames all
        # carry pts 0 (an earlier extract bug), and captioning reads these files with decord.
        assert all(b > a for a, b in itertools.pairwise(pts)), pts[:5]
    rejected = [c for c in _clips(curated) if c["status"] == "rejected"]
    assert not any((curated / "clips" / f"{c['clip_id']}.mp4").exists() for c in rejected)


EXPECTED_ERRORS = {
    "zero": "empty file",
    "text": "not a readable video container",
    "truncated": "not a readable video container",
    "audio_only": "no video stream",
    "unknown_codec": "unsupported codec",
    "notes": "not a video: FFmpeg reads it with its 'tty' demuxer",
    "still": "not a video: FFmpeg reads it with its 'png_pipe' demuxer",
}


def test_bad_files_become_error_rows(curated: Path) -> None:
    rows = {Path(v["uri"]).stem: v for v in read_rows(Layout(str(curated)).videos)}
    for stem, reason in EXPECTED_ERRORS.items():
        assert rows[stem]["status"] == "error", rows[stem]
        assert reason in rows[stem]["error"], rows[stem]["error"]
    assert rows["good"]["status"] == "ok"
    summary = json.loads((curated / "manifests" / "summary.json").read_text())
    assert summary["videos_error"] == len(EXPECTED_ERRORS)
    assert summary["videos_ok"] == len(sample_corpus()) + 1


def test_rows_match_json_schemas(curated: Path) -> None:
    schemas = generate()
    layout = Layout(str(curated))
    for folder, name in ((layout.videos, "video_row.v1"), (layout.scores, "clip_scores.v1")):
        rows = read_rows(folder)
        assert rows
        for r in rows:
            jsonschema.validate(r, schemas[name])
    for r in _clips(curated):
        jsonschema.validate(r, schemas["clip_row.v1"])


def test_rerun_skips_finished_videos(
    curated: Path, corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import curation.pipeline as pipeline

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("a finished video was decoded again")

    monkeypatch.setattr(pipeline, "run_isolated", boom)
    before = _clips(curated)
    summary = curate(f"files:{corpus_dir}/*.mp4", str(curated), CFG, runner="local")
    assert summary["clips"] == len(before)


def test_redecide_from_scores_without_decoding(curated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import curation.pipeline as pipeline

    monkeypatch.setattr(pipeline, "run_isolated", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    strict = CFG.model_copy(update={"filters": CFG.filters.model_copy(update={"blur_min": 1e9})})
    summary = finalize(str(curated), strict)
    assert summary["clips_kept"] == 0
    assert summary["rejected_by_reason"].get("blurry", 0) > 0
    assert not list((curated / "clips").glob("*.mp4"))
    # Back to the defaults: the clips come back from staging, no re-extraction needed.
    summary = finalize(str(curated), CFG)
    kept = [c for c in _clips(curated) if c["status"] == "kept"]
    assert summary["clips_kept"] == len(kept) > 0
    assert all((curated / c["clip_path"]).exists() for c in kept)


def test_error_item_from_source_is_recorded(tmp_path: Path) -> None:
    from curation.sources.base import VideoItem

    item = VideoItem(
        source="pixabay", key="annotation::../../etc/passwd", uri="../../etc/passwd", error="escapes"
    )
    row = process_video(item, str(tmp_path), CFG)
    assert row["status"] == "error" and row["error_stage"] == "source"
    assert parquet_rows(Layout(str(tmp_path)).video_part(item.video_id))[0]["error"] == "escapes"


def test_source_spec_files_glob(corpus_dir: Path) -> None:
    items = list(open_source(f"files:{corpus_dir}/*.mp4").iter_items())
    assert sorted(os.path.basename(i.key) for i in items) == sorted(f"{v.name}.mp4" for v in sample_corpus())


def test_analysis_memory_does_not_grow_with_video_length(tmp_path: Path) -> None:
    """Frames are dropped once scored: 4x the length must not mean more traced memory."""
    import tracemalloc

    from curation.synth import Segment, SynthVideo, write_video

    peaks = []
    for secs in (15, 60):
        video = SynthVideo(f"m{secs}", (Segment("moving", 24 * secs, 3),), width=320, height=180)
        path = write_video(video, str(tmp_path / f"{secs}.mp4"))
        info = probe(path)
        tracemalloc.start()
        a = analyze_video(path, info, CFG.split, CFG.analysis)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert a.n_frames == 24 * secs
    # Holding even the 64 px detection frames of the long video would add ~25 MB.
    assert peaks[1] < 8e6 and peaks[1] < 1.5 * peaks[0] + 1e6, peaks


def test_decoder_crash_is_an_error_row_and_the_job_goes_on(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import curation.pipeline as pipeline
    from curation.isolate import IsolatedError

    real = pipeline.run_isolated

    def crash_on_short(fn: Callable[..., Any], path: str, *args: Any, **kwargs: Any) -> Any:
        if fn is pipeline._analyze_in_child and "short" in path:
            raise IsolatedError("decoder crashed (SIGSEGV)")
        return real(fn, path, *args, **kwargs)

    src = tmp_path / "src"
    src.mkdir()
    for name in ("short", "duplicate"):
        (src / f"{name}.mp4").write_bytes((corpus_dir / f"{name}.mp4").read_bytes())
    monkeypatch.setattr(pipeline, "run_isolated", crash_on_short)
    summary = curate(f"files:{src}/*.mp4", str(tmp_path / "out"), CFG, runner="local")
    rows = {Path(v["uri"]).stem: v for v in read_rows(Layout(str(tmp_path / "out")).videos)}
    assert rows["short"]["status"] == "error" and rows["short"]["error"] == "decoder crashed (SIGSEGV)"
    assert rows["short"]["error_stage"] == "analyze"
    assert rows["duplicate"]["status"] == "ok" and summary["clips_kept"] == 1


def test_every_clip_has_a_thumbnail_from_its_middle(curated: Path) -> None:
    import cv2
    import numpy as np

    thumbs = {r["clip_id"]: r for r in read_rows(Layout(str(curated)).thumbs)}
    clips = _clips(curated)
    assert {c["clip_id"] for c in clips if c["duration_s"] >= 2.0} <= set(thumbs)
    ids = _video_ids(curated)
    dark = next(c for c in clips if c["video_id"] == ids["cuts"] and c["shot_index"] == 2)
    washed = next(c for c in clips if c["video_id"] == ids["quality"] and c["shot_index"] == 2)
    for clip, low, high in ((dark, 0, 40), (washed, 200, 256)):
        img = cv2.imdecode(np.frombuffer(thumbs[clip["clip_id"]]["jpeg"], np.uint8), cv2.IMREAD_COLOR)
        assert min(img.shape[:2]) >= 100
        assert low <= img.mean() < high, (clip["reason"], img.mean())


def test_summarize_counts_each_status_from_its_column() -> None:
    import pyarrow as pa

    from curation.pipeline import summarize

    videos = pa.table({
        "status": ["ok", "error", "ok", "error"], "error_stage": [None, "probe", None, "analyze"],
        "duration_s": [10.0, None, 5.5, 1.0],
    })  # fmt: skip
    clips = pa.table({
        "status": ["kept", "rejected", "kept", "rejected", "rejected"],
        "reason": [None, "static", None, "blurry", "static"], "duration_s": [2.0, 3.0, 4.25, 1.0, None],
    })  # fmt: skip
    assert summarize(videos, clips) == {
        "videos": 4, "videos_ok": 2, "videos_error": 2, "errors_by_stage": {"analyze": 1, "probe": 1},
        "clips": 5, "clips_kept": 2, "kept_seconds": 6.25, "source_seconds": 16.5,
        "rejected_by_reason": {"blurry": 1, "static": 2},
    }  # fmt: skip
    empty = summarize(videos.slice(0, 0), clips.slice(0, 0))
    assert empty["clips_kept"] == 0 and empty["rejected_by_reason"] == {} and empty["errors_by_stage"] == {}
