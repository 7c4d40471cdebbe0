"""The training data module: webdataset pipeline over stage shards, node/worker split, resampling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_shards import cli, make_clips, write_config
from training.data.loader import ShardDataModule, resolve_shards

N_CLIPS = 6


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 samples of 48 frames at 64x64 in 3 train shards (2 samples each)."""
    tmp = tmp_path_factory.mktemp("loader")
    specs = [
        {
            "clip_id": f"vid{i // 2}_{i:07d}_{i + 60:07d}",
            "video_id": f"vid{i // 2}",
            "caption": f"caption {i}",
        }
        for i in range(N_CLIPS)
    ]
    manifests = make_clips(tmp / "cur", specs)
    stages = {
        "tiny": {"width": 64, "height": 64, "frames": 48, "target_shard_bytes": None, "max_shard_samples": 2}
    }
    config = write_config(
        tmp / "c.yaml", stages, captions={"fallback": "source_caption"}, split={"eval_fraction": 0.0}
    )
    argv = [
        "--clips",
        str(manifests),
        "--stage",
        "tiny",
        "--out",
        str(tmp / "shards"),
        "--config",
        str(config),
    ]
    assert cli([*argv, "--runner", "local"]) == 0
    return tmp / "shards" / "tiny"


def _keys(dm: ShardDataModule, n_batches: int | None = None) -> list[str]:
    keys: list[str] = []
    for i, batch in enumerate(dm.loader()):
        if n_batches is not None and i >= n_batches:
            break
        keys += batch["key"]
    return keys


def test_batches_are_float_videos_in_range_with_captions(shards: Path) -> None:
    dm = ShardDataModule(shards, batch_size=2, num_workers=0, shuffle_buffer=4, on_error="raise")
    assert len(dm.urls) == 3 and dm.samples == N_CLIPS and dm.epoch_batches is None
    it = iter(dm.loader())
    batches = [next(it) for _ in range(5)]  # more than one pass: resampled mode is infinite
    for b in batches:
        v = b["video"]
        assert v.shape == (2, 48, 3, 64, 64) and v.dtype == torch.float32
        assert -1.0 <= float(v.min()) < 0 < float(v.max()) <= 1.0
        assert all(c.startswith("caption ") for c in b["caption"]) and len(b["meta"]) == 2
        assert all(m["caption"] == c for m, c in zip(b["meta"], b["caption"], strict=True))


def test_finite_mode_splits_shards_by_node_and_worker_without_overlap(shards: Path) -> None:
    seen: list[str] = []
    for rank in (0, 1, 2):
        dm = ShardDataModule(
            shards, batch_size=1, num_workers=2, resampled=False, rank=rank, world_size=3, on_error="raise"
        )
        assert dm.epoch_batches == 2  # 6 samples / 3 ranks
        keys = _keys(dm)
        assert len(keys) == 2
        seen += keys
    assert sorted(seen) == sorted(set(seen)) and len(seen) == N_CLIPS


def test_rank_without_a_shard_fails_fast_unless_resampled(shards: Path) -> None:
    with pytest.raises(ValueError, match="hang DDP"):
        ShardDataModule(shards, resampled=False, rank=0, world_size=4)
    dm = ShardDataModule(shards, batch_size=1, num_workers=0, rank=3, world_size=4, on_error="raise")
    assert len(_keys(dm, 3)) == 3  # every rank draws its own stream


def test_resampled_streams_are_seeded_per_rank_and_resume_step(shards: Path) -> None:
    def stream(**kw: Any) -> list[str]:
        return _keys(ShardDataModule(shards, batch_size=1, num_workers=0, shuffle_buffer=3, **kw), 8)

    a = stream(rank=0, world_size=2)
    assert a == stream(rank=0, world_size=2)  # reproducible
    assert a != stream(rank=1, world_size=2)  # ranks differ
    assert a != stream(rank=0, world_size=2, resume_step=1000)  # a resumed run does not replay


def test_resolve_shards_reads_the_index_not_the_folder(shards: Path) -> None:
    urls, index = resolve_shards(shards, "train")
    assert index is not None and [Path(u).name for u in urls] == ["000000.tar", "000001.tar", "000002.tar"]
    assert resolve_shards(shards / "train", "train")[0] == urls
    assert resolve_shards(shards / "__index__" / "train.json", "train")[0] == urls
    pattern = str(shards / "train" / "{000000..000002}.tar")
    assert resolve_shards(pattern, "train") == (urls, None)  # a brace pattern, expanded
    dm = ShardDataModule(pattern, batch_size=3, num_workers=0, resampled=False, on_error="raise")
    assert sorted(_keys(dm)) == sorted(
        _keys(ShardDataModule(shards, batch_size=3, num_workers=0, resampled=False))
    )
    with pytest.raises(ValueError):
        ShardDataModule(shards, split="eval")  # no eval shards in this stage
