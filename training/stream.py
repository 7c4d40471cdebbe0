"""The training data stream: a deterministic, seekable function of (seed, rank, world size, position).

webdataset streams have no mid-epoch state, so a resumed run either replays samples or draws a new
stream (the loader's `resume_step`), and losses after a resume differ from an uninterrupted run.
Here the stage shards are read by random access instead:

- The split's sample table (training/data/sample_table.py: shard, byte offset, size and key hash
  per sample, written by `vjp shard` / `vjp encode`) is memory-mapped: one copy per node in the
  page cache serves every rank and DataLoader worker; no per-sample Python object exists.
- Epoch e is a permutation of all samples seeded by (seed, e); rank r takes every world-th sample
  of it from offset r, cut to the same length on every rank, so no rank runs dry or waits. Only
  the rank's own slice of it is kept (int32), in the rank's main process: the sampler sends each
  worker the global sample index along with the position.
- A rank's position is one counter, `consumed`, of samples it has taken: (epoch, offset) follow
  from it. Resuming seeks to the counter by arithmetic; nothing is read to skip.
- A sample is ONE read of its byte range (os.pread locally, one ranged GET on s3://, gs://, hf://
  through fsspec): its tar members are contiguous and parsed from those bytes.

The same member decoding as the webdataset loader (training.data.loader.decode_sample) turns bytes
into tensors, so pixel shards, latent shards from `vjp encode` and Video-DPO pair shards from
`vjp pairs` (their index is a PairIndex, read by loader.resolve_stage) all work, through a plain
torch DataLoader whose sampler yields the counters in order (workers keep the order).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.data import store
from training.data.loader import collate, decode_sample, resolve_stage
from training.data.pair_format import PairIndex
from training.data.sample_format import META_DIR, ShardIndex
from training.data.sample_table import (
    TableColumns,
    encode_table,
    key_hash,
    open_table,
    parse_sample,
    scan_tar,
)

log = logging.getLogger(__name__)


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


class SampleTable:
    """Every sample of a split: shard URLs plus the mapped columns (shard, offset, size, key hash)."""

    def __init__(
        self,
        urls: list[str],
        columns: TableColumns,
        path: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.urls = urls
        self.path = path  # the local mapped file; None for a table held in memory
        self.storage_options = dict(storage_options or {})
        self._cols: TableColumns | None = columns

    @property
    def columns(self) -> TableColumns:
        if self._cols is None:  # unpickled in a worker: map the same file (shared page cache)
            assert self.path is not None
            self._cols = open_table(self.path)
        return self._cols

    def __len__(self) -> int:
        return len(self.columns)

    def row(self, i: int) -> tuple[str, int, int, int]:
        """(shard URL, byte offset, size, key hash) of sample i."""
        c = self.columns
        return self.urls[int(c.shard[i])], int(c.offset[i]), int(c.size[i]), int(c.key_hash[i])

    def __getstate__(self) -> dict[str, Any]:  # workers re-map the file instead of copying rows
        state = dict(self.__dict__)
        if self.path is not None:
            state["_cols"] = None
        return state

    @classmethod
    def build(
        cls,
        source: str,
        split: str,
        cache_dir: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> SampleTable:
        """The table of `source` (a stage folder or URL, see loader.resolve_stage).

        The index names its table: a local one is mapped where it is; one on a store is fetched
        once into `cache_dir` (checked against its sha256) and mapped there. An index written
        before tables existed (or bare shard URLs) costs one scan of the tar headers, logged,
        and is kept in `cache_dir` when given.
        """
        so = dict(storage_options or {})
        urls, index, stage_dir = resolve_stage(source, split, so)
        if not urls:
            why = ""
            if index is not None:  # an index with no shards: a small corpus can be all held out
                why = (
                    f" (its {split} index lists none; with few source videos every sample can fall in the "
                    "other split: see shard.split.eval_fraction)"
                )
            raise ValueError(f"{source}: no {split} shards{why}")
        if index is not None and index.sample_table is not None and stage_dir is not None:
            path = _local_table(stage_dir, index, cache_dir, so)
            cols = open_table(path, rows=index.samples)
            if len(cols) and int(cols.shard.max()) >= len(urls):
                raise ValueError(f"{path}: names shard {int(cols.shard.max())}, the index has {len(urls)}")
            return cls(urls, cols, path, so)
        return cls._scanned(source, urls, index, cache_dir, so)

    @classmethod
    def _scanned(
        cls,
        source: str,
        urls: list[str],
        index: ShardIndex | PairIndex | None,
        cache_dir: str | None,
        so: dict[str, Any],
    ) -> SampleTable:
        ident = "".join(e.sha256 for e in index.shards) if index else "\n".join(urls)
        h = hashlib.sha256(ident.encode()).hexdigest()[:16]
        name = f"{index.stage}-{index.split}-{h}.arrow" if index else f"urls-{h}.arrow"
        cache = os.path.join(cache_dir, name) if cache_dir else None
        if cache and os.path.exists(cache):
            return cls(urls, open_table(cache), cache, so)
        log.warning(
            "%s: the index has no sample table (written before it existed); reading the headers of "
            "%d shards once%s. Re-run `vjp shard` / `vjp encode` to write it.",
            source,
            len(urls),
            f" into {cache}" if cache else "",
        )
        parts = []
        for i, url in enumerate(urls):
            keys, ranges = scan_tar(url, so)
            if index is not None and len(keys) != index.shards[i].samples:
                raise ValueError(
                    f"{url}: {len(keys)} samples in the tar, the index says {index.shards[i].samples}"
                )
            parts.append(TableColumns.of_shard(i, ranges, keys))
        cols = TableColumns.concat(parts)
        if not cache:
            return cls(urls, cols, None, so)
        store.write_bytes(cache, encode_table(cols))
        return cls(urls, open_table(cache), cache, so)


def _local_table(
    stage_dir: str, index: ShardIndex | PairIndex, cache_dir: str | None, so: dict[str, Any]
) -> str:
    """A local file holding the index's table: in place, or fetched from the store (verified)."""
    ref = index.sample_table
    assert ref is not None
    url = store.join(stage_dir, META_DIR, ref.name)
    if not store.is_url(url):
        path = store.local_path(url)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path}: sample table named by the {index.split} index is missing "
                "(re-run vjp shard / vjp encode)"
            )
        if os.path.getsize(path) != ref.bytes:
            raise ValueError(
                f"{path}: {os.path.getsize(path)} bytes, the index says {ref.bytes} "
                "(re-run vjp shard / vjp encode)"
            )
        return path
    folder = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "videojp", "tables")
    path = os.path.join(folder, f"{ref.sha256}.arrow")  # content-addressed: one download per node
    if os.path.exists(path) and os.path.getsize(path) == ref.bytes:
        return path
    try:
        data = store.read_bytes(url, so)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{url}: sample table named by the {index.split} index is missing") from e
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ValueError(f"{url}: sha256 differs from the index (re-run vjp shard / vjp encode)")
    store.write_bytes(path, data)
    return path


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


def rank_slice(n: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """The global indices rank `rank` takes in `epoch`, in order: every world-th of the epoch's
    permutation from offset rank, n // world of them (int32 while n fits: half the memory)."""
    per_rank = n // world
    perm = epoch_permutation(n, seed, epoch)
    out = perm[rank : rank + per_rank * world : world]
    return out.astype(np.int32) if n < 2**31 else out.copy()


class RankStream(torch.utils.data.Dataset):
    """Map-style view of one rank's infinite stream: item c = the c-th sample this rank takes.

    Items are positions `c` or (c, global index) pairs from `RankSampler`, which computes the
    index in the rank's main process so DataLoader workers never build a permutation.
    """

    def __init__(
        self, table: SampleTable, seed: int, rank: int, world_size: int, decode_threads: int = 1
    ) -> None:
        if len(table) < world_size:
            raise ValueError(f"{len(table)} samples for {world_size} ranks: every rank needs at least one")
        self.table, self.seed, self.rank, self.world = table, seed, rank, world_size
        self.per_rank = len(table) // world_size  # the remainder of an epoch is left out on every rank
        self.decode_threads = decode_threads
        self._slice_epoch, self._slice = -1, np.empty(0, dtype=np.int32)
        self._reader = store.RangeReader(table.storage_options)

    def __len__(self) -> int:  # one epoch; the sampler goes on past it
        return self.per_rank

    def position(self, consumed: int) -> StreamPosition:
        return StreamPosition(consumed, self.world, self.rank, self.per_rank)

    def global_index(self, c: int) -> int:
        epoch, offset = divmod(c, self.per_rank)
        if epoch != self._slice_epoch:
            self._slice = rank_slice(len(self.table), self.seed, epoch, self.rank, self.world)
            self._slice_epoch = epoch
        return int(self._slice[offset])

    def raw(self, c: int, g: int | None = None) -> dict[str, Any]:
        """The members of the sample at position c (global index g when known): one read."""
        url, offset, size, kh = self.table.row(self.global_index(c) if g is None else g)
        buf = self._reader.read(url, offset, size)
        key, fields = parse_sample(buf, f"{url}@{offset}")
        if key_hash(key) != kh:
            raise ValueError(
                f"{url}: sample {key!r} at byte {offset} is not the one the sample table names "
                "(shard rewritten after its index? re-run vjp shard / vjp encode)"
            )
        return {"__key__": key, "__url__": url, **fields}

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        c, g = item if isinstance(item, tuple) else (item, None)
        # A sample that fails to decode is replaced by the next one in the same rank's order, so
        # the stream stays a function of the position; the error names the shard and key.
        for k in range(16):
            raw = self.raw(c + k, g if k == 0 else None)
            try:
                return decode_sample(raw, self.decode_threads)
            except Exception as e:
                log.warning(
                    "%s: sample %s skipped: %s: %s", raw["__url__"], raw["__key__"], type(e).__name__, e
                )
        raise RuntimeError(f"16 consecutive undecodable samples from position {c} of rank {self.rank}")

    def __getstate__(self) -> dict[str, Any]:  # workers get no permutation slice (the sampler has it)
        state = dict(self.__dict__)
        state["_slice_epoch"], state["_slice"] = -1, np.empty(0, dtype=np.int32)
        return state


class RankSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """Yields (c, global index) for c = start, start+1, ... forever, in the rank's main process."""

    def __init__(self, stream: RankStream, start: int) -> None:
        self.stream, self.start = stream, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        c = self.start
        while True:
            yield c, self.stream.global_index(c)
            c += 1


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
        sampler=RankSampler(stream, start),
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
