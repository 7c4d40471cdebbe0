"""The data side end to end: curate -> caption -> stage shards -> loader, through each step's own
entrypoint, so the contracts between the steps (clip manifest, caption manifest, sample format)
are checked together rather than against each step's own fixtures."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import av
import pytest

from captioning.backends.base import GenRequest, GenResult
from captioning.config import CaptionConfig
from captioning.manifest import pending_work, read_captions, read_kept_clips, resolve_layout
from captioning.runner import RunContext, run_local
from curation.config import CurateConfig
from jobs.cli import main
from jobs.curate import curate

CAPTIONS = {
    "short": "{n}番目の場面では、模様のある背景がゆっくりと横に流れていく。",
    "dense": (
        "{n}番目の場面では、色とりどりの円や四角形が散らばった背景がゆっくりと横に流れていく。"
        "カメラは一定の速さでパンしている。人物は登場しない、シンプルなCGの映像である。"
    ),
}


class NumberedJapanese:
    """A backend that answers every clip with a valid, clip-specific Japanese caption."""

    name = "fake"
    model_id = "fake/numbered"
    model_revision = "r1"

    def __init__(self) -> None:
        self.order: dict[str, int] = {}

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out = []
        for r in requests:
            clip, ctype = r.key.split("/")
            n = self.order.setdefault(clip, len(self.order) + 1)
            text = CAPTIONS[ctype].format(n=n)
            out.append(GenResult(text=text, finish_reason="stop", tokens_in=50, tokens_out=len(text)))
        return out

    def close(self) -> None:
        pass


@pytest.mark.slow
def test_curate_caption_shard_load(corpus_dir: Path, tmp_path: Path) -> None:
    out, shards = tmp_path / "out", tmp_path / "shards"
    summary = curate(f"files:{corpus_dir}/*.mp4", str(out), CurateConfig(), runner="local")
    assert summary["clips_kept"] >= 3

    root, clips_dir, cap_dir = resolve_layout(out / "manifests")
    cfg = CaptionConfig()
    clips = read_kept_clips(clips_dir)
    todo = pending_work(clips, read_captions(cap_dir), cfg.enabled_types(), retry_rejected=False)
    assert len(todo) == summary["clips_kept"]
    ctx = RunContext("fake", "fake/numbered", "r1", "run1", "0123456789abcdef", "0.1.0")
    stats = run_local(todo, NumberedJapanese(), cfg, ctx, root, cap_dir, batch_size=4, progress=False)
    assert stats.status == {"ok": 2 * len(todo)}, stats.status
    dense = {
        r["clip_id"]: r["caption"]
        for r in read_captions(cap_dir).to_pylist()
        if r["caption_type"] == "dense" and r["status"] == "ok"
    }

    assert (
        main(
            [
                "shard",
                "--clips",
                str(out / "manifests"),
                "--stage",
                "stage1",
                "--out",
                str(shards),
                "--runner",
                "local",
            ]
        )
        == 0
    )
    tars = sorted((shards / "stage1").glob("*/*.tar"))
    assert tars
    seen = 0
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        keys = {name.split(".", 1)[0] for name in members}
        for key in keys:
            meta = json.loads(members[f"{key}.json"])
            assert members[f"{key}.txt"].decode() == dense[meta["clip_id"]]
            assert meta["caption_field"] == "captions.dense"
            with _open_bytes(members[f"{key}.mp4"]) as c:
                frames = [f for f in c.decode(video=0)]
            assert len(frames) == 48 and (frames[0].width, frames[0].height) == (256, 256)
            seen += 1
    # Every kept clip is in the shards but the letterboxed one: cropped to 640x270 content, a
    # square center crop would drop 58% of its width, which the stage preset refuses.
    import pyarrow.parquet as pq

    left_out = {
        r["clip_id"]: r["reason"]
        for r in pq.read_table(shards / "stage1" / "__index__" / "samples.parquet").to_pylist()
        if r.get("reason")
    }
    letterboxed = {
        c["clip_id"]
        for c in pq.read_table(out / "manifests" / "clips").to_pylist()
        if c["status"] == "kept" and c["crop_top"] > 0.1
    }
    assert left_out == dict.fromkeys(letterboxed, "aspect_mismatch") and len(letterboxed) == 1
    assert seen == len(dense) - len(left_out)

    from training.data.loader import ShardDataModule

    dm = ShardDataModule(str(shards / "stage1"), split="train", batch_size=1, num_workers=0, resampled=False)
    batch = next(iter(dm.loader()))
    assert tuple(batch["video"].shape[1:]) == (48, 3, 256, 256)
    assert batch["caption"][0] in dense.values()


def _open_bytes(data: bytes) -> av.container.InputContainer:
    import io

    return av.open(io.BytesIO(data))
