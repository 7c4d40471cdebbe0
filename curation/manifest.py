"""Parquet manifests: Arrow schemas derived from the record models, part files, compaction, readers.

A manifest is a folder (local or on an object store) holding:
  <name>.parquet            loose parts, one per unit of work (a video, a caption batch) while a step
                            runs; committed by existing (atomic rename locally, one PUT remotely)
  c-<gen>-<i>.parquet       compacted files of generation <gen>, ~100k rows or ~128 MB each
  _compact-<gen>.json       the commit record of generation <gen>: its files and the files it replaces
Readers take the committed compacted files that no newer record replaces, then the loose parts
(older layouts are loose parts only). Uncommitted compacted files (a compaction killed before its
record) are ignored and removed by the next compaction.

Rows are grouped by a key (`video_id` for the curation manifests): when the same key appears in
several files, the rows of the newest file win as a whole group (loose parts are newer than any
compaction, and a rerun rewrites a video's loose part), so a reprocessed video never mixes old
and new clips. Caption manifests keep every row (history) and pick the latest per clip and type
themselves.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from curation import atomic
from curation.records import ClipRow, ClipScores, ThumbRow, VideoRow

_SCALARS: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    bytes: pa.binary(),
}

COMPACT_ROWS = 100_000
COMPACT_BYTES = 128 << 20
ROW_GROUP_ROWS = 20_000  # sorted by key, so a filtered read of one video touches one row group
_SPILL_BYTES = 64 << 20  # rows a compaction holds before writing them to its spill files
# Waiting pieces merged into one table every this many: each small Arrow table costs ~20 kB of
# C++ objects outside the Arrow pool (and outside `nbytes`), so 10k one-video pieces held for one
# row group grew the driver by ~0.2 GB per manifest folder.
_GATHER_PIECES = 256
# A row group of large rows (thumbnails) closes at this many bytes instead of ROW_GROUP_ROWS rows:
# each is concatenated, spilled and copied whole, so it bounds those copies.
_GROUP_BYTES = 16 << 20
_COMPACTED = re.compile(r"^c-(\d{6})-(\d{5})\.parquet$")
_RECORD = re.compile(r"^_compact-(\d{6})\.json$")


class CompactionRecord(BaseModel):
    """`_compact-<gen>.json`: commits one compaction of a manifest folder (written last)."""

    model_config = ConfigDict(extra="forbid")

    gen: int = Field(ge=1, description="generation; its files are c-<gen>-<i>.parquet")
    files: list[str] = Field(description="the data files this compaction wrote, in read order")
    rows: int = Field(ge=0)
    replaces: list[str] = Field(
        description="files it supersedes; emptied once they are removed, so a reused name counts as new"
    )


def json_schemas() -> dict[str, dict[str, Any]]:
    return {"manifest_compaction.v1": CompactionRecord.model_json_schema()}


def _arrow_type(tp: Any) -> pa.DataType:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp}")
        return _arrow_type(args[0])
    if origin is Literal:
        return _arrow_type(type(typing.get_args(tp)[0]))
    if origin is list:
        return pa.list_(_arrow_type(typing.get_args(tp)[0]))
    return _SCALARS[tp]


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    return pa.schema([pa.field(name, _arrow_type(f.annotation)) for name, f in model.model_fields.items()])


VIDEO_SCHEMA = arrow_schema(VideoRow)
SCORES_SCHEMA = arrow_schema(ClipScores)
CLIP_SCHEMA = arrow_schema(ClipRow)
THUMB_SCHEMA = arrow_schema(ThumbRow)


_MODELS = {
    id(VIDEO_SCHEMA): VideoRow,
    id(SCORES_SCHEMA): ClipScores,
    id(CLIP_SCHEMA): ClipRow,
    id(THUMB_SCHEMA): ThumbRow,
}


def write_parquet(table: pa.Table, path: str) -> None:
    with atomic.atomic_output(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def write_table_atomic(rows: Iterable[dict[str, Any]], schema: pa.Schema, path: str) -> None:
    """Validate rows against their model and write them as one part (atomic, local or remote).

    Validation on write means a manifest never holds a row its JSON Schema rejects, and
    defaults (schema_version...) are filled in one place. A reader never sees a half part.
    """
    model = _MODELS.get(id(schema))
    if model is not None:
        rows = [model.model_validate(r).model_dump() for r in rows]
    write_parquet(pa.Table.from_pylist(list(rows), schema=schema), path)


# ---------------------------------------------------------------- resolving a manifest folder


def _records(folder: str, names: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for n in names:
        if _RECORD.match(n):
            try:
                out.append(json.loads(atomic.read_bytes(atomic.join(folder, n))))
            except FileNotFoundError:
                continue  # removed by a compaction that finished meanwhile
    return sorted(out, key=lambda r: r["gen"])


def committed_files(folder: str) -> list[str]:
    """Names of the committed data files of a manifest folder, oldest first (the read order)."""
    names = atomic.listdir(folder)
    records = _records(folder, names)
    replaced = {n for r in records for n in r["replaces"]}
    present = set(names)
    compacted = [n for r in records for n in r["files"] if n not in replaced and n in present]
    loose = [
        n
        for n in names
        if n.endswith(".parquet")
        and not n.startswith((".", "_"))
        and not _COMPACTED.match(n)
        and n not in replaced
    ]
    return compacted + loose


def _dataset(folder: str, names: Sequence[str], schema: pa.Schema | None) -> ds.Dataset:
    paths = [atomic.join(folder, n) for n in names]
    if atomic.is_url(folder):
        fs, _ = atomic.get_fs(folder)
        return ds.dataset(
            [atomic.get_fs(p)[1] for p in paths], format="parquet", schema=schema, filesystem=fs
        )
    return ds.dataset(paths, format="parquet", schema=schema)


def dataset_schema(folder: str) -> pa.Schema | None:
    """The unified schema of a manifest folder's committed files (None when it has none)."""
    names = committed_files(folder)
    return _dataset(folder, names, None).schema if names else None


def _latest_groups(table: pa.Table, key: str, rank: np.ndarray) -> pa.Table:
    """Rows of each key from the highest-ranked file that holds the key."""
    codes = pc.dictionary_encode(table.column(key)).combine_chunks().indices.to_numpy(zero_copy_only=False)
    best = np.full(int(codes.max()) + 1 if len(codes) else 0, -1, dtype=np.int64)
    np.maximum.at(best, codes, rank)
    return table.filter(pa.array(rank == best[codes]))


def read_table(
    folder: str,
    schema: pa.Schema | None = None,
    columns: list[str] | None = None,
    group_key: str | None = "video_id",
    filter: Any = None,
) -> pa.Table:
    """The committed rows of a manifest folder as one Arrow table (newest group per key)."""
    names = committed_files(folder)
    if not names:
        if schema is None:
            return pa.table({})
        return schema.empty_table().select(columns) if columns else schema.empty_table()
    dset = _dataset(folder, names, schema)
    if group_key is not None and group_key not in dset.schema.names:
        group_key = None
    single = len(names) == 1 or all(_COMPACTED.match(n) for n in names)  # compaction left one row set
    cols = list(columns) if columns is not None else list(dset.schema.names)
    if group_key is None or single:
        return dset.to_table(columns=cols, filter=filter)
    extra = [c for c in (group_key,) if c not in cols]
    t = dset.to_table(columns=[*cols, *extra, "__filename"], filter=filter)
    order = {
        atomic.get_fs(atomic.join(folder, n))[1] if atomic.is_url(folder) else atomic.join(folder, n): i
        for i, n in enumerate(names)
    }
    fn = t.column("__filename").combine_chunks().dictionary_encode()
    rank = np.array([order[s] for s in fn.dictionary.to_pylist()], dtype=np.int64)[
        fn.indices.to_numpy(zero_copy_only=False)
    ]
    t = _latest_groups(t, group_key, rank)
    return t.drop_columns(["__filename", *extra])


def is_compact(folder: str) -> bool:
    """True when the committed files are one compaction's (or a single file): no key repeats, and
    rows come in the compaction's sort order."""
    names = committed_files(folder)
    return len(names) <= 1 or all(_COMPACTED.match(n) for n in names)


def iter_batches(folder: str, schema: pa.Schema, batch_rows: int = 65_536) -> Iterator[pa.Table]:
    """The committed rows in read order, a batch at a time (for a compact folder: see is_compact)."""
    for name in committed_files(folder):
        path = atomic.join(folder, name)
        with atomic.local_file(path) as local:
            pf = pq.ParquetFile(local)
            for batch in pf.iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([batch]).select(schema.names).cast(schema)


def write_batches(tables: Iterable[pa.Table], schema: pa.Schema, path: str) -> int:
    """Stream tables into one Parquet file that appears whole or not at all; returns its row count."""
    rows = 0
    with atomic.atomic_output(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as w:
        for t in tables:
            w.write_table(t.cast(schema), row_group_size=ROW_GROUP_ROWS)
            rows += t.num_rows
    return rows


def read_rows(folder: str, schema: pa.Schema | None = None) -> list[dict[str, Any]]:
    """All committed rows of a manifest folder as dicts (small manifests, tests, reports)."""
    return read_table(folder, schema).to_pylist()


def read_one(path: str) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist() if atomic.exists(path) else []


def file_count(folder: str) -> int:
    """Files a reader opens (committed data files) — the figure the scale goals are about."""
    return len(committed_files(folder))


# ---------------------------------------------------------------- compaction


def _rows_per_file(table: pa.Table, rows: int, nbytes: int) -> int:
    if table.num_rows == 0:
        return rows
    per_row = max(1, table.nbytes // table.num_rows)
    return max(1, min(rows, nbytes // per_row))


def compact(
    folder: str,
    schema: pa.Schema | None = None,
    group_key: str | None = "video_id",
    sort_by: Sequence[str] = ("video_id",),
    rows_per_file: int = COMPACT_ROWS,
    bytes_per_file: int = COMPACT_BYTES,
) -> dict[str, int]:
    """Merge a manifest folder's committed files into few large ones; safe to kill at any moment.

    New files are written under fresh names, then the record that commits them (and names what
    they replace); only then are the replaced files removed. A kill before the record leaves the
    old state (the new files are uncommitted leftovers, removed next time); a kill after it leaves
    the new state with some replaced files still lying around (ignored, removed next time).
    Returns counts: files read, files written, rows.
    """
    names = atomic.listdir(folder)
    if not names:
        return {"read": 0, "written": 0, "rows": 0}
    files = committed_files(folder)
    records = _records(folder, names)
    loose = [n for n in files if not _COMPACTED.match(n)]
    latest = f"_compact-{records[-1]['gen']:06d}.json" if records else None
    stray = [n for n in names if n not in files and n != latest]
    if not loose:
        # The committed state is already compact: only finish what a killed compaction left.
        if stray or (records and records[-1]["replaces"]):
            _finish(folder, stray, records[-1] if records else None)
        return {"read": 0, "written": 0, "rows": 0}
    written: list[str] = []
    rows = 0
    gens = [int(m.group(1)) for n in names if (m := _COMPACTED.match(n) or _RECORD.match(n))]
    gen = max(gens, default=0) + 1
    if files:
        rows, written = _merge(folder, files, schema, group_key, sort_by, rows_per_file, bytes_per_file, gen)
    record = CompactionRecord(
        gen=gen, files=written, rows=rows, replaces=sorted(set(files) - set(written))
    ).model_dump()
    record_name = f"_compact-{gen:06d}.json"
    atomic.write_bytes(atomic.join(folder, record_name), json.dumps(record).encode())
    _finish(folder, [n for n in names if n not in written and n != record_name], record)
    return {"read": len(files), "written": len(written), "rows": rows}


def _read_file(
    folder: str, name: str, schema: pa.Schema | None, columns: list[str] | None = None
) -> pa.Table:
    return _dataset(folder, [name], schema).to_table(columns=columns)


def _merge(
    folder: str,
    files: list[str],
    schema: pa.Schema | None,
    group_key: str | None,
    sort_by: Sequence[str],
    rows_per_file: int,
    bytes_per_file: int,
    gen: int,
) -> tuple[int, list[str]]:
    """Write the committed rows as globally sorted files of bounded size, in bounded memory.

    An external sort by range: (1) read only the key columns of every file, drop superseded groups
    and compute each row's position in the sorted order; (2) read each file once and spill its rows
    to the local temporary of the output file their position falls in; (3) sort each temporary by
    position and write it. Memory: the key columns plus one file, never the whole manifest (the
    thumbnails of millions of clips are tens of GB)."""
    first = _read_file(folder, files[0], schema)
    names = first.column_names
    keys = [k for k in sort_by if k in names]
    gk = group_key if group_key in names else None
    kcols = list(dict.fromkeys([*keys, *([gk] if gk else [])]))
    step = _rows_per_file(first, rows_per_file, bytes_per_file)
    del first
    # Key columns of every file, merged every _GATHER_PIECES files (small tables cost their count).
    blocks: list[pa.Table] = []
    recent: list[pa.Table] = []
    counts: list[int] = []
    for n in files:
        b = _read_file(folder, n, schema, kcols or None)
        counts.append(b.num_rows)
        if kcols:
            recent.append(b)
        if len(recent) >= _GATHER_PIECES:
            blocks.append(pa.concat_tables(recent).combine_chunks())
            recent = []
        del b
    if recent:
        blocks.append(pa.concat_tables(recent).combine_chunks())
    del recent
    sizes = np.array(counts, dtype=np.int64)
    total = int(sizes.sum())
    keep = np.ones(total, dtype=bool)
    kt = pa.concat_tables(blocks) if kcols else None
    del blocks
    if gk is not None and kt is not None and len(files) > 1:
        keep = _latest_mask(kt.column(gk), np.repeat(np.arange(len(files)), sizes))
    kept = np.nonzero(keep)[0]
    if keys and kt is not None:
        sub = kt.select(keys).take(pa.array(kept, type=pa.int64()))
        kept = kept[pc.sort_indices(sub, [(k, "ascending") for k in keys]).to_numpy()]
    del kt
    rows = len(kept)
    pos = np.full(total, -1, dtype=np.int64)
    pos[kept] = np.arange(rows)
    n_out = max(1, -(-rows // step))
    written = [f"c-{gen:06d}-{i:05d}.parquet" for i in range(n_out)]
    with tempfile.TemporaryDirectory(prefix="vjp-compact-") as tmp:
        # Each output's spill is cut by position into buckets of at most a row group's rows (and
        # about _GROUP_BYTES): rows arrive in any order (Ray batch parts are named by a hash, not a
        # key), and sorting one bucket at a time holds a bucket, never a whole output file.
        width = max(1, min(ROW_GROUP_ROWS, step * _GROUP_BYTES // max(bytes_per_file, 1)))
        writers: dict[tuple[int, int], pq.ParquetWriter] = {}
        # Pieces wait until a row group's worth has gathered: thousands of per-video parts written
        # as thousands of tiny row groups cost ~230 kB of memory each when the spill is read back.
        # Bounded: every output flushes at a row group's rows, all of them at _SPILL_BYTES in all.
        waiting: dict[int, list[pa.Table]] = {}
        rows_waiting: dict[int, int] = {}
        bytes_of: dict[int, int] = {}
        fresh: dict[int, int] = {}  # pieces appended to waiting[j] since its last gather
        bytes_waiting = 0

        def flush(j: int) -> None:
            nonlocal bytes_waiting
            pieces = waiting.pop(j)
            rows_waiting.pop(j)
            bytes_of.pop(j, None)
            fresh.pop(j, None)
            bytes_waiting -= sum(x.nbytes for x in pieces)
            piece = pa.concat_tables(pieces).combine_chunks()
            bucket = (piece.column("__pos").to_numpy() - j * step) // width
            for k in np.unique(bucket).tolist():
                part = piece.filter(pa.array(bucket == k))
                if (j, k) not in writers:
                    writers[(j, k)] = pq.ParquetWriter(os.path.join(tmp, f"{j}-{k}.parquet"), part.schema)
                writers[(j, k)].write_table(part)

        def gather(j: int) -> None:
            """The latest small pieces of output j as one table: memory, not a row group."""
            nonlocal bytes_waiting
            k = fresh.pop(j)
            small = waiting[j][-k:]
            merged = pa.concat_tables(small).combine_chunks()
            bytes_waiting += merged.nbytes - sum(x.nbytes for x in small)
            waiting[j][-k:] = [merged]

        start = 0
        try:
            for name, size in zip(files, sizes.tolist(), strict=True):
                p = pos[start : start + size]
                start += size
                if not (p >= 0).any():
                    continue
                t = _read_file(folder, name, schema).append_column("__pos", pa.array(p))
                out = np.where(p >= 0, p // step, -1)
                for j in np.unique(out[out >= 0]).tolist():
                    piece = t.filter(pa.array(out == j))
                    waiting.setdefault(j, []).append(piece)
                    rows_waiting[j] = rows_waiting.get(j, 0) + piece.num_rows
                    fresh[j] = fresh.get(j, 0) + 1
                    bytes_waiting += piece.nbytes
                    bytes_of[j] = bytes_of.get(j, 0) + piece.nbytes
                    if rows_waiting[j] >= ROW_GROUP_ROWS or bytes_of[j] >= _GROUP_BYTES:
                        flush(j)
                    elif fresh[j] >= _GATHER_PIECES:
                        gather(j)
                if bytes_waiting > _SPILL_BYTES:
                    for j in list(waiting):
                        flush(j)
            for j in list(waiting):
                flush(j)
        finally:
            for w in writers.values():
                w.close()
        for j, name in enumerate(written):
            spills = [s for s in (os.path.join(tmp, f"{j}-{k}.parquet") for k in range(-(-step // width)))
                      if os.path.exists(s)]  # fmt: skip
            if not spills:  # an empty manifest still gets one (empty) file
                t = (schema or _read_file(folder, files[0], None).schema).empty_table()
                write_parquet(t, atomic.join(folder, name))
                continue
            out_schema = pq.read_schema(spills[0])
            out_schema = out_schema.remove(out_schema.get_field_index("__pos"))
            write_batches(_sorted_buckets(spills), out_schema, atomic.join(folder, name))
    return rows, written


def _sorted_buckets(spills: list[str]) -> Iterator[pa.Table]:
    """Each bucket's rows in position order (buckets come in order), removed once read."""
    for spill in spills:
        t = pq.read_table(spill)
        pos = t.column("__pos").to_numpy()
        if not np.all(np.diff(pos) > 0):
            t = t.take(pa.array(np.argsort(pos, kind="stable")))
        os.remove(spill)
        yield t.drop_columns(["__pos"])
        del t


def _latest_mask(keys: pa.ChunkedArray, rank: np.ndarray) -> np.ndarray:
    codes = pc.dictionary_encode(keys).combine_chunks().indices.to_numpy(zero_copy_only=False)
    best = np.full(int(codes.max()) + 1 if len(codes) else 0, -1, dtype=np.int64)
    np.maximum.at(best, codes, rank)
    return rank == best[codes]


def _finish(folder: str, remove: Sequence[str], record: dict[str, Any] | None) -> None:
    """Remove what the committed record replaced (and leftovers), then clear its `replaces` list:
    from then on a loose part under a reused name (a video processed again) counts as new."""
    for n in remove:
        atomic.remove(atomic.join(folder, n))
    if record is not None and record["replaces"]:
        done = {**record, "replaces": []}
        atomic.write_bytes(
            atomic.join(folder, f"_compact-{record['gen']:06d}.json"), json.dumps(done).encode()
        )
