"""Checkpoint folders on an object store (the loopback S3 server): which steps count as complete,
how a run folder finds checkpoints it keeps in a bucket, and the local copy the sampler reads.
The trainer writing and resuming from the bucket is tests/test_train_s3.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.s3_fixtures import S3Env, s3, s3_server
from training.checkpoint import fetch_step, latest_checkpoint, list_checkpoints, resolve_checkpoint

__all__ = ["s3", "s3_server"]  # fixtures, found by name


def _step(fs: object, root: str, step: int, complete: bool = True, tag: str = "a") -> None:
    base = f"{root}/step_{step:06d}".removeprefix("s3://")
    fs.pipe_file(f"{base}/export/videojp.json", json.dumps({"step": step, "tag": tag}).encode())  # type: ignore[attr-defined]
    fs.pipe_file(f"{base}/export/transformer/config.json", b"{}")  # type: ignore[attr-defined]
    fs.pipe_file(f"{base}/dcp/.metadata", b"x")  # type: ignore[attr-defined]
    if complete:
        fs.pipe_file(f"{base}/meta.json", json.dumps({"step": step}).encode())  # type: ignore[attr-defined]


def test_only_committed_steps_count_and_a_run_folder_finds_its_bucket(
    s3: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = s3.fs()
    root = f"{s3.bucket('ckpt')}/run1/checkpoints"
    _step(fs, root, 2)
    _step(fs, root, 4)
    _step(fs, root, 6, complete=False)  # a killed attempt: no meta.json, so no reader counts it
    assert [s for s, _ in list_checkpoints(root)] == [2, 4]
    assert latest_checkpoint(root) == f"{root}/step_000004"
    assert resolve_checkpoint(root) == resolve_checkpoint(root.rsplit("/", 1)[0]) == f"{root}/step_000004"
    assert resolve_checkpoint(f"{root}/step_000002") == f"{root}/step_000002"
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint(f"{root}/step_000006")
    # a local run folder whose config names the bucket folder (logs local, checkpoints remote)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"checkpoint": {"folder": root}}))
    assert resolve_checkpoint(str(run)) == f"{root}/step_000004"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    local = Path(fetch_step(str(run)))
    assert local.is_relative_to(tmp_path / "cache")
    assert json.loads((local / "export" / "videojp.json").read_text())["step"] == 4
    assert (local / "meta.json").exists() and not (local / "dcp").exists()  # the export only
    assert fetch_step(root) == str(local)  # cached
    _step(fs, root, 4, tag="b")  # the same step written again (a rerun): fetched again
    again = Path(fetch_step(root))
    assert again != local and json.loads((again / "export" / "videojp.json").read_text())["tag"] == "b"
    assert fetch_step(str(local)) == str(local)  # a local step folder is itself
    fs.rm(f"{root}/step_000004/export".removeprefix("s3://"), recursive=True)
    with pytest.raises(FileNotFoundError, match="step_000004: no export/"):
        fetch_step(root)
