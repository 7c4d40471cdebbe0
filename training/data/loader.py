"""Stream stage shards into training with `webdataset`: split by node and worker, shuffle, decode.

    dm = ShardDataModule("SHARDS/stage1", split="train", batch_size=4, num_workers=4)
    for batch in dm.loader():          # infinite (resampled) by default: step-based training
        batch["video"]                 # float [B, T, C, H, W] in [-1, 1]
        batch["caption"]               # list[str]

Two modes, chosen for the known webdataset pain points:
- resampled (training, default): every (rank, worker) draws shards with replacement from its own
  seeded stream, so no rank can run out of shards and hang DDP, and a resumed run passes
  `resume_step` to draw a fresh stream instead of replaying the first samples (webdataset has no
  mid-epoch checkpoint; its maintainer recommends exactly this).
- finite (evaluation, `resampled=False`): shards are split by node then by worker; fewer shards
  than ranks is an error up front instead of a hang, and `with_epoch` gives every rank the same
  number of batches.
The shuffle buffer holds encoded samples (~100 KB each), and decoding happens after it, so a big
buffer costs little memory.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.data.pair_format import (
    CHOSEN_LATENTS,
    CHOSEN_MP4,
    REJECTED_LATENTS,
    REJECTED_MP4,
    PairIndex,
)
from training.data.sample_format import (
    JSON,
    LATENTS,
    MP4,
    TEXT_EMB,
    TXT,
    ShardIndex,
    decode_mp4,
    index_path,
    load_npy,
    read_index,
)

log = logging.getLogger(__name__)


def _seed(*parts: int) -> int:
    """Deterministic 31-bit seed from ints (webdataset's make_seed; hash() of ints is unsalted)."""
    s = 0
    for p in parts:
        s = (s * 31 + int(p)) & 0x7FFFFFFF
    return s


def read_any_index(path: str, storage_options: dict[str, Any] | None = None) -> ShardIndex | PairIndex:
    """A stage split's ShardIndex, or the PairIndex of Video-DPO pair shards (`vjp pairs`): both
    name their shards and sample table the same way, so one stream reads either."""
    from pydantic import ValidationError

    from training.data.pair_format import PAIR_INDEX_SCHEMA
    from training.data.store import read_bytes

    data = read_bytes(path, storage_options)
    if f'"{PAIR_INDEX_SCHEMA}"'.encode() not in data:
        return read_index(path, storage_options)
    try:
        return PairIndex.model_validate_json(data)
    except ValidationError as e:
        raise ValueError(f"{path}: not a valid pair index ({e.error_count()} errors: {e})") from e


def resolve_stage(
    source: str | os.PathLike[str], split: str = "train", storage_options: dict[str, Any] | None = None
) -> tuple[list[str], ShardIndex | PairIndex | None, str | None]:
    """(shard URLs, index, stage folder) from a stage folder, a split folder or an index file,
    local or an fsspec URL (s3://, gs://, hf://); other strings (brace patterns, `pipe:`) are
    expanded into URLs without an index."""
    from training.data import store

    src = os.fspath(source)
    s = src.rstrip("/")

    def up(path: str, n: int) -> str:
        return path.rsplit("/", n)[0] if store.is_url(path) else str(Path(path).parents[n - 1])

    if s.endswith(".json"):
        index_file, stage_dir = s, up(s, 2)
        index: ShardIndex | PairIndex | None = read_any_index(index_file, storage_options)
    else:
        parent = up(s, 1)
        is_split = s.rsplit("/", 1)[-1] == split and store.exists(index_path(parent, split), storage_options)
        stage_dir = parent if is_split else s
        index_file = index_path(stage_dir, split)
        index = (
            read_any_index(index_file, storage_options) if store.exists(index_file, storage_options) else None
        )
    if index is not None:
        if index.split != split:
            raise ValueError(f"{source}: the index is of split {index.split!r}, not {split!r}")
        return [store.join(stage_dir, split, e.name) for e in index.shards], index, stage_dir
    from webdataset.shardlists import expand_urls

    return list(expand_urls(src)), None, None  # brace patterns: one URL per shard


def resolve_shards(
    source: str | os.PathLike[str] | Sequence[str],
    split: str = "train",
    storage_options: dict[str, Any] | None = None,
) -> tuple[list[str], ShardIndex | None]:
    """Shard URLs and the index from a stage folder, a split folder, an index file, or URLs.

    Shards are read through their index (<stage>/__index__/<split>.json), so a stale file in the
    folder is never picked up; that holds on object storage too (s3://bucket/prefix/stage1).
    Brace patterns and `pipe:` URLs are expanded and passed on as they are, without an index.
    """
    if not isinstance(source, (str, os.PathLike)):
        return [str(u) for u in source], None
    urls, index, _ = resolve_stage(source, split, storage_options)
    return urls, index


# ---- per-sample decoding ---------------------------------------------------------------------
def video_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, C, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def decode_sample(sample: dict[str, Any], decode_threads: int = 1) -> dict[str, Any]:
    """Raw webdataset sample (bytes per member) -> tensors + caption; checks shape against the json."""
    meta = json.loads(sample[JSON])
    out: dict[str, Any] = {
        "key": sample["__key__"],
        "caption": sample[TXT].decode("utf-8"),
        "meta": meta,
    }
    want = (meta["frames"], meta["height"], meta["width"], 3)
    # A preference pair (training/data/pair_format.py) is a sample whose video or latents are the
    # chosen side, with the rejected side beside them: everything that reads a stage sample reads
    # the chosen side of a pair the same way.
    for member, name in ((MP4, "video"), (CHOSEN_MP4, "video"), (REJECTED_MP4, "rejected_video")):
        if member in sample:
            frames = decode_mp4(sample[member], decode_threads)
            if frames.shape != want:
                raise ValueError(f"{out['key']}: {member} is {frames.shape}, json says {want}")
            out[name] = video_tensor(frames)
    latents = ((LATENTS, "latents"), (CHOSEN_LATENTS, "latents"), (REJECTED_LATENTS, "rejected_latents"))
    for member, name in latents:
        if member in sample:
            out[name] = torch.from_numpy(load_npy(sample[member]).astype(np.float32))
    if TEXT_EMB in sample:
        out["text_emb"] = torch.from_numpy(load_npy(sample[TEXT_EMB]).astype(np.float32))
    return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack videos/latents; pad text embeddings to the longest with a mask (stored unpadded)."""
    batch: dict[str, Any] = {k: [s[k] for s in samples] for k in ("key", "caption", "meta")}
    for k in ("video", "rejected_video", "latents", "rejected_latents"):
        if k in samples[0]:
            batch[k] = torch.stack([s[k] for s in samples])
    if "latents" in samples[0]:
        embs = [s["text_emb"] for s in samples]
        n = max(e.shape[0] for e in embs)
        padded = torch.zeros(len(embs), n, embs[0].shape[1])
        mask = torch.zeros(len(embs), n, dtype=torch.bool)
        for i, e in enumerate(embs):
            padded[i, : e.shape[0]] = e
            mask[i, : e.shape[0]] = True
        batch["text_emb"], batch["text_mask"] = padded, mask
    return batch


# ---- pipeline stages -------------------------------------------------------------------------
def _worker_info(rank: int | None, world_size: int | None) -> tuple[int, int, int, int]:
    from webdataset.utils import pytorch_worker_info

    r, w, worker, num_workers = pytorch_worker_info()
    return (r if rank is None else rank), (w if world_size is None else world_size), worker, num_workers


class _Shuffle:
    """A shuffle buffer seeded inside each worker from (seed, rank, worker, epoch).

    Reproducible, distinct per worker, and picklable (a class, not a closure) for spawned workers.
    """

    def __init__(self, bufsize: int, seed: int, rank: int | None, world: int | None) -> None:
        self.bufsize, self.seed, self.rank, self.world = bufsize, seed, rank, world
        self.epoch = -1

    def __call__(self, src: Iterator[Any]) -> Iterator[Any]:
        self.epoch += 1
        r, _, worker, _ = _worker_info(self.rank, self.world)
        rng = random.Random(_seed(self.seed, r, worker, self.epoch))
        buf: list[Any] = []
        for sample in src:
            buf.append(sample)
            if len(buf) >= self.bufsize:
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf


class _SplitByNode:
    """Every world_size-th shard, from the rank's offset (explicit rank/world override the env)."""

    def __init__(self, rank: int | None, world: int | None) -> None:
        self.rank, self.world = rank, world

    def __call__(self, src: Iterator[Any]) -> Iterator[Any]:
        r, w, _, _ = _worker_info(self.rank, self.world)
        for i, item in enumerate(src):
            if i % w == r:
                yield item


class _WorkerSeed:
    """Seed of a resampled shard stream: distinct per (rank, worker), new after a resume."""

    def __init__(self, rank: int | None, world: int | None, resume_step: int) -> None:
        self.rank, self.world, self.resume_step = rank, world, resume_step

    def __call__(self) -> int:
        r, _, worker, _ = _worker_info(self.rank, self.world)
        return _seed(r, worker, self.resume_step)


class ShardDataModule:
    """The training data of one stage and split, as a webdataset pipeline and a DataLoader."""

    def __init__(
        self,
        source: str | os.PathLike[str] | Sequence[str],
        split: str = "train",
        batch_size: int = 1,
        num_workers: int = 2,
        resampled: bool = True,
        shuffle_buffer: int = 256,
        seed: int = 0,
        resume_step: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        epoch_batches: int | None = None,
        decode_threads: int = 1,
        drop_last: bool = True,
        on_error: str = "warn",
        pin_memory: bool = False,
    ) -> None:
        import webdataset as wds

        self.urls, self.index = resolve_shards(source, split)
        if not self.urls:
            raise ValueError(f"no shards for split {split!r} in {source}")
        self.split, self.batch_size, self.num_workers = split, batch_size, num_workers
        self.resampled, self.shuffle_buffer, self.seed = resampled, shuffle_buffer, seed
        self.resume_step, self.rank, self.world_size = resume_step, rank, world_size
        self.decode_threads, self.drop_last, self.pin_memory = decode_threads, drop_last, pin_memory
        self.handler = {
            "warn": wds.warn_and_continue,
            "raise": wds.reraise_exception,
            "skip": wds.ignore_and_continue,
        }[on_error]
        r, w, _, _ = _worker_info(rank, world_size)
        self._rank, self._world = r, w
        if not resampled and len(self.urls) < w:
            # webdataset#188: a rank with no shard yields nothing and DDP hangs at the first collective.
            raise ValueError(
                f"{len(self.urls)} shards for {w} ranks: a rank would get no shard and hang DDP; "
                "use resampled=True or write smaller shards (max_shard_samples)"
            )
        if not resampled and len(self.urls) < w * max(1, num_workers):
            log.warning(
                "%d shards for %d ranks x %d workers: some workers idle", len(self.urls), w, num_workers
            )
        self.epoch_batches = epoch_batches if epoch_batches is not None else self._default_epoch_batches()

    def _default_epoch_batches(self) -> int | None:
        """Finite mode: the same number of batches on every rank, so no rank waits for another.

        Without shard shuffling the split is known exactly and the shortest rank sets the count
        (nothing repeats); with it, the average (a short rank wraps around a few samples).
        """
        if self.resampled or self.index is None:
            return None
        counts = [0] * self._world
        for i, e in enumerate(self.index.shards):
            counts[i % self._world] += e.samples
        per_rank = min(counts) if not self.shuffle_buffer else sum(counts) // self._world
        n = per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)
        return max(1, n)

    @property
    def samples(self) -> int | None:
        return self.index.samples if self.index else None

    def dataset(self) -> Any:
        """The webdataset pipeline (an IterableDataset of batches)."""
        import webdataset as wds

        stages: list[Any] = []
        if self.resampled:
            stages.append(
                wds.ResampledShards(
                    self.urls,
                    seed=self.seed,
                    worker_seed=_WorkerSeed(self.rank, self.world_size, self.resume_step),
                    deterministic=True,
                )
            )
        else:
            stages += [
                wds.SimpleShardList(self.urls),
                # Same shard order on every rank (seed + epoch), then disjoint slices per rank/worker.
                wds.detshuffle(len(self.urls), len(self.urls), seed=self.seed)
                if self.shuffle_buffer
                else None,
                _SplitByNode(self.rank, self.world_size),
                wds.split_by_worker,
            ]
        stages += [
            wds.tarfile_to_samples(handler=self.handler),
            _Shuffle(self.shuffle_buffer, _seed(self.seed, self.resume_step), self.rank, self.world_size)
            if self.shuffle_buffer
            else None,
            wds.map(partial(decode_sample, decode_threads=self.decode_threads), handler=self.handler),
            # Resampled: batch in the workers (cheapest). Finite: batch in the main process (loader()),
            # so a rank's batch count does not depend on how its samples fall across workers.
            wds.batched(self.batch_size, collation_fn=collate, partial=not self.drop_last)
            if self.resampled
            else None,
        ]
        return wds.DataPipeline(*[s for s in stages if s is not None])

    def loader(self) -> Any:
        """A WebLoader over `dataset()`: batches of `batch_size`, `epoch_batches` per epoch if set."""
        import webdataset as wds

        loader = wds.WebLoader(
            self.dataset(),
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
        if not self.resampled:
            loader = loader.batched(self.batch_size, collation_fn=collate, partial=not self.drop_last)
        if self.epoch_batches:
            loader = loader.with_epoch(self.epoch_batches)
        return loader
