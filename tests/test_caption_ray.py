"""The Ray Data path (CPU frame-prep tasks -> caption actor pool writing parts), once, on CPU with
the transformers backend and num_gpus=0; and the fail-fast check for GPUs the cluster lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioning.manifest import read_captions
from jobs import caption as caption_job
from tests.caption_fixtures import make_dataset, tiny_cli_args, tiny_model_dir

ray = pytest.importorskip("ray")


def test_ray_data_pipeline_with_transformers_actor(tmp_path: Path, local_ray) -> None:
    out = make_dataset(tmp_path / "out", n_kept=2, corrupt=True, rejected=True)
    argv = [
        "--clips", str(out / "manifests"), "--backend", "transformers", "--executor", "ray",
        *tiny_cli_args(tiny_model_dir()), "--set", "caption_types.dense.enabled=false",
        "--set", "transformers.batch_size=2", "--set", "run.frame_batch_size=2",
    ]  # fmt: skip
    assert caption_job.main(argv) == 1  # the corrupt clip -> error row; the job itself completes
    rows = read_captions(out / "manifests" / "captions").to_pylist()
    status = {r["clip_id"]: r["status"] for r in rows}
    assert len(rows) == 3 and sorted(status.values()) == ["error", "rejected", "rejected"]
    assert all(r["tries"] == 3 for r in rows if r["status"] == "rejected")
    # One part per actor batch, written by the actors themselves, none left half-written.
    parts = list((out / "manifests" / "captions").glob("*.parquet"))
    assert 1 <= len(parts) <= 3 and not list((out / "manifests" / "captions").glob(".*.tmp-*"))


def test_vllm_pool_fails_fast_without_gpus(tmp_path: Path, local_ray) -> None:
    out = make_dataset(tmp_path / "out", n_kept=1, rejected=False)
    argv = ["--clips", str(out / "manifests"), "--backend", "vllm", *tiny_cli_args(tiny_model_dir())]
    assert caption_job.main(argv) == 2  # 1 GPU per actor asked, 0 in this Ray cluster
