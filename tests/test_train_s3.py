"""Shards on object storage, against a real S3-protocol server on loopback (moto, tests/s3_fixtures):
`vjp shard` / `vjp encode` write to the bucket (whole objects, index last, rerun reuses), the stream
reads the index and table from it with one ranged GET per sample, and a 2-process run on the
bucket, checkpointing into the bucket, killed with SIGKILL after a checkpoint resumes with the losses of
the same run from disk."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.s3_fixtures import S3Env, s3, s3_server
from tests.test_shards import cli
from tests.train_fixtures import (
    kill_tree,
    losses,
    make_tiny_shards,
    tiny_config,
    torchrun,
)

__all__ = ["s3", "s3_server"]  # fixtures, found by name

SECRET = "s3cr3t-13a-never-logged"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("s3data")
    paths = make_tiny_shards(root, n=4, encode=True)
    return {**paths, "manifests": root / "cur" / "manifests", "root": root}


def _shard_to(data: dict[str, Any], out: str) -> int:
    argv = ["--clips", str(data["manifests"]), "--stage", "tiny", "--out", out]
    return cli([*argv, "--config", str(data["shard_config"]), "--runner", "local"])


def _tree(fs: Any, url: str) -> dict[str, bytes]:
    base = url.removeprefix("s3://")
    return {p[len(base) + 1 :]: fs.cat_file(p) for p in fs.find(base)}


def _local_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _layout(tree: dict[str, bytes]) -> set[str]:
    return {re.sub(r"\.samples\.[0-9a-f]{16}\.arrow$", ".samples.HASH.arrow", k) for k in tree}


def _download(s3: S3Env, url: str, dest: Path) -> Path:
    """A local copy of a stage in the bucket: the same bytes, for the runs from disk."""
    s3.fs().get(url.removeprefix("s3://") + "/", str(dest), recursive=True)
    return dest


def _summary(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{") :])


@pytest.mark.slow
def test_shard_and_encode_write_complete_objects_to_a_bucket(
    data: dict[str, Any], s3: S3Env, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.data.sample_table import scan_tar
    from training.stream import RankStream, SampleTable

    bucket = s3.bucket("shards")
    capsys.readouterr()
    assert _shard_to(data, f"{bucket}/shards") == 0
    assert _summary(capsys)["shards_written"] == 2
    fs = s3.fs()
    stage = f"{bucket}/shards/tiny"
    remote = _tree(fs, stage)
    # the same layout as on disk (the table is named by its content, which follows the mp4 sizes)
    assert _layout(remote) == _layout(_local_tree(data["shards"]))
    index = json.loads(remote["__index__/train.json"])
    table = SampleTable.build(stage, "train", storage_options=s3.storage_options)
    for i, e in enumerate(index["shards"]):  # every object whole, as its record and index say
        tar = remote[f"train/{e['name']}"]
        assert hashlib.sha256(tar).hexdigest() == e["sha256"] and len(tar) == e["bytes"]
        _, ranges = scan_tar(f"{stage}/train/{e['name']}", s3.storage_options)
        assert table.columns.offset[table.columns.shard == i].tolist() == [r[0] for r in ranges]
    # a rerun finds every shard done: no tar is written again
    assert _shard_to(data, f"{bucket}/shards") == 0
    assert _summary(capsys)["shards_reused"] == 2
    again = _tree(fs, stage)
    assert all(again[k] == v for k, v in remote.items() if k.endswith(".tar"))
    # a run killed after a tar's PUT but before its record: the rerun writes that shard again
    fs.rm_file(f"{stage}/__index__/records/train/000001.json".removeprefix("s3://"))
    assert _shard_to(data, f"{bucket}/shards") == 0
    summary = _summary(capsys)
    assert (summary["shards_written"], summary["shards_reused"]) == (1, 1)
    assert f"{stage}/__index__/records/train/000001.json".removeprefix("s3://") in fs.find(
        stage.removeprefix("s3://")
    )
    # vjp encode from the local stage into the bucket: derived shards, table and index
    argv = [
        "--shards",
        str(data["shards"]),
        "--out",
        f"{bucket}/latents",
        "--config",
        str(data["shard_config"]),
    ]
    argv += ["--vae", str(data["vae"]), "--vae-subfolder", "", "--text-encoder", str(data["text_encoder"])]
    assert cli([*argv, "--runner", "local"], "jobs.encode") == 0
    latents = SampleTable.build(f"{bucket}/latents/tiny", "train", storage_options=s3.storage_options)
    sample = RankStream(latents, 0, 0, 1)[0]
    assert len(latents) == 4 and sample["latents"].ndim == 4 and sample["text_emb"].ndim == 2


@pytest.mark.slow
def test_the_stream_reads_a_bucket_with_one_ranged_get_per_sample(
    data: dict[str, Any], s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.data import store
    from training.stream import RankStream, SampleTable

    bucket = s3.bucket("stream")
    assert _shard_to(data, f"{bucket}/shards") == 0
    url = f"{bucket}/shards/tiny"
    remote = SampleTable.build(url, "train", str(tmp_path / "cache"), s3.storage_options)
    local = SampleTable.build(str(_download(s3, url, tmp_path / "copy")), "train")
    assert remote.urls[0].startswith(f"{url}/train/") and Path(remote.path or "").parent == tmp_path / "cache"
    for c in ("shard", "offset", "size", "key_hash"):
        assert np.array_equal(getattr(remote.columns, c), getattr(local.columns, c))

    calls: list[tuple[str, int, int]] = []
    real = store.filesystem

    class Counting:
        def __init__(self, fs: Any) -> None:
            self.fs = fs

        def cat_file(self, path: str, start: int, end: int) -> bytes:
            calls.append((path, start, end))
            return self.fs.cat_file(path, start=start, end=end)

        def open(self, *a: Any, **k: Any) -> Any:
            raise AssertionError("a sample must not open a file object (read-ahead cache)")

    monkeypatch.setattr(store, "filesystem", lambda u, so=None: (Counting(real(u, so)[0]), real(u, so)[1]))
    rs, ls = RankStream(remote, 0, 0, 1), RankStream(local, 0, 0, 1)
    for c in range(4):
        a, b = rs.raw(c), ls.raw(c)
        assert {k: v for k, v in a.items() if k != "__url__"} == {
            k: v for k, v in b.items() if k != "__url__"
        }
    want = [remote.row(rs.global_index(c)) for c in range(4)]  # (url, offset, size, key hash)
    assert [(f"s3://{p}", a, b - a) for p, a, b in calls] == [w[:3] for w in want]  # one GET each


@pytest.mark.slow
def test_sigkill_and_resume_from_a_bucket_repeat_the_run_from_disk(
    data: dict[str, Any], s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # moto takes any key; none may reach a log
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where fetched checkpoints go
    bucket = s3.bucket("train")
    assert _shard_to(data, f"{bucket}/shards") == 0
    train = {"steps": 12, "checkpoint__every": 3, "checkpoint__keep_last": 2, "vae__posterior": "mean"}
    disk_cfg = tiny_config(tmp_path / "disk.yaml", data["models"], **train)
    endpoint = {"client_kwargs": {"endpoint_url": s3.endpoint_url}}
    ckpts = f"{bucket}/run/checkpoints"  # shards and checkpoints in the bucket: no shared disk needed
    s3_cfg = tiny_config(
        tmp_path / "s3.yaml",
        data["models"],
        **train,
        data__storage_options=endpoint,
        checkpoint__folder=ckpts,
        checkpoint__storage_options=endpoint,
    )
    disk = tmp_path / "disk"
    copy = _download(s3, f"{bucket}/shards/tiny", tmp_path / "copy")  # the same bytes on disk
    r = torchrun(2, ["--config", str(disk_cfg), "--shards", str(copy), "--out", str(disk)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    run = tmp_path / "s3run"
    args = ["--config", str(s3_cfg), "--shards", f"{bucket}/shards/tiny", "--out", str(run)]
    proc = torchrun(2, args, wait=False)
    fs = s3.fs()
    deadline = time.time() + 300
    while not fs.exists(f"{ckpts}/step_000003/meta.json".removeprefix("s3://")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
        fs.invalidate_cache()
    kill_tree(proc.pid)  # torchrun, both ranks and their data workers, mid-run
    out1 = proc.stdout.read() if proc.stdout else ""
    proc.wait()
    assert max(losses(run)) < 12, "the run finished before it was killed"
    r = torchrun(2, [*args, "--resume"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from" in r.stdout
    a, b = losses(disk), losses(run)
    assert sorted(b) == sorted(a) == list(range(1, 13))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-7), f"step {step}: {a[step]} vs {b[step]}"
    # checkpoints only in the bucket, the last keep_last complete; `vjp sample RUN` finds them through
    # RUN/config.json and fetches the export: the bytes in the bucket
    from training.checkpoint import list_checkpoints
    from training.sample import resolve_export

    assert not (run / "checkpoints").exists()
    assert [s for s, _ in list_checkpoints(ckpts, endpoint)] == [9, 12]
    export = Path(resolve_export(str(run)))
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert (export / weights).read_bytes() == fs.cat_file(
        f"{ckpts}/step_000012/export/{weights}".removeprefix("s3://")
    )
    assert json.loads((export / "videojp.json").read_text())["step"] == 12
    # the table came from the bucket once into the run's cache; no credential in any file or log
    assert list((run / "stream").glob("*.arrow"))
    objects = _tree(fs, ckpts)
    texts = [v.decode(errors="replace") for k, v in objects.items() if k.endswith(".json")]
    for text in [
        out1,
        r.stdout,
        r.stderr,
        *(p.read_text(errors="replace") for p in run.rglob("*.json*")),
        *texts,
    ]:
        assert SECRET not in text
