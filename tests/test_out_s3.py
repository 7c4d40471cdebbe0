"""OUT on an object store: curate and caption into a bucket of a real S3-protocol server on loopback
(moto), the same manifests and clips as a local run, kill -9 + resume, no credentials written."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from curation.config import CurateConfig
from curation.pipeline import Layout
from jobs.curate import curate
from tests.bucket_helpers import (
    ROOT,
    assert_same_as_local,
    bucket_objects,
    child_env,
    curate_cmd,
    manifest_rows,
)
from tests.s3_fixtures import S3Env, s3, s3_server  # noqa: F401

CFG = CurateConfig()
SECRET = "vjp-secret-never-written-7f3a9c"
CAPTIONS = {
    "short": "青い背景の上を赤い四角がゆっくりと右へ動き、カメラは固定されている。",
    "dense": (
        "青い背景の上を赤い四角形がゆっくりと左から右へ移動している。"
        "四角形は一定の速さで進み、形や大きさは変わらない。"
        "カメラは固定されたままで、シンプルなCGアニメーションの映像である。"
    ),
}
# A scripted captioner for a subprocess: deterministic replies, slow enough to be killed mid-run.
CAPTION_SCRIPT = r"""
import sys, time
import captioning.backends.base as base
from captioning.backends.base import GenResult
from captioning.config import CaptionConfig
from jobs.caption import caption_clips
REPLIES = __REPLIES__
class Fake:
    name, model_id, model_revision = "fake", "fake/model", None
    def generate(self, requests):
        time.sleep(float(sys.argv[2]))
        return [GenResult(text=REPLIES[r.key.rsplit("/", 1)[1]], finish_reason="stop") for r in requests]
    def close(self):
        pass
base.make_backend = lambda name, cfg: Fake()
cfg = CaptionConfig.model_validate({"transformers": {"batch_size": 1}})
print(caption_clips(sys.argv[1], cfg, "transformers", "local", progress=False))
""".replace("__REPLIES__", repr(CAPTIONS))


@pytest.fixture
def small_corpus(corpus_dir: Path, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("short", "duplicate", "cuts"):
        shutil.copyfile(corpus_dir / f"{name}.mp4", src / f"{name}.mp4")
    return src


def _caption(out: str, delay: float = 0.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CAPTION_SCRIPT, f"{out}/manifests", str(delay)],
        env=child_env(), cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip


def _captions(out: str) -> set[tuple]:
    from captioning.manifest import read_captions

    rows = read_captions(f"{out}/manifests/captions").to_pylist()
    return {(r["clip_id"], r["caption_type"], r["status"], r["caption"]) for r in rows}


def _wait_for(fs: Any, prefix: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(p.endswith(".parquet") for p in fs.find(prefix)):
            return
        time.sleep(0.1)
    raise AssertionError("the job finished (or hung) before it could be killed")


@pytest.mark.slow
def test_curate_and_caption_into_a_bucket_equal_a_local_run(
    s3: S3Env,  # noqa: F811
    small_corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    local = str(tmp_path / "local")
    url = s3.bucket("out") + "/run"
    a = curate(f"files:{small_corpus}/*.mp4", local, CFG, runner="local")
    b = curate(f"files:{small_corpus}/*.mp4", url, CFG, runner="local")
    for s in (a, b):
        s.pop("elapsed_s")
    assert a == b and a["clips_kept"] > 0
    assert_same_as_local(local, url, s3.fs())

    for out in (local, url):
        _caption(out)
    assert _captions(local) == _captions(url)
    assert {c[2] for c in _captions(url)} == {"ok"}
    objects = bucket_objects(s3.fs(), url)
    assert [n for n in objects if n.startswith("manifests/captions/c-")], sorted(objects)
    assert not [n for n in objects if n.startswith("manifests/captions/part-")]
    leaks = [n for n, data in objects.items() if SECRET.encode() in data]
    assert not leaks, leaks


@pytest.mark.slow
def test_sigkill_and_resume_in_a_bucket_equal_an_uninterrupted_run(
    s3: S3Env,  # noqa: F811
    small_corpus: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    clean, killed = s3.bucket("clean") + "/run", s3.bucket("killed") + "/run"
    subprocess.run(
        curate_cmd(small_corpus, clean), env=child_env(), cwd=ROOT, check=True, capture_output=True
    )
    fs = s3.fs()
    proc = subprocess.Popen(
        curate_cmd(small_corpus, killed), env=child_env(), cwd=ROOT, start_new_session=True
    )
    _wait_for(fs, killed.removeprefix("s3://") + "/manifests/videos", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not fs.exists(killed.removeprefix("s3://") + "/manifests/clips/clips.parquet")
    out = subprocess.run(curate_cmd(small_corpus, killed), env=child_env(), cwd=ROOT, check=True,
                         capture_output=True, text=True)  # fmt: skip
    assert SECRET not in out.stdout + out.stderr
    for name in ("videos", "scores", "thumbs"):
        assert manifest_rows(getattr(Layout(clean), name)) == manifest_rows(getattr(Layout(killed), name)), (
            name
        )
    assert manifest_rows(f"{clean}/manifests/clips") == manifest_rows(f"{killed}/manifests/clips")
    a, b = bucket_objects(s3.fs(), clean), bucket_objects(s3.fs(), killed)
    clips_a = {n: d for n, d in a.items() if n.startswith("clips/")}
    assert clips_a and clips_a == {n: d for n, d in b.items() if n.startswith("clips/")}

    # Captioning killed after its first batch, then resumed: the same latest captions.
    _caption(clean)
    proc = subprocess.Popen(
        [sys.executable, "-c", CAPTION_SCRIPT, f"{killed}/manifests", "1.0"],
        env=child_env(), cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    _wait_for(fs, killed.removeprefix("s3://") + "/manifests/captions", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _captions(killed) < _captions(clean)
    _caption(killed)
    assert _captions(killed) == _captions(clean)
    leaks = [n for n, data in bucket_objects(s3.fs(), killed).items() if SECRET.encode() in data]
    assert not leaks, leaks
