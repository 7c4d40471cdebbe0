"""The columnar sample table of a split: where every sample's bytes are, one row per sample.

    <stage>/__index__/<split>.samples.<sha256[:16]>.arrow   (named in <split>.json: sample_table)

An Arrow IPC file (uncompressed, one record batch) with four columns, 28 bytes per sample:

    shard     int32   position of the shard in the index's `shards` list
    offset    int64   byte offset of the sample's first tar member header in the shard
    size      int64   bytes from there to the end of its last member (512-byte padded)
    key_hash  uint64  first 8 bytes (little endian) of blake2b(key): checks the bytes read are the sample

A sample's members are contiguous in a WebDataset tar, so one read of [offset, offset + size) gets
all of them and the member headers inside those bytes say where each member is (`parse_sample`):
one ranged read per sample on an object store, nothing per member. The file is opened with mmap
(pyarrow.memory_map) and its columns are numpy views of the mapping, so every rank and DataLoader
worker on a node shares one copy through the page cache. `vjp shard` and `vjp encode` write it
from offsets recorded while writing each tar; nothing rescans tar headers.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TABLE_FORMAT = "videojp.sample_table.v1"
COLUMNS = ("shard", "offset", "size", "key_hash")


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("shard", pa.int32()),
            ("offset", pa.int64()),
            ("size", pa.int64()),
            ("key_hash", pa.uint64()),
        ],
        metadata={"format": TABLE_FORMAT},
    )


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def key_hashes(keys: Sequence[str]) -> np.ndarray:
    """uint64 key hashes of many keys (one contiguous blake2b digest buffer, read as <u8)."""
    buf = b"".join(hashlib.blake2b(k.encode("utf-8"), digest_size=8).digest() for k in keys)
    return np.frombuffer(buf, dtype="<u8").astype(np.uint64, copy=False)


def table_name(split: str, sha256: str) -> str:
    """Content-named: a rerun never overwrites a table a running trainer has open."""
    return f"{split}.samples.{sha256[:16]}.arrow"


def is_table_name(name: str, split: str) -> bool:
    """Whether a file name in __index__/ is one of `split`'s sample tables (`table_name`, any hash)."""
    return re.fullmatch(rf"{re.escape(split)}\.samples\.[0-9a-f]{{16}}\.arrow", name) is not None


@dataclass
class TableColumns:
    """The four columns as numpy arrays (views of the mapped file when opened from disk)."""

    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    key_hash: np.ndarray

    def __len__(self) -> int:
        return len(self.shard)

    @classmethod
    def concat(cls, parts: Sequence[TableColumns]) -> TableColumns:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, c) for p in parts]) for c in COLUMNS))

    @classmethod
    def empty(cls) -> TableColumns:
        return cls(
            np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint64)
        )

    @classmethod
    def of_shard(cls, shard: int, ranges: Sequence[Sequence[int]], keys: Sequence[str]) -> TableColumns:
        if len(ranges) != len(keys):
            raise ValueError(f"shard {shard}: {len(ranges)} byte ranges for {len(keys)} keys")
        r = np.asarray(ranges, dtype=np.int64).reshape(len(keys), 2)
        return cls(np.full(len(keys), shard, np.int32), r[:, 0].copy(), r[:, 1].copy(), key_hashes(keys))


def encode_table(cols: TableColumns) -> bytes:
    """Arrow IPC file bytes (one record batch, so the reader maps each column as one array)."""
    import pyarrow as pa

    schema = _schema()
    batch = pa.record_batch(
        [pa.array(np.ascontiguousarray(getattr(cols, c)), type=schema.field(c).type) for c in COLUMNS],
        schema=schema,
    )
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, schema) as w:
        w.write_batch(batch)
    return sink.getvalue()


def open_table(path: str, rows: int | None = None) -> TableColumns:
    """Map a local table file; its columns are zero-copy views. Errors name the file and the reason."""
    import pyarrow as pa

    try:
        reader = pa.ipc.open_file(pa.memory_map(path, "r"))
        meta = reader.schema.metadata or {}
        if meta.get(b"format") != TABLE_FORMAT.encode():
            raise ValueError(f"not a {TABLE_FORMAT} file (format {meta.get(b'format')!r})")
        if reader.schema.remove_metadata() != _schema().remove_metadata():
            raise ValueError(f"unexpected columns {reader.schema.names}")
        if reader.num_record_batches == 1:
            batch = reader.get_batch(0)
            cols = TableColumns(*(batch.column(c).to_numpy(zero_copy_only=True) for c in COLUMNS))
        else:  # not written by us: one copy, still correct
            t = reader.read_all().combine_chunks()
            cols = TableColumns(*(np.asarray(t.column(c)) for c in COLUMNS))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: sample table missing (re-run vjp shard / vjp encode)") from e
    except (pa.ArrowInvalid, pa.ArrowException, ValueError, OSError) as e:
        raise ValueError(f"{path}: unreadable sample table ({e}); re-run vjp shard / vjp encode") from e
    if rows is not None and len(cols) != rows:
        raise ValueError(f"{path}: {len(cols)} rows, the index says {rows} (re-run vjp shard / vjp encode)")
    return cols


# ---- tar members -----------------------------------------------------------------------------
def member_key(name: str) -> tuple[str, str] | None:
    """(key, field) by webdataset's rule: the key runs to the first dot of the basename."""
    base = os.path.basename(name)
    key, dot, field = base.partition(".")
    if not dot:
        return None
    return os.path.join(os.path.dirname(name), key), field


def parse_sample(buf: bytes, where: str = "") -> tuple[str, dict[str, bytes]]:
    """(key, {field: bytes}) of one sample's contiguous tar members; mixed keys are an error."""
    key: str | None = None
    fields: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(buf), mode="r:") as tf:
            for m in tf:
                if not m.isfile() or (kf := member_key(m.name)) is None:
                    continue
                if key is not None and kf[0] != key:
                    raise ValueError(
                        f"{where}: two samples ({key}, {kf[0]}) in one indexed byte range (shard "
                        "rewritten after its index? re-run vjp shard / vjp encode)"
                    )
                key = kf[0]
                fields[kf[1]] = buf[m.offset_data : m.offset_data + m.size]
    except tarfile.TarError as e:
        raise ValueError(f"{where}: no tar members in the indexed byte range ({e})") from e
    if key is None:
        raise ValueError(f"{where}: no tar members in the indexed byte range")
    return key, fields


def scan_tar(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[list[str], list[list[int]]]:
    """(keys, [offset, size] per sample) from a tar's headers only (old indexes and bare URL lists)."""
    import fsspec

    keys: list[str] = []
    ranges: list[list[int]] = []
    with (
        fsspec.open(url, "rb", **dict(storage_options or {})) as f,
        tarfile.open(fileobj=f, mode="r:") as tf,
    ):
        for m in tf:
            if not m.isfile() or (kf := member_key(m.name)) is None:
                continue
            end = m.offset_data + -(-m.size // 512) * 512
            if keys and keys[-1] == kf[0]:
                ranges[-1][1] = end - ranges[-1][0]
            else:
                keys.append(kf[0])
                ranges.append([m.offset, end - m.offset])
    return keys, ranges
