"""The batch-wise job-wide passes (curation.pipeline: finalize, ResumeIndex) against row-wise
references: decide_clips plus the publishing rules for `vjp decide`, and the per-video resume state
(the reads a worker makes without the index) for the resume index. Small batches force many of
them; the whole-table path (an uncompacted or unsorted manifest) must give the same result."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import curation.pipeline as pipeline
from curation.config import CurateConfig
from curation.decide import content_size, decide_clips
from curation.manifest import SCORES_SCHEMA, VIDEO_SCHEMA, write_table_atomic
from curation.pipeline import Layout, ResumeIndex, _resume_state, finalize
from curation.sources.base import VideoItem

CFG = CurateConfig()


def _item(k: int) -> VideoItem:
    return VideoItem(source="files", key=f"v{k}.mp4", uri=f"/data/v{k}.mp4")


def _video(k: int, analysis_hash: str = CFG.analysis_hash, status: str = "ok") -> dict:
    item = _item(k)
    return {
        "video_id": item.video_id, "source": "files", "source_key": item.key, "uri": item.uri,
        "status": status, "error": None if status == "ok" else "boom",
        "error_stage": None if status == "ok" else "probe", "width": 320 + 16 * (k % 3), "height": 240,
        "duration_s": 30.0, "analysis_hash": analysis_hash, "package_version": "0",
    }  # fmt: skip


def _clip(rng: random.Random, vid: str, j: int, base: list[int], analysis_hash: str) -> dict:
    def maybe(lo: float, hi: float, none: float = 0.05) -> float | None:
        return None if rng.random() < none else rng.uniform(lo, hi)

    s = 50 * j
    # Near-duplicates across videos: most clips share one of a few hash triples, a bit or two apart.
    ph = [] if rng.random() < 0.05 else [h ^ (rng.getrandbits(2) if rng.random() < 0.5 else 0) for h in base]
    return {
        "clip_id": f"{vid}_{s:07d}_{s + 50:07d}", "video_id": vid, "source": "files",
        "start_frame": s, "end_frame": s + 50, "start_s": s / 25, "end_s": (s + 50) / 25,
        "duration_s": rng.choice([1.0, 2.0, 4.0, 4.0]), "n_frames": 50, "fps": 25.0, "width": 320,
        "height": 240, "shot_index": j, "window_index": 0, "n_samples": 4,
        "motion": maybe(0.0, 0.03), "luma_mean": maybe(10, 250), "luma_std": maybe(10, 60),
        "luma_p99": maybe(100, 255), "dark_fraction": maybe(0, 0.6), "sharpness": maybe(0, 400),
        "text_fraction": maybe(0, 0.05), "border_fraction": rng.choice([0.0, 0.0, 0.5]),
        "crop_top": rng.choice([0.0, 0.0, 0.1]), "crop_bottom": 0.0, "crop_left": 0.0, "crop_right": 0.0,
        "phashes": ph, "analysis_hash": analysis_hash, "package_version": "0",
    }  # fmt: skip


def _corpus(out: Path, n_videos: int = 24, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Video and score parts: one video failed, one video's scores are from other analysis
    settings than its video row (a rerun killed between the two parts), one video row is stale."""
    rng = random.Random(seed)
    layout = Layout(str(out))
    bases = [[rng.getrandbits(63) for _ in range(3)] for _ in range(5)]
    videos, scores = [], []
    for k in range(n_videos):
        v = _video(
            k, analysis_hash="old" if k == 3 else CFG.analysis_hash, status="error" if k == 1 else "ok"
        )
        rows = [] if k == 1 else [
            _clip(rng, v["video_id"], j, rng.choice(bases), "other" if k == 2 else CFG.analysis_hash)
            for j in range(rng.randint(1, 9))
        ]  # fmt: skip
        if k == 3:
            rows = [{**r, "analysis_hash": "old"} for r in rows]
        write_table_atomic(rows, SCORES_SCHEMA, layout.scores_part(v["video_id"]))
        write_table_atomic([v], VIDEO_SCHEMA, layout.video_part(v["video_id"]))
        videos.append(v)
        scores += rows
    return videos, scores


def _touch(folder: Path, ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for c in ids:
        (folder / f"{c}.mp4").write_bytes(b"x")


def _files(folder: Path) -> set[str]:
    return {p.name[:-4] for p in folder.glob("*.mp4")}


def _expected(
    videos: list[dict], scores: list[dict], cfg: CurateConfig, published: set[str], staged: set[str]
):  # type: ignore[no-untyped-def]
    """decide_clips, then the publishing rules, row by row: (clip rows, files in clips/, in staging/)."""
    ok = {v["video_id"]: v for v in videos if v["status"] == "ok"}
    rows = sorted(
        (
            r
            for r in scores
            if r["video_id"] in ok and r["analysis_hash"] == ok[r["video_id"]]["analysis_hash"]
        ),
        key=lambda r: r["clip_id"],
    )
    decided = decide_clips([dict(r) for r in rows], ok, cfg.split, cfg.filters)
    clips_dir, staging = set(published), set(staged)
    for r in decided:
        cid = r["clip_id"]
        if r["status"] == "kept" and cid not in published and cid not in staged:
            r.update(
                status="rejected",
                reason="extract_failed",
                failed_checks=[*r["failed_checks"], "extract_failed"],
            )
        elif r["status"] == "kept":
            staging.discard(cid)
            clips_dir.add(cid)
        elif cid in published:
            clips_dir.discard(cid)
            staging.add(cid)
        r["clip_path"] = f"clips/{cid}.mp4" if r["status"] == "kept" else None
        r["content_width"], r["content_height"] = content_size(r, r["width"], r["height"])
    return decided, clips_dir, staging


VERDICT = (
    "status",
    "reason",
    "failed_checks",
    "duplicate_of",
    "clip_path",
    "content_width",
    "content_height",
)


@pytest.mark.parametrize("mode", ["batches", "whole"])
def test_finalize_in_batches_equals_the_row_wise_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    videos, scores = _corpus(tmp_path)
    ids = sorted(r["clip_id"] for r in scores)
    # Files of an earlier decide: some in clips/ (some of them no longer kept), most in staging,
    # one in both (a move killed between copy and delete), some kept clips in neither.
    published = set(ids[::5])
    staged = set(ids[1::5]) | set(ids[2::5]) | set(ids[3::5]) | {ids[0]}
    _touch(tmp_path / "clips", sorted(published))
    _touch(tmp_path / "staging", sorted(staged))
    (tmp_path / "staging" / "not-a-clip.txt").write_text("ignored")
    monkeypatch.setattr(pipeline, "BATCH_ROWS", 7)
    if mode == "whole":
        monkeypatch.setattr(pipeline, "is_compact", lambda folder: False)
    summary = finalize(str(tmp_path), CFG)

    want, want_clips, want_staging = _expected(videos, scores, CFG, published, staged)
    got = pq.read_table(tmp_path / "manifests" / "clips" / "clips.parquet").to_pylist()
    assert [r["clip_id"] for r in got] == [r["clip_id"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert {k: g[k] for k in VERDICT} == {k: w[k] for k in VERDICT}, g["clip_id"]
        assert g["decision_hash"] == CFG.decision_hash and g["phashes"] == w["phashes"]
    reasons = {r["reason"] for r in got}
    assert {"near_duplicate", "extract_failed"} <= reasons and any(r["status"] == "kept" for r in got)
    assert _files(tmp_path / "clips") == want_clips and _files(tmp_path / "staging") == want_staging
    kept = [r for r in want if r["status"] == "kept"]
    assert summary["clips"] == len(want) and summary["clips_kept"] == len(kept)
    assert summary["kept_seconds"] == round(sum(r["duration_s"] for r in kept), 3)
    assert summary["videos_error"] == 1 and summary["errors_by_stage"] == {"probe": 1}


def test_finalize_falls_back_when_compacted_rows_are_not_in_clip_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    videos, scores = _corpus(tmp_path, n_videos=10, seed=3)
    pipeline.compact_manifests(str(tmp_path))
    real = pipeline._score_batches

    def reversed_batches(folder: str, columns: list[str]):  # type: ignore[no-untyped-def]
        for t in real(folder, columns):
            yield t.take(list(range(t.num_rows - 1, -1, -1)))

    monkeypatch.setattr(pipeline, "_score_batches", reversed_batches)
    monkeypatch.setattr(pipeline, "BATCH_ROWS", 5)
    finalize(str(tmp_path), CFG)
    want, _, _ = _expected(videos, scores, CFG, set(), set())
    got = pq.read_table(tmp_path / "manifests" / "clips" / "clips.parquet").to_pylist()
    assert [(g["clip_id"], g["status"], g["reason"]) for g in got] == [
        (w["clip_id"], w["status"], w["reason"]) for w in want
    ]


def test_resume_index_in_batches_equals_the_per_video_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    videos, scores = _corpus(tmp_path, seed=1)
    ids = sorted(r["clip_id"] for r in scores)
    _touch(tmp_path / "staging", ids[::2])
    _touch(tmp_path / "clips", ids[1::4])
    monkeypatch.setattr(pipeline, "BATCH_ROWS", 6)
    index = ResumeIndex.load(str(tmp_path), CFG)
    layout = Layout(str(tmp_path))
    n_partial = 0
    for k, v in enumerate(videos):
        video, todo = _resume_state(_item(k), layout, CFG)  # item.resume unset: the per-video reads
        vid = v["video_id"]
        if video is None:
            assert vid not in index.finished and vid not in index.partial
        elif not todo:
            assert vid in index.finished and vid not in index.partial
        else:
            n_partial += 1
            assert vid not in index.finished
            got_video, got_todo = index.partial[vid]
            assert got_video == video
            assert [r["clip_id"] for r in got_todo] == [r["clip_id"] for r in todo]
            for r in got_todo:  # the columns extraction reads, as stored
                full = next(t for t in todo if t["clip_id"] == r["clip_id"])
                assert r == {c: full[c] for c in r}
    assert n_partial >= 3 and len(index.finished) >= 3
    assert _item(3).video_id not in index.finished  # stale analysis settings: redone


def test_finalize_when_every_video_failed_on_a_rerun(tmp_path: Path) -> None:
    videos, scores = _corpus(tmp_path, n_videos=4, seed=2)
    layout = Layout(str(tmp_path))
    for k, v in enumerate(videos):  # a rerun failed every video: its video part replaces the old one
        write_table_atomic([_video(k, status="error")], VIDEO_SCHEMA, layout.video_part(v["video_id"]))
    assert scores
    summary = finalize(str(tmp_path), CFG)
    assert summary["clips"] == 0 and summary["videos_error"] == 4
    assert pq.read_table(tmp_path / "manifests" / "clips" / "clips.parquet").num_rows == 0
    assert ResumeIndex.load(str(tmp_path), CFG).finished == {v["video_id"] for v in videos}


def test_sorted_lookup_equals_a_hash_lookup() -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(0)
    values = pa.array([f"v{i:05d}" for i in rng.permutation(5000)])
    lookup = pipeline._Sorted(values)
    for keys in (
        sorted(f"v{i:05d}" for i in rng.integers(0, 6000, 300)),  # sorted, some absent
        [f"v{i:05d}" for i in rng.integers(0, 6000, 300)],  # unsorted
        ["a", "v00007", "v00007", "z"],  # outside the range at both ends, repeated
        [],
    ):
        arr = pa.array(keys, pa.string())
        want = pc.index_in(arr, value_set=values).to_pylist()
        assert lookup.index_in(arr).tolist() == [-1 if w is None else w for w in want]
    names = ["b_1.mp4", "a_0.mp4", "notes.txt", "c_2.mp4.tmp-1"]
    listing = pipeline._Sorted.listing(names)
    assert listing.contains(pa.array(["a_0", "b_1", "c_2", "notes"])).tolist() == [True, True, False, False]
