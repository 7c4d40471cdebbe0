"""The training data stream: a deterministic, seekable function of (seed, rank, world size, position).

webdataset streams have no mid-epoch state, so a resumed run either replays samples or draws a new
stream (the loader's `resume_step`), and losses after a resume differ from an uninterrupted run.
Here the stage shards are read by random access instead:

- A table of every sample's tar members (byte offset and size) is built once from the tar headers
  (no member is decoded) and cached under RUN/stream/, keyed by each shard's sha256 from the index.
- Epoch e is a permutation of all samples seeded by (seed, e); rank r takes every world-th sample
  of it from offset r, cut to the same length on every rank, so no rank runs dry or waits.
- A rank's position is one counter, `consumed`, of samples it has taken: (epoch, offset) follow
  from it. Resuming seeks to the counter by arithmetic; nothing is read to skip.

The same member decoding as the webdataset loader (training.data.loader.decode_sample) turns bytes
into tensors, so pixel shards and latent shards from `vjp encode` both work, through a plain
torch DataLoader whose sampler yields the counters in order (workers keep the order).
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.data.loader import collate, decode_sample, resolve_shards
from training.data.sample_format import ShardIndex

log = logging.getLogger(__name__)

TABLE_VERSION = 1


@dataclass(frozen=True)
class StreamPosition:
    """Where a rank's stream stands: samples taken so far (epoch and offset follow)."""

    consumed: int
    world_size: int
    rank: int
    samples_per_rank_epoch: int

    @property
    def epoch(self) -> int:
        return self.consumed // self.samples_per_rank_epoch

    def to_json(self) -> dict[str, int]:
        return {
            "consumed": self.consumed,
            "epoch": self.epoch,
            "offset": self.consumed % self.samples_per_rank_epoch,
            "world_size": self.world_size,
            "rank": self.rank,
            "samples_per_rank_epoch": self.samples_per_rank_epoch,
        }


def _members_of(path: str) -> list[dict[str, Any]]:
    """[{key, members: {field: [offset, size]}}] of a shard, in tar order, from its headers only."""
    import fsspec

    samples: list[dict[str, Any]] = []
    with fsspec.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
        for m in tf:
            if not m.isfile():
                continue
            base = os.path.basename(m.name)
            key, dot, field = base.partition(".")
            if not dot:
                continue
            key = os.path.join(os.path.dirname(m.name), key)  # webdataset's key rule: prefix up to 1st dot
            if not samples or samples[-1]["key"] != key:
                samples.append({"key": key, "members": {}})
            samples[-1]["members"][field] = [m.offset_data, m.size]
    return samples


class SampleTable:
    """Every sample of a split: (shard url, key, member offsets), in index order."""

    def __init__(self, urls: list[str], shards: list[list[dict[str, Any]]]) -> None:
        self.urls = urls
        self.refs: list[tuple[int, int]] = [(s, i) for s, rows in enumerate(shards) for i in range(len(rows))]
        self.shards = shards

    def __len__(self) -> int:
        return len(self.refs)

    @classmethod
    def build(cls, source: str, split: str, cache_dir: str | None = None) -> SampleTable:
        urls, index = resolve_shards(source, split)
        if not urls:
            why = ""
            if index is not None:  # an index with no shards: a small corpus can be all held out
                why = (
                    f" (its {split} index lists none; with few source videos every sample can fall in the "
                    "other split: see shard.split.eval_fraction)"
                )
            raise ValueError(f"{source}: no {split} shards{why}")
        cache = _cache_file(cache_dir, index) if cache_dir and index else None
        if cache and os.path.exists(cache):
            with open(cache, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("version") == TABLE_VERSION and data.get("urls") == urls:
                return cls(urls, data["shards"])
        shards = []
        for url, entry in zip(urls, index.shards if index else [None] * len(urls), strict=True):
            rows = _members_of(url)
            if entry is not None and len(rows) != entry.samples:
                raise ValueError(f"{url}: {len(rows)} samples in the tar, the index says {entry.samples}")
            shards.append(rows)
        if cache:
            from training.data.shard_writer import write_atomic

            write_atomic(
                cache, json.dumps({"version": TABLE_VERSION, "urls": urls, "shards": shards}).encode()
            )
        return cls(urls, shards)


def _cache_file(cache_dir: str, index: ShardIndex) -> str:
    import hashlib

    h = hashlib.sha256("".join(e.sha256 for e in index.shards).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{index.stage}-{index.split}-{h}.json")


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


class RankStream(torch.utils.data.Dataset):
    """Map-style view of one rank's infinite stream: item c = the c-th sample this rank takes."""

    def __init__(
        self, table: SampleTable, seed: int, rank: int, world_size: int, decode_threads: int = 1
    ) -> None:
        if len(table) < world_size:
            raise ValueError(f"{len(table)} samples for {world_size} ranks: every rank needs at least one")
        self.table, self.seed, self.rank, self.world = table, seed, rank, world_size
        self.per_rank = len(table) // world_size  # the remainder of an epoch is left out on every rank
        self.decode_threads = decode_threads
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)
        self._files: dict[int, Any] = {}

    def __len__(self) -> int:  # one epoch; the sampler goes on past it
        return self.per_rank

    def position(self, consumed: int) -> StreamPosition:
        return StreamPosition(consumed, self.world, self.rank, self.per_rank)

    def global_index(self, c: int) -> int:
        epoch, offset = divmod(c, self.per_rank)
        if epoch != self._perm_epoch:
            self._perm, self._perm_epoch = epoch_permutation(len(self.table), self.seed, epoch), epoch
        return int(self._perm[self.rank + offset * self.world])

    def raw(self, c: int) -> dict[str, Any]:
        shard, i = self.table.refs[self.global_index(c)]
        row = self.table.shards[shard][i]
        f = self._open(shard)
        sample: dict[str, Any] = {"__key__": row["key"], "__url__": self.table.urls[shard]}
        for field, (offset, size) in row["members"].items():
            f.seek(offset)
            sample[field] = f.read(size)
        return sample

    def _open(self, shard: int) -> Any:
        f = self._files.get(shard)
        if f is None:
            import fsspec

            if len(self._files) >= 8:  # few shards open per worker; the order touches them at random
                self._files.pop(next(iter(self._files))).close()
            f = self._files[shard] = fsspec.open(self.table.urls[shard], "rb").open()
        return f

    def __getitem__(self, c: int) -> dict[str, Any]:
        # A sample that fails to decode is replaced by the next one in the same rank's order, so
        # the stream stays a function of the position; the error names the shard and key.
        for k in range(16):
            raw = self.raw(c + k)
            try:
                return decode_sample(raw, self.decode_threads)
            except Exception as e:
                log.warning(
                    "%s: sample %s skipped: %s: %s", raw["__url__"], raw["__key__"], type(e).__name__, e
                )
        raise RuntimeError(f"16 consecutive undecodable samples from position {c} of rank {self.rank}")

    def __getstate__(self) -> dict[str, Any]:  # open files stay in the process that opened them
        state = dict(self.__dict__)
        state["_files"] = {}
        return state


class CounterSampler(torch.utils.data.Sampler[int]):
    """Yields start, start+1, ... forever: the DataLoader keeps this order across its workers."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        c = self.start
        while True:
            yield c
            c += 1


def make_loader(
    stream: RankStream, start: int, batch_size: int, num_workers: int, prefetch_factor: int, pin_memory: bool
) -> torch.utils.data.DataLoader:
    kwargs: dict[str, Any] = {}
    if num_workers:
        # forkserver: workers never inherit CUDA or a process group from the trainer.
        kwargs.update(
            prefetch_factor=prefetch_factor, persistent_workers=False, multiprocessing_context="forkserver"
        )
    return torch.utils.data.DataLoader(
        stream,
        batch_size=batch_size,
        sampler=CounterSampler(start),
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory and torch.cuda.is_available(),
        **kwargs,
    )


def resume_consumed(saved: dict[str, Any], stream: RankStream, allow_reshard: bool) -> int:
    """The counter to resume from, given a rank's saved position; a changed world size is refused
    unless allowed (then every rank restarts at the same share of the samples seen so far)."""
    if saved["world_size"] == stream.world and saved["samples_per_rank_epoch"] == stream.per_rank:
        return int(saved["consumed"])
    if not allow_reshard:
        raise ValueError(
            f"checkpoint was written by {saved['world_size']} ranks with {saved['samples_per_rank_epoch']} "
            f"samples per rank per epoch; this run has {stream.world} ranks and {stream.per_rank}: the data "
            "stream cannot continue exactly (set parallel.allow_reshard=true to continue approximately)"
        )
    seen = int(saved["consumed"]) * int(saved["world_size"])
    return seen // stream.world
