"""`vjp shard` and `vjp encode` reading their inputs from a bucket of a real S3-protocol server on
loopback (moto, tests/s3_fixtures): the curation output (clip and caption manifests, clip objects)
and the stage shards are read where they lie, never copied to a local folder; the results equal a
run on a local copy byte for byte; a clip path that would leave OUT is refused and recorded; a run
killed with SIGKILL while it reads the bucket and rerun gives the uninterrupted result."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.run_fixtures import REPO, run_command, tail
from tests.s3_fixtures import s3_server
from tests.test_shards import make_clips, write_captions, write_config

__all__ = ["s3_server"]  # the session fixture, found by name

pytestmark = pytest.mark.slow  # subprocesses and a server: about 80 s on 2 busy cores

SECRET = "vjp-shard-s3-secret-93c1e4"
CAPTIONS = ["森の中を流れる小川。", "公園で遊ぶ子どもたち。", "夜の街を走る電車。", "海辺に打ち寄せる波。"]
# A manifest is input: these clip paths must never be opened (another bucket, above OUT, absolute).
UNSAFE = {"v3_0000006_0000066": "s3://elsewhere/clips/x.mp4", "v3_0000007_0000067": "../outside.mp4"}
# 96 px: a size where libx264's AVX-512 code gave run-to-run different bytes before encode_mp4
# capped its asm at AVX2 on such CPUs (curation.x264).
STAGES = {
    # Small samples: the byte-identity and encode checks.
    "tiny": {"width": 96, "height": 96, "frames": 48, "fps": 24, "target_shard_bytes": None,
             "max_shard_samples": 2, "preset": "veryfast"},
    # One sample per shard and a slow x264 preset: a run long enough to be killed between shards.
    "slow": {"width": 128, "height": 128, "frames": 48, "fps": 24, "target_shard_bytes": None,
             "max_shard_samples": 1, "preset": "veryslow", "crf": 12},
    # For vjp encode (its input tars are made once, here): few small frames, the VAE's cost.
    "enc": {"width": 64, "height": 64, "frames": 8, "fps": 24, "target_shard_bytes": None,
            "max_shard_samples": 3, "preset": "veryfast"},
}  # fmt: skip


@dataclass
class Bucket:
    endpoint: str
    local: Path  # the curation output on local disk
    url: str  # the same output copied into the bucket (s3://name/out)
    config: Path
    tmp: Path

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, client_kwargs={"endpoint_url": self.endpoint})

    def objects(self, url: str) -> dict[str, bytes]:
        fs, root = self.fs(), url.removeprefix("s3://")
        return {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root)}

    def env(self, tmpdir: Path) -> dict[str, str]:
        """Credentials only (the secret must never be written); the endpoint reaches the job through
        its config's storage_options alone; temporaries go to `tmpdir` (checked empty afterwards)."""
        drop = ("RAY_ADDRESS", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL", "FSSPEC_S3", "AWS_PROFILE")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        tmpdir.mkdir(parents=True, exist_ok=True)
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
                   PYTHONUNBUFFERED="1", TMPDIR=str(tmpdir), PYTHONPATH=str(REPO))  # fmt: skip
        return env

    def shard_cmd(self, clips: str, stage: str, out: str) -> list[str]:
        so = json.dumps({"client_kwargs": {"endpoint_url": self.endpoint}})
        job = ["--clips", clips, "--stage", stage, "--out", out, "--config", str(self.config)]
        opts = ["--runner", "local", "--set", f"storage_options={so}"]
        return [sys.executable, "-m", "jobs.cli", "shard", *job, *opts]


def _corpus(out: Path) -> Path:
    """8 clips of 4 videos with captions (2 of them with unsafe clip paths); returns OUT/manifests."""
    specs = [
        {"clip_id": f"v{i // 2}_{i:07d}_{i + 60:07d}", "video_id": f"v{i // 2}", "width": 192, "height": 160,
         "caption": CAPTIONS[i % 4]}
        for i in range(8)
    ]  # fmt: skip
    manifests = make_clips(out, specs)
    path = manifests / "clips" / "clips.parquet"
    rows = pq.read_table(path).to_pylist()
    for r in rows:
        r["clip_path"] = UNSAFE.get(r["clip_id"], r["clip_path"])
    pq.write_table(pa.Table.from_pylist(rows), path)
    write_captions(manifests, [{"clip_id": s["clip_id"], "caption_type": "short", "caption": s["caption"]}
                               for s in specs[::2]])  # fmt: skip
    return manifests


@pytest.fixture(scope="module")
def bucket(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucket]:
    import fsspec.config

    tmp = tmp_path_factory.mktemp("shard_s3")
    local = tmp / "cur"
    _corpus(local)
    config = write_config(tmp / "shard.yaml", STAGES, captions={"fallback": "source_caption"},
                          split={"eval_fraction": 0.3})  # fmt: skip
    name = f"shard-{uuid.uuid4().hex[:10]}"
    b = Bucket(s3_server, local, f"s3://{name}/out", config, tmp)
    # This process reads the bucket too (to compare): the endpoint here only, not in children.
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
            mp.setenv(k, v)
        mp.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": s3_server}})
        fs = b.fs()
        fs.mkdir(name)
        fs.put(str(local) + "/", b.url.removeprefix("s3://"), recursive=True)
        yield b
        with contextlib.suppress(OSError):
            fs.rm(name, recursive=True)


def _local_shards(b: Bucket, stage: str) -> Path:
    """The reference: the same job on the local copy of the curation output (in this process)."""
    from jobs.shard import shard_stage
    from training.data.stages import load_config

    out = b.tmp / "local_shards"
    if not (out / stage / "__index__" / "train.json").exists():
        shard_stage(str(b.local / "manifests"), stage, str(out), load_config(b.config), runner="local")
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _comparable(files: dict[str, bytes], stage: str) -> dict[str, bytes]:
    """Tars, records and the per-clip table of a stage (the split indexes hold a creation time)."""
    index = r"__index__/(records/.*|samples\.parquet|.*\.arrow)"
    keep = rf"{stage}/((train|eval)/\d+\.tar|{index})"
    return {k: v for k, v in files.items() if re.fullmatch(keep, k)}


def _differ(got: dict[str, bytes], want: dict[str, bytes]) -> list[str]:
    """Names whose bytes differ (or are missing), each with the first 200 bytes of both sides."""
    return [
        f"{k}: {got.get(k, b'<missing>')[:200]!r} != {v[:200]!r}" for k, v in want.items() if got.get(k) != v
    ]


def _index(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    return {k: v for k, v in doc.items() if k not in ("created_at", "package_version")}


def test_shard_reads_a_bucket_and_equals_a_run_on_a_local_copy(bucket: Bucket) -> None:
    b = bucket
    out = b.url.replace("/out", "/shards")
    tmpdir = b.tmp / "tmp-bucket-run"
    done = subprocess.run(b.shard_cmd(f"{b.url}/manifests", "tiny", out), env=b.env(tmpdir), cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["samples_written"] == 6 and summary["skipped_by_reason"] == {"unsafe_path": 2}

    ref = _comparable(_files(_local_shards(b, "tiny")), "tiny")
    got = {k: v for k, v in b.objects(out).items() if k in ref or k.startswith("tiny/")}
    assert ref and not _differ(got, ref), _differ(got, ref)  # byte for byte
    assert [k for k in got if k.endswith(".tar")] == [k for k in ref if k.endswith(".tar")]
    for split in ("train", "eval"):
        local_index = (b.tmp / "local_shards" / "tiny" / "__index__" / f"{split}.json").read_bytes()
        assert _index(got[f"tiny/__index__/{split}.json"]) == _index(local_index)

    # The unsafe rows: recorded with their reason, named on stderr with the manifest, never opened.
    rows = pq.read_table(pa.BufferReader(got["tiny/__index__/samples.parquet"])).to_pylist()
    assert {r["clip_id"]: r["reason"] for r in rows if r["status"] != "written"} == dict.fromkeys(
        UNSAFE, "unsafe_path"
    )
    for cid, rel in UNSAFE.items():
        assert f"{b.url}/manifests/clips: clip {cid}: path {rel!r}" in done.stderr
    # Each clip object went to a temporary of the task that rendered it, removed right after;
    # nothing else of the bucket was copied to local disk, and the secret is nowhere.
    assert not list(tmpdir.iterdir())
    assert SECRET not in done.stdout + done.stderr
    assert not [k for k, v in b.objects(out).items() if SECRET.encode() in v]


def _first_record(b: Bucket, prefix: str) -> Callable[[], bool]:
    """True once a shard is finished (its record is written after its tar)."""
    fs = b.fs()

    def found() -> bool:
        fs.invalidate_cache()
        with contextlib.suppress(FileNotFoundError):
            return any(p.endswith(".json") for p in fs.find(prefix.removeprefix("s3://")))
        return False

    return found


def test_sigkill_while_reading_the_bucket_then_rerun_equals_the_uninterrupted_run(bucket: Bucket) -> None:
    b = bucket
    out = b.url.replace("/out", "/killed")
    cmd = b.shard_cmd(f"{b.url}/manifests", "slow", out)
    log = b.tmp / "killed.log"
    trigger = _first_record(b, f"{out}/slow/__index__/records")
    rc, killed = run_command(cmd, log, trigger, b.env(b.tmp / "tmp-killed"))
    assert killed, f"the run finished (rc {rc}) before it could be killed: {tail(log, 5)}"
    partial = b.objects(out)
    done = [f"slow/{k.split('/records/')[1].removesuffix('.json')}.tar" for k in partial if "/records/" in k]
    assert done and not [k for k in partial if k.endswith("__index__/train.json")]  # not committed
    log = b.tmp / "rerun.log"
    rc, _ = run_command(cmd, log, None, b.env(b.tmp / "tmp-rerun"))
    assert rc == 0, tail(log)
    summary = json.loads(log.read_text()[log.read_text().index("{") :])
    assert summary["shards_reused"] >= len(done) and summary["shards_written"] >= 1

    ref = _comparable(_files(_local_shards(b, "slow")), "slow")
    got = b.objects(out)
    assert ref and not _differ(got, ref), _differ(got, ref)
    assert {k for k in got if k.endswith(".tar")} == {k for k in ref if k.endswith(".tar")}
    # The shards the killed run finished were kept, not rewritten.
    assert all(got[k] == partial[k] for k in done)


def test_encode_reads_stage_shards_from_the_bucket(bucket: Bucket) -> None:
    from jobs.encode import encode_stage
    from tests.test_encode import build_tiny_models
    from training.data.stages import load_config

    b = bucket
    local_shards = _local_shards(b, "enc") / "enc"
    shards = b.url.replace("/out", "/enc-shards") + "/enc"
    b.fs().put(str(local_shards) + "/", shards.removeprefix("s3://"), recursive=True)
    vae, text = build_tiny_models(b.tmp / "models")
    cfg = load_config(b.config)
    enc = {"vae": str(vae), "vae_subfolder": None, "text_encoder": str(text), "text_max_length": 16}
    cfg = cfg.model_copy(update={"encode": cfg.encode.model_copy(update=enc)})
    latents = b.url.replace("/out", "/latents")
    a = encode_stage(shards, latents, cfg, ["train", "eval"], runner="local")
    ref = encode_stage(str(local_shards), str(b.tmp / "latents"), cfg, ["train", "eval"], runner="local")
    assert a["stage"] == "enc" and not a["failed_shards"]
    assert a["shards_written"] == ref["shards_written"] >= 2
    want = _comparable(_files(b.tmp / "latents"), "enc")
    got = b.objects(latents)
    assert [k for k in want if k.endswith(".tar")] and not _differ(got, want), _differ(got, want)
    index = json.loads(got["enc/__index__/train.json"])
    assert index["kind"] == "latents" and index["encode"]["source"] == shards
    # Resume: a second run reuses every derived shard, reading only indexes and records.
    again = encode_stage(shards, latents, cfg, ["train", "eval"], runner="local")
    assert again["shards_written"] == 0 and again["shards_reused"] == a["shards_written"]
