"""`vjp run jobs/configs/demo.yaml` with run.out in a bucket of a real S3-protocol server on loopback
(moto, tests/s3_fixtures): every step writes there, the trainer streams its shards from there, the
report is written there, and shard and encode read their inputs from the bucket (no local mirror);
the endpoint reaches every process only through run.storage_options, and
the secret key in the environment reaches no object, file or log. Then the same run killed with
SIGKILL in curation and rerun: its manifests and shards equal the uninterrupted run's."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.run_fixtures import DEMO, run_command, tail
from tests.s3_fixtures import s3_server
from tests.test_run_demo import MANIFESTS, manifest_rows

__all__ = ["s3_server"]  # the session fixture, found by name

pytestmark = pytest.mark.slow

SECRET = "vjp-run-s3-secret-5d1e0b"


@dataclass
class BucketRuns:
    endpoint: str
    local: Path  # run.local of both runs (the tiny models are built once, by the first)
    reference: str  # s3://A/run, uninterrupted, every step
    resumed: str  # s3://B/run, curate -> caption -> shard, killed in curate and rerun
    kills: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, client_kwargs={"endpoint_url": self.endpoint})

    def objects(self, url: str) -> dict[str, bytes]:
        fs, root = self.fs(), url.removeprefix("s3://")
        return {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root)}


def _env() -> dict[str, str]:
    """The child's environment: credentials only (the secret one must never be written), and no
    endpoint: it reaches the steps through run.storage_options alone."""
    drop = ("RAY_ADDRESS", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL", "FSSPEC_S3", "AWS_PROFILE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _cmd(url: str, endpoint: str, local: Path, *extra: str) -> list[str]:
    so = json.dumps({"client_kwargs": {"endpoint_url": endpoint}})
    sets = ["--set", f"run.local={json.dumps(str(local))}", "--set", f"run.storage_options={so}"]
    return [sys.executable, "-m", "jobs.cli", "run", str(DEMO), "--out", url, *sets, *extra]


def _run(cmd: list[str], log: Path, trigger: Callable[[], bool] | None = None) -> tuple[int | None, bool]:
    """Run `vjp run` with the bucket's credentials in the environment; SIGKILL its driver once
    `trigger()` holds. (returncode, killed)."""
    return run_command(cmd, log, trigger, _env())


def _any(runs: BucketRuns, prefix: str) -> Callable[[], bool]:
    fs = runs.fs()

    def found() -> bool:
        fs.invalidate_cache()
        return any(p.endswith(".parquet") for p in fs.find(prefix.removeprefix("s3://")))

    return found


@pytest.fixture(scope="module")
def bucket_runs(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BucketRuns]:
    import fsspec.config

    base = tmp_path_factory.mktemp("runs3")
    names = [f"{p}-{uuid.uuid4().hex[:10]}" for p in ("ref", "res")]
    runs = BucketRuns(s3_server, base / "local", f"s3://{names[0]}/run", f"s3://{names[1]}/run")
    # This process reads the buckets too (the project's manifest readers): the endpoint here only.
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server}.items():  # fmt: skip
            mp.setenv(k, v)
        mp.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": s3_server}})
        fs = runs.fs()
        for n in names:
            fs.mkdir(n)

        log = base / "reference.log"
        runs.logs.append(log)
        # The reference also checkpoints into the bucket (the option a cluster without a shared
        # volume takes; the default, checkpoints in run.local, is test_run_demo's local layout).
        ckpts = f"train.checkpoint.folder={json.dumps(runs.reference + '/train/checkpoints')}"
        rc, _ = _run(_cmd(runs.reference, s3_server, runs.local, "--set", ckpts), log)
        assert rc == 0, tail(log)

        steps = ("--steps", "curate,caption,shard", "--no-report")
        # One kill, early in curation: the rerun then finishes curation and runs caption and shard
        # on what the killed attempt left in the bucket. (Kills in caption and train are tested
        # locally by test_run_demo, and caption's own in a bucket by test_out_s3.)
        log = base / "killed-in-curate.log"
        runs.logs.append(log)
        trigger = _any(runs, f"{runs.resumed}/manifests/videos")
        rc, killed = _run(_cmd(runs.resumed, s3_server, runs.local, *steps), log, trigger)
        if killed:
            runs.kills.append("curate")
        else:
            assert rc == 0, tail(log)  # finished before the trigger (a fast machine)
        log = base / "resumed.log"
        runs.logs.append(log)
        rc, _ = _run(_cmd(runs.resumed, s3_server, runs.local, *steps), log)
        assert rc == 0, tail(log)
        yield runs
        for n in names:
            with contextlib.suppress(OSError):
                fs.rm(n, recursive=True)


def test_demo_in_a_bucket_runs_every_step_and_trains_from_its_shards(
    bucket_runs: BucketRuns, tmp_path: Path
) -> None:
    runs = bucket_runs
    objects = runs.objects(runs.reference)
    steps = json.loads(objects["run/steps.json"])
    assert list(steps) == ["curate", "caption", "shard", "encode", "train"]
    assert all(s["ok"] for s in steps.values()), steps
    log = runs.logs[0].read_text()
    assert f"-> {runs.reference} (local: {runs.local})" in log
    assert re.search(r"vjp run: train: 6 steps on latents/demo, final loss [\d.]+", log), tail(runs.logs[0])
    # The run's own record is in the bucket: the resolved config (with the endpoint, no secret)
    # and every `vjp run:` line.
    config = json.loads(objects["run/config.json"])
    assert config["run"]["storage_options"] == {"client_kwargs": {"endpoint_url": runs.endpoint}}
    assert "train: 6 steps" in objects["run/log.txt"].decode()

    # Every step's outputs are objects: clips, manifests, shards and latents with their indexes.
    assert [n for n in objects if n.startswith("clips/") and n.endswith(".mp4")]
    assert len(manifest_rows(runs.reference, "captions")) == 10
    for kind in ("shards", "latents"):
        index = json.loads(objects[f"{kind}/demo/__index__/train.json"])
        assert index["shards"] and all(f"{kind}/demo/train/{e['name']}" in objects for e in index["shards"])

    # Shard and encode read the bucket where it lies (manifests, clip objects one at a time,
    # stage tars): no local mirror of the bucket, no clip or tar copied into run.local.
    assert not (runs.local / "mirror").exists()
    assert not [p for p in runs.local.rglob("*") if p.suffix in (".mp4", ".tar") and "train" not in p.parts]
    # The trainer streamed the latents from the bucket: no local copy of them exists, and the
    # sample table it fetched from the bucket sits in its run folder's cache.
    assert not list(runs.local.rglob("latents"))
    assert list((runs.local / "train" / "stream").glob("*.arrow"))
    trainer_cfg = json.loads(objects["train/config.json"])
    assert trainer_cfg["data"]["storage_options"] == config["run"]["storage_options"]
    # Results published to the bucket; the checkpoints were written there by the trainer (every
    # rank's DCP files, meta.json last), none in the local run folder, whose stream cache stays local.
    summary = json.loads(objects["train/summary.json"])
    assert (
        summary["steps"] == 6 and summary["checkpoint"] == f"{runs.reference}/train/checkpoints/step_000006"
    )
    assert not (runs.local / "train" / "checkpoints").exists()
    assert "train/checkpoints/step_000006/meta.json" in objects
    assert [n for n in objects if n.startswith("train/checkpoints/step_000006/dcp/")]
    assert [json.loads(x)["step"] for x in objects["train/metrics.jsonl"].decode().splitlines()] == [
        1, 2, 3, 4, 5, 6
    ]  # fmt: skip
    assert "train/checkpoints/step_000006/export/videojp.json" in objects
    assert not [n for n in objects if n.startswith("train/stream/")]
    prompts = json.loads(objects["train/samples/step_000006/prompts.json"])
    assert len(prompts["samples"]) == 2
    assert all(f"train/samples/step_000006/{s['file']}" in objects for s in prompts["samples"])

    # The report, in the bucket, built from the bucket.
    page = objects["report.html"].decode("utf-8")
    for section in ("Summary", "Filter funnel", "Contact sheet", "Training loss", "Generated samples"):
        assert f">{section}<" in page
    assert runs.reference in page and page.count('class="strip"') >= 5  # clip frames from the bucket
    # `vjp report` of the bucket into a local folder: the same sections, the bucket untouched.
    from jobs.cli import main

    assert main(["report", runs.reference, "--report-dir", str(tmp_path), "--max-clips", "2"]) == 0
    copy = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert re.findall(r'<h2 id="(\w+)"', copy) == re.findall(r'<h2 id="(\w+)"', page)
    assert runs.objects(runs.reference)["report.html"] == objects["report.html"]

    # No secret anywhere: objects, local files, logs.
    assert not [n for n, data in objects.items() if SECRET.encode() in data]
    local = [p for p in runs.local.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
    assert not [p for p in local if SECRET.encode() in p.read_bytes()]
    assert not [p for p in runs.logs if SECRET in p.read_text(errors="replace")]


def test_sigkill_and_rerun_in_a_bucket_give_the_uninterrupted_result(bucket_runs: BucketRuns) -> None:
    runs = bucket_runs
    assert runs.kills == ["curate"], f"the run finished before it was killed: {tail(runs.logs[1], 5)}"
    for name in MANIFESTS:
        a, b = manifest_rows(runs.reference, name), manifest_rows(runs.resumed, name)
        assert len(a) == len(b) > 0, name
        diff = sorted({k for x, y in zip(a, b, strict=True) for k in x if x[k] != y.get(k)})
        assert a == b, f"manifests/{name} differ in {diff}"
    a, b = runs.objects(runs.reference), runs.objects(runs.resumed)
    # Clips, shard tars and the per-clip table byte for byte (indexes hold creation times).
    tables = r"shards/demo/__index__/samples\.parquet"
    for pattern in (r"clips/.*\.mp4", r"shards/demo/(train|eval)/.*\.tar", tables):
        sel_a = {k: v for k, v in a.items() if re.fullmatch(pattern, k)}
        assert sel_a and sel_a == {k: v for k, v in b.items() if re.fullmatch(pattern, k)}, pattern
    steps = json.loads(b["run/steps.json"])
    assert list(steps) == ["curate", "caption", "shard"] and all(s["ok"] for s in steps.values())
    assert not [n for n, data in b.items() if SECRET.encode() in data]
