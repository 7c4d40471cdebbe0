"""`vjp run jobs/configs/demo.yaml` end to end on local Ray (the README's main command), and the
same run killed with SIGKILL in three steps and rerun: its final manifests and shards must equal
the uninterrupted run's."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.run_fixtures import DemoRuns, demo_runs, tail

__all__ = ["demo_runs"]  # the session fixture, imported so pytest finds it here

pytestmark = pytest.mark.slow

# Per-run bookkeeping, not content: when a row was written, by which run, how long it took.
VOLATILE = {"created_at", "run_id", "prep_s", "gen_s"}
MANIFESTS = {
    "videos": ("video_id",),
    "scores": ("clip_id",),
    "clips": ("clip_id",),
    "thumbs": ("clip_id",),
    "captions": ("clip_id", "caption_type"),
}


def manifest_rows(out: Path | str, name: str) -> list[dict[str, Any]]:
    """The committed rows of OUT/manifests/NAME (OUT a folder or a bucket URL), through the project's
    readers: a folder mid-compaction holds parts a plain dataset would read twice."""
    from curation.atomic import join
    from curation.manifest import read_rows

    folder = join(str(out), "manifests", name)
    if name == "captions":
        from captioning.manifest import read_captions

        rows = read_captions(folder, latest=True).to_pylist()
    else:
        rows = read_rows(folder)
    keys = MANIFESTS[name]
    clean = [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
    return sorted(clean, key=lambda r: tuple(str(r[k]) for k in keys))


def tar_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.glob("*/*/*.tar"))
    }


def test_demo_runs_every_step_and_writes_loadable_shards(demo_runs: DemoRuns) -> None:
    out = demo_runs.reference
    steps = json.loads((out / "run" / "steps.json").read_text())
    assert list(steps) == ["curate", "caption", "shard", "encode", "train"]  # in pipeline order
    assert all(s["ok"] for s in steps.values()), steps
    log = demo_runs.logs[0].read_text()
    # One summary line per step, each with its counts and times.
    for name in steps:
        line = next((ln for ln in log.splitlines() if ln.startswith(f"vjp run: {name}")), None)
        assert line and re.search(r"[\d.]+ s wall, [\d.]+ s CPU$", line), (name, tail(demo_runs.logs[0]))
    assert "5 videos in" in log and "rejected (" in log

    # Captions from the locally trained tiny Qwen2-VL: Japanese, and QA passed some of them.
    caps = manifest_rows(out, "captions")
    ok = [c for c in caps if c["status"] == "ok"]
    assert ok and all(c["japanese_ratio"] >= 0.7 and c["backend"] == "transformers" for c in ok)
    assert caps[0]["model_id"].endswith("models/captioner")

    # Stage shards the loader reads: pixels and latents.
    from training.data.loader import ShardDataModule

    kept_captions = {c["caption"] for c in ok}
    dm = ShardDataModule(
        str(out / "shards" / "demo"), split="train", batch_size=1, num_workers=0, resampled=False
    )
    batches = list(dm.loader())
    assert len(batches) == steps["shard"]["stages"]["demo"]["train"]["samples"] >= 2
    assert tuple(batches[0]["video"].shape) == (1, 24, 3, 128, 128)
    assert batches[0]["caption"][0] in kept_captions
    lat = ShardDataModule(
        str(out / "latents" / "demo"), split="train", batch_size=1, num_workers=0, resampled=False
    )
    batch = next(iter(lat.loader()))
    assert batch["latents"].shape[1] == 4 and batch["text_emb"].shape[-1] == 64  # tiny VAE, tiny LLM

    # A few training steps, a checkpoint, samples from it.
    summary = json.loads((out / "train" / "summary.json").read_text())
    metrics = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 6 and [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(m["loss"] > 0 for m in metrics)
    samples = json.loads(next((out / "train" / "samples").glob("step_*/prompts.json")).read_text())
    assert len(samples["samples"]) == 2 and samples["samples"][0]["prompt"] in kept_captions
    page = (out / "report.html").read_text(encoding="utf-8")
    for section in ("Summary", "Filter funnel", "Contact sheet", "Training loss", "Generated samples"):
        assert f">{section}<" in page


def test_sigkill_and_rerun_gives_the_uninterrupted_result(demo_runs: DemoRuns) -> None:
    ref, res = demo_runs.reference, demo_runs.resumed
    assert len(demo_runs.kills) >= 2, f"the runs finished before most kill points: {demo_runs.kills}"
    for name in MANIFESTS:
        a, b = manifest_rows(ref, name), manifest_rows(res, name)
        assert len(a) == len(b) > 0, name
        diff = sorted({k for x, y in zip(a, b, strict=True) for k in x if x[k] != y.get(k)})
        assert a == b, f"manifests/{name} differ in {diff}"
    for folder in ("shards", "latents"):
        a, b = tar_hashes(ref / folder), tar_hashes(res / folder)
        assert a and a == b, folder
    import pyarrow.parquet as pq

    samples = "shards/demo/__index__/samples.parquet"
    assert pq.read_table(ref / samples).to_pylist() == pq.read_table(res / samples).to_pylist()
    clips_a = {p.name: p.read_bytes() for p in (ref / "clips").glob("*.mp4")}
    assert clips_a == {p.name: p.read_bytes() for p in (res / "clips").glob("*.mp4")}
    # Training resumed from its checkpoint and finished its steps.
    summary = json.loads((res / "train" / "summary.json").read_text())
    assert summary["steps"] == 6 and (res / "train" / "checkpoints" / "step_000006").is_dir()
    steps = json.loads((res / "run" / "steps.json").read_text())
    assert all(s["ok"] for s in steps.values())
