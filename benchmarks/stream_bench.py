"""The sample index at the seed's scale: build time, memory per node, permutation and seek time.

    .venv/bin/python benchmarks/stream_bench.py [--samples 4000000] [--per-shard 1000]
        [--ranks 8] [--workers 4] [--json OUT.json]

1. Build: a synthetic split of --samples samples in shards of --per-shard (no tar bytes: the
   records `vjp shard` keeps per shard, with keys and byte ranges) goes through the real writer
   (shard_writer.write_split_index: key hashes, Arrow table, index JSON) and the real reader
   (stream.SampleTable.build: resolve the index, map the table).
2. Memory: real processes as one training node has them: --ranks rank processes (each computes
   its epoch slice, as the sampler does) and --ranks x --workers worker processes (each gets the
   pickled RankStream as a DataLoader worker does, and reads the table rows of its share of the
   epoch). Once all of them have read their rows, each reports (/proc/self/smaps) the Pss of its
   mappings of the table file (Pss splits page-cache pages between the processes mapping them, so
   the sum over the node is one copy) and the growth of its private memory since before it opened
   the table (the rank slices, buffers). Node memory = the sum of both over all processes.
   Baseline in the same run: the old stream's per-sample dicts, measured with tracemalloc on 100k
   samples, times (1 + workers) x ranks copies.
3. Permutation: one epoch's rank slice (numpy permutation of all samples, sliced). Seek: a fresh
   stream's first index at positions in epochs 0, 1 and 7 (one slice each, whatever the offset)
   and the following index (arithmetic only).
Goals (issue 13): <= 64 bytes per sample per node, build <= 60 s, seek O(1). The machine may be
shared: times are wall-clock and noisy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from training.data.sample_format import ShardEntry, ShardIndex, ShardRecord  # noqa: E402
from training.data.shard_writer import write_split_index  # noqa: E402
from training.stream import RankStream, SampleTable, rank_slice  # noqa: E402

SEED = 0


def smaps(table_file: str | None = None) -> dict[str, int]:
    """This process's memory (Linux /proc/self/smaps): the Pss of the table file's mappings, and
    the private (unique) bytes of everything else, the anonymous memory (slices, buffers) included.

    Pss of the whole process would also move when other processes map the same libraries, so the
    table is measured per mapping and the rest by its private bytes, which nothing else shares.
    """
    table_pss = table_private = rss = private = 0
    current = ""
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                current = head[5].strip() if len(head) > 5 else ""
                continue
            k, _, v = line.partition(":")
            if not v.strip().endswith("kB"):
                continue
            b = int(v.split()[0]) * 1024
            mine = table_file is not None and current == table_file
            if k == "Rss":
                rss += b
            elif k == "Pss" and mine:
                table_pss += b
            elif k in ("Private_Clean", "Private_Dirty"):
                private += b
                table_private += b if mine else 0
    return {"rss": rss, "table_pss": table_pss, "other_private": private - table_private}


def synthetic_records(n: int, per_shard: int) -> tuple[ShardIndex, dict[str, ShardRecord]]:
    """What `vjp shard` holds before it writes an index: one record per shard, keys + byte ranges."""
    records: dict[str, ShardRecord] = {}
    entries = []
    sample_bytes = 300_000  # a 49-frame 480p H.264 sample plus json and txt, padded
    for s, start in enumerate(range(0, n, per_shard)):
        k = min(per_shard, n - start)
        name = f"{s:06d}.tar"
        keys = [f"v{(start + i) // 7:09d}_{start + i:012d}_{start + i + 48:012d}" for i in range(k)]
        ranges = [(i * sample_bytes, sample_bytes) for i in range(k)]
        entry = ShardEntry.model_construct(
            name=name, samples=k, bytes=k * sample_bytes + 1024, sha256="0" * 64, plan_hash="bench"
        )
        entries.append(entry)
        records[name] = ShardRecord.model_construct(
            split="train", entry=entry, keys=keys, ranges=ranges, skipped={}
        )
    index = ShardIndex.model_construct(
        schema_version="shard_index.v1",
        format="videojp.sample.v1",
        kind="video",
        stage="bench",
        split="train",
        width=848,
        height=480,
        frames=49,
        fps=16.0,
        members=["json", "mp4", "txt"],
        config_hash="bench",
        seed=SEED,
        package_version="bench",
        preset={},
        shards=entries,
        samples=n,
        bytes=sum(e.bytes for e in entries),
        skipped={},
        encode=None,
        sample_table=None,
    )
    return index, records


def old_bytes_per_sample(n: int = 100_000) -> float:
    """The previous stream's table: a dict per sample ({key, members: {field: [offset, size]}}) as
    parsed from its JSON cache, plus the (shard, i) tuple list; tracemalloc'd on n samples."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    shards: list[list[dict[str, Any]]] = []
    for s in range(n // 1000):
        rows = []
        for i in range(1000):
            j = s * 1000 + i
            key = f"v{j // 7:09d}_{j:012d}_{j + 48:012d}"
            rows.append(
                {"key": key, "members": {f: [j * 3000 + 512, 100_000 + j] for f in ("json", "mp4", "txt")}}
            )
        shards.append(json.loads(json.dumps(rows)))  # as parsed from the cache: fresh objects
    refs = [(s, i) for s, rows in enumerate(shards) for i in range(len(rows))]
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del shards, refs
    return used / n


# ---- node processes ----------------------------------------------------------------------------
def _warm(warm_stage: str) -> None:
    """Pay the one-time costs (pyarrow's first mapping, lazy imports) on a 10-row table, so the
    growth measured after is what the table itself costs."""
    s = RankStream(SampleTable.build(warm_stage, "train"), SEED, 0, 1)
    s.table.row(s.global_index(0))


def _rank_proc(stage: str, warm: str, rank: int, world: int, q: Any, barrier: Any) -> None:
    _warm(warm)
    base = smaps()
    table = SampleTable.build(stage, "train")
    path = table.path
    stream = RankStream(table, SEED, rank, world)
    stream.global_index(0)  # the sampler's slice of epoch 0 (the only per-rank array)
    barrier.wait()  # everyone has read its rows: now Pss splits the shared pages between all
    now = smaps(path)
    q.put(("rank", rank, {k: now[k] - base[k] for k in now}))
    barrier.wait()


def _worker_proc(blob: bytes, warm: str, idx: np.ndarray, rank: int, q: Any, barrier: Any) -> None:
    import pickle

    _warm(warm)
    base = smaps()
    stream = pickle.loads(blob)  # what a DataLoader worker receives: the file name, not the rows
    cols = stream.table.columns
    checksum = 0
    for chunk in np.array_split(idx, 64):  # every row of its share, in its (random) epoch order
        checksum += int(cols.offset[chunk].sum() + cols.size[chunk].sum() + cols.shard[chunk].sum())
        checksum ^= int(np.bitwise_xor.reduce(cols.key_hash[chunk])) if len(chunk) else 0
    del idx
    barrier.wait()
    now = smaps(stream.table.path)
    q.put(("worker", rank, {**{k: now[k] - base[k] for k in now}, "checksum": checksum % 997}))
    barrier.wait()


def node_memory(stage: str, warm: str, ranks: int, workers: int) -> dict[str, Any]:
    import pickle

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["training.stream", "numpy", "pyarrow", "pyarrow.ipc"])
    q = ctx.Queue()
    barrier = ctx.Barrier(ranks * (1 + workers))
    table = SampleTable.build(stage, "train")
    procs = []
    for r in range(ranks):
        procs.append(ctx.Process(target=_rank_proc, args=(stage, warm, r, ranks, q, barrier)))
        stream = RankStream(table, SEED, r, ranks)
        blob = pickle.dumps(stream)
        mine = rank_slice(len(table), SEED, 0, r, ranks)
        for w in range(workers):  # DataLoader: batches go round robin to the workers
            procs.append(
                ctx.Process(target=_worker_proc, args=(blob, warm, mine[w::workers].copy(), r, q, barrier))
            )
        del mine
    del table
    for p in procs:
        p.start()
    rows = [q.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join(timeout=600)
    per = {"rank": [r[2] for r in rows if r[0] == "rank"], "worker": [r[2] for r in rows if r[0] == "worker"]}
    every = per["rank"] + per["worker"]
    return {
        "processes": len(rows),
        "table_pss_node_bytes": sum(r["table_pss"] for r in every),
        "other_private_node_bytes": sum(r["other_private"] for r in every),
        "node_bytes": sum(r["table_pss"] + r["other_private"] for r in every),
        "rank_table_pss_max": max(r["table_pss"] for r in per["rank"]),
        "rank_private_max": max(r["other_private"] for r in per["rank"]),
        "worker_table_pss_max": max(r["table_pss"] for r in per["worker"]),
        "worker_private_max": max(r["other_private"] for r in per["worker"]),
        "worker_rss_max": max(r["rss"] for r in per["worker"]),
    }


def seek_times(table: SampleTable, ranks: int) -> dict[str, float]:
    per_rank = len(table) // ranks
    out = {}
    for label, c in (
        ("epoch0_start", 0),
        ("epoch1_mid", per_rank + per_rank // 2),
        ("epoch7_end", 8 * per_rank - 1),
    ):
        s = RankStream(table, SEED, ranks - 1, ranks)
        t = time.perf_counter()
        s.global_index(c)
        out[f"seek_{label}_s"] = time.perf_counter() - t
        t = time.perf_counter()
        s.global_index(c + 1 if (c + 1) % per_rank else c - 1)
        out[f"next_{label}_us"] = (time.perf_counter() - t) * 1e6
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=4_000_000)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    n = args.samples
    res: dict[str, Any] = {"samples": n, "ranks": args.ranks, "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        stage = os.path.join(tmp, "bench")
        index, records = synthetic_records(n, args.per_shard)
        t = time.perf_counter()
        index = write_split_index(stage, index, records)
        res["write_s"] = time.perf_counter() - t
        del records
        t = time.perf_counter()
        table = SampleTable.build(stage, "train")
        res["open_s"] = time.perf_counter() - t
        res["build_s"] = res["write_s"] + res["open_s"]
        res["table_bytes"] = index.sample_table.bytes if index.sample_table else 0
        t = time.perf_counter()
        rank_slice(n, SEED, 0, 0, args.ranks)
        res["permutation_s"] = time.perf_counter() - t
        res.update(seek_times(table, args.ranks))
        del table
        warm = os.path.join(tmp, "warm")
        write_split_index(warm, *synthetic_records(10, 10))
        res.update(node_memory(stage, warm, args.ranks, args.workers))
    res["node_bytes_per_sample"] = res["node_bytes"] / n
    res["old_bytes_per_sample_per_copy"] = old_bytes_per_sample()
    copies = args.ranks * (1 + args.workers)
    res["old_node_bytes_per_sample"] = res["old_bytes_per_sample_per_copy"] * copies
    seeks = [v for k, v in res.items() if k.startswith("seek_")]
    res["goals"] = {
        "bytes_per_sample_per_node<=64": res["node_bytes_per_sample"] <= 64,
        "build<=60s": res["build_s"] <= 60,
        # O(1): a seek into epoch 7 costs what a seek to position 0 costs (one slice), within noise
        "seek_O(1)": max(seeks) <= 3 * min(seeks) + 0.05,
    }

    def mib(b: float) -> str:
        return f"{b / (1 << 20):.1f} MiB"

    r = res
    print(f"samples {n:,} in shards of {args.per_shard}; {args.ranks} ranks x {args.workers} workers")
    print(
        f"build: write {r['write_s']:.1f} s + open {r['open_s']:.3f} s = {r['build_s']:.1f} s "
        f"(table file {mib(r['table_bytes'])}, {r['table_bytes'] / n:.1f} B/sample)"
    )
    print(
        f"memory per node ({r['processes']} processes): {mib(r['node_bytes'])} = "
        f"{r['node_bytes_per_sample']:.1f} B/sample: table mappings (Pss) {mib(r['table_pss_node_bytes'])} "
        f"+ private growth {mib(r['other_private_node_bytes'])}"
    )
    print(
        f"  per rank process (max): table Pss {mib(r['rank_table_pss_max'])}, "
        f"private growth {mib(r['rank_private_max'])}"
    )
    print(
        f"  per worker process (max): table Pss {mib(r['worker_table_pss_max'])}, private growth "
        f"{mib(r['worker_private_max'])}, Rss {mib(r['worker_rss_max'])} (Rss counts shared pages in full)"
    )
    old = r["old_node_bytes_per_sample"]
    print(
        f"  baseline, the old per-sample dicts: {r['old_bytes_per_sample_per_copy']:.0f} B/sample per copy "
        f"x {copies} copies = {old:.0f} B/sample per node "
        f"({old / max(r['node_bytes_per_sample'], 1e-9):.0f}x)"
    )
    print(f"permutation (one epoch's rank slice): {r['permutation_s']:.3f} s")
    seek_labels = [k[len("seek_") : -len("_s")] for k in r if k.startswith("seek_")]
    print(
        "seek, fresh stream (first index / the next): "
        + ", ".join(
            f"{lb} {r['seek_' + lb + '_s']:.3f} s / {r['next_' + lb + '_us']:.1f} us" for lb in seek_labels
        )
    )
    print("goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in r["goals"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0 if all(res["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
