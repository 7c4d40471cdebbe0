"""Kill the job with SIGKILL mid-run, rerun it, and get what an uninterrupted run gives."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.manifest import read_rows
from curation.pipeline import Layout
from tests.conftest import parquet_rows

ROOT = Path(__file__).resolve().parents[1]


def _cmd(src: Path, out: Path) -> list[str]:
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
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _snapshot(out: Path) -> tuple[set, set, dict[str, str]]:
    layout = Layout(str(out))

    def freeze(rows: list[dict]) -> set:
        return {tuple(sorted((k, repr(v)) for k, v in r.items())) for r in rows}

    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "clips").glob("*")}
    return freeze(read_rows(layout.videos)), freeze(parquet_rows(layout.clips_manifest)), files


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(corpus_dir: Path, tmp_path: Path) -> None:
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_cmd(corpus_dir, clean), check=True, env=_env(), cwd=ROOT, capture_output=True)

    proc = subprocess.Popen(
        _cmd(corpus_dir, killed),
        env=_env(),
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
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
    assert 1 <= partial < 5
    assert not (killed / "manifests" / "clips" / "clips.parquet").exists()

    subprocess.run(_cmd(corpus_dir, killed), check=True, env=_env(), cwd=ROOT, capture_output=True)
    a, b = _snapshot(clean), _snapshot(killed)
    assert a[0] == b[0], "video rows differ"
    assert a[1] == b[1], "clip rows differ"
    assert a[2] == b[2] and a[2], "clip files differ"
    leftovers = [p for p in killed.rglob("*") if ".tmp-" in p.name]
    assert not leftovers or all(p.parent.name in ("staging", "videos", "scores") for p in leftovers)
