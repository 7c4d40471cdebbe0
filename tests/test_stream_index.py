"""The columnar sample table and the stream over it: round trip, the same order as the old
per-sample stream, O(1) resume, bad or missing index files named in the error, old indexes."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.train_fixtures import make_tiny_shards
from training.data.sample_table import TableColumns, encode_table, key_hash, open_table, scan_tar
from training.stream import RankStream, SampleTable


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_tiny_shards(tmp_path_factory.mktemp("index"), n=7)


def _index(stage: Path, split: str = "train") -> dict[str, Any]:
    return json.loads((stage / "__index__" / f"{split}.json").read_text())


def _synthetic(n: int) -> SampleTable:
    """An in-memory table of n samples over 3 fake shards (no bytes: for order tests only)."""
    rng = np.random.default_rng(1)
    cols = TableColumns(
        (np.arange(n) % 3).astype(np.int32),
        rng.integers(0, 1 << 40, n),
        rng.integers(512, 1 << 20, n),
        rng.integers(0, 1 << 63, n).astype(np.uint64),
    )
    return SampleTable(["a.tar", "b.tar", "c.tar"], cols)


def test_written_table_matches_the_tar_headers_and_round_trips(tiny: dict[str, Any]) -> None:
    stage = tiny["shards"]
    ref = _index(stage)["sample_table"]
    assert ref["rows"] == 7 and ref["format"] == "videojp.sample_table.v1"
    path = stage / "__index__" / ref["name"]
    assert path.stat().st_size == ref["bytes"] and ref["name"] == f"train.samples.{ref['sha256'][:16]}.arrow"
    cols = open_table(str(path), rows=7)
    # The offsets recorded while writing equal a scan of the finished tars' headers.
    shards = [e["name"] for e in _index(stage)["shards"]]
    for i, name in enumerate(shards):
        keys, ranges = scan_tar(str(stage / "train" / name))
        mine = cols.shard == i
        assert cols.offset[mine].tolist() == [r[0] for r in ranges]
        assert cols.size[mine].tolist() == [r[1] for r in ranges]
        assert cols.key_hash[mine].tolist() == [key_hash(k) for k in keys]
    # 28 bytes a row plus a fixed Arrow envelope; the columns are views of the mapping (no copy).
    assert cols.offset.base is not None and not cols.offset.flags.writeable
    again = open_table(str(path))
    for c in ("shard", "offset", "size", "key_hash"):
        assert np.array_equal(getattr(again, c), getattr(cols, c))
    big = TableColumns(
        *(np.resize(getattr(cols, c), 10_000) for c in ("shard", "offset", "size", "key_hash"))
    )
    assert len(encode_table(big)) < 10_000 * 28 + 2048


def test_a_sample_is_one_read_of_its_members(tiny: dict[str, Any]) -> None:
    table = SampleTable.build(str(tiny["shards"]), "train")
    stream = RankStream(table, 0, 0, 1)
    calls: list[tuple[str, int, int]] = []
    read = stream._reader.read
    stream._reader.read = lambda url, off, size: calls.append((url, off, size)) or read(url, off, size)  # type: ignore[method-assign]
    raw = stream.raw(3)
    assert len(calls) == 1 and set(raw) >= {"__key__", "__url__", "json", "mp4", "txt"}
    meta = json.loads(raw["json"])
    assert meta["key"] == raw["__key__"] and raw["txt"].decode() == meta["caption"]


def test_rank_slicing_equals_the_previous_per_sample_stream() -> None:
    """The order is the one the dict-per-sample stream had: numpy's permutation seeded by
    (seed, epoch, 0x5EED), rank r taking every world-th from r, n // world per rank."""
    n, world, seed = 1003, 4, 7
    table = _synthetic(n)
    for rank in range(world):
        s = RankStream(table, seed, rank, world)
        per = n // world
        for c in [0, 1, per - 1, per, 2 * per + 5, 3 * per + per - 1]:
            epoch, offset = divmod(c, per)
            old = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)[rank + offset * world]
            assert s.global_index(c) == old, (rank, c)
    # one epoch on all ranks: disjoint, n // world each
    taken = [
        RankStream(table, seed, r, world).global_index(c) for r in range(world) for c in range(n // world)
    ]
    assert len(set(taken)) == len(taken) == (n // world) * world


def test_resume_seeks_by_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.stream as stream_mod

    table = _synthetic(1000)
    a = RankStream(table, 3, 1, 2)
    ref = [a.global_index(c) for c in range(0, 2600)]  # five epochs and a bit
    built: list[int] = []
    real = stream_mod.rank_slice
    monkeypatch.setattr(stream_mod, "rank_slice", lambda *a: built.append(a[2]) or real(*a))
    b = RankStream(table, 3, 1, 2)
    assert [b.global_index(c) for c in range(2345, 2355)] == ref[2345:2355]
    assert built == [4]  # only the epoch of the position: nothing before it is replayed
    assert b.position(2345).to_json() == {
        "consumed": 2345,
        "epoch": 4,
        "offset": 345,
        "world_size": 2,
        "rank": 1,
        "samples_per_rank_epoch": 500,
    }


def test_workers_get_the_file_not_the_rows(tiny: dict[str, Any]) -> None:
    table = SampleTable.build(str(tiny["shards"]), "train")
    stream = RankStream(table, 0, 0, 1)
    stream.global_index(0)
    clone = pickle.loads(pickle.dumps(stream))
    assert clone.table._cols is None and len(clone._slice) == 0  # re-mapped and computed on demand
    assert [clone.raw(c)["__key__"] for c in range(5)] == [stream.raw(c)["__key__"] for c in range(5)]


def _copy_stage(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_index_files_are_named_in_the_error(tiny: dict[str, Any], tmp_path: Path) -> None:
    stage = _copy_stage(tiny["shards"], tmp_path / "tiny")
    index_file = stage / "__index__" / "train.json"
    table_file = stage / "__index__" / _index(stage)["sample_table"]["name"]
    # truncated table
    data = table_file.read_bytes()
    table_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=str(table_file)):
        SampleTable.build(str(stage), "train")
    # missing table
    table_file.unlink()
    with pytest.raises(FileNotFoundError, match=str(table_file)):
        SampleTable.build(str(stage), "train")
    # malformed index
    index_file.write_text('{"schema_version": "shard_index.v1", "shards": 3')
    with pytest.raises(ValueError, match=str(index_file)):
        SampleTable.build(str(stage), "train")


def test_a_rewritten_shard_is_caught_by_the_key_hash(tiny: dict[str, Any], tmp_path: Path) -> None:
    stage = _copy_stage(tiny["shards"], tmp_path / "tiny")
    shards = sorted((stage / "train").glob("*.tar"))
    shards[0].write_bytes(shards[1].read_bytes())  # same layout, other samples
    stream = RankStream(SampleTable.build(str(stage), "train"), 0, 0, 1)
    cols = stream.table.columns
    first = int(np.flatnonzero(cols.shard == 0)[0])
    c = next(c for c in range(7) if stream.global_index(c) == first)
    with pytest.raises(ValueError, match=r"000000\.tar.*re-run vjp shard"):
        stream.raw(c)


def test_an_old_index_is_scanned_once_and_kept(
    tiny: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stage = _copy_stage(tiny["shards"], tmp_path / "tiny")
    index_file = stage / "__index__" / "train.json"
    old = _index(stage)
    (stage / "__index__" / old.pop("sample_table")["name"]).unlink()
    index_file.write_text(json.dumps(old))
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="training.stream"):
        scanned = SampleTable.build(str(stage), "train", str(cache))
    assert "no sample table" in caplog.text and "vjp shard" in caplog.text
    assert scanned.path is not None and Path(scanned.path).parent == cache
    new = SampleTable.build(str(tiny["shards"]), "train")
    for c in ("shard", "offset", "size", "key_hash"):
        assert np.array_equal(getattr(scanned.columns, c), getattr(new.columns, c))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.stream"):
        SampleTable.build(str(stage), "train", str(cache))
    assert "no sample table" not in caplog.text  # the second build maps the kept table


def test_storage_options_refuse_credentials() -> None:
    from curation.configfile import ConfigError
    from training.data.stages import parse_config

    with pytest.raises(ConfigError, match=r"storage_options\.client_kwargs\.aws_secret_access_key") as e:
        parse_config({"storage_options": {"client_kwargs": {"aws_secret_access_key": "SECRETX"}}})
    assert "SECRETX" not in str(e.value)
    ok = parse_config({"storage_options": {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}})
    assert ok.storage_options["client_kwargs"]["endpoint_url"].endswith(":9000")


def test_old_sample_tables_are_pruned_keeping_the_previous_one(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Each rerun that changes a split writes a new content-named table; the one the replaced index
    named stays (a reader may have read that index just before), older ones go, other splits' and
    foreign files stay."""
    from training.data.sample_format import read_index
    from training.data.shard_writer import read_record, write_split_index

    stage = _copy_stage(tiny["shards"], tmp_path / "shards" / "tiny")
    meta = stage / "__index__"
    index = read_index(meta / "train.json")
    records = {e.name: read_record(str(stage.parent), "tiny", "train", e.name) for e in index.shards}
    assert len(index.shards) >= 3 and all(records.values())
    t0 = index.sample_table.name  # type: ignore[union-attr]
    (meta / "val.samples.0123456789abcdef.arrow").write_bytes(b"other split")
    (meta / "train.samples.notahash.arrow").write_bytes(b"not a table name")
    reader = SampleTable.build(str(stage), "train")  # maps t0

    def commit(k: int) -> str:
        sub = index.model_copy(
            update={"shards": index.shards[:k], "samples": sum(e.samples for e in index.shards[:k])}
        )
        return write_split_index(str(stage), sub, records).sample_table.name  # type: ignore[union-attr]

    t1 = commit(len(index.shards) - 1)
    assert t1 != t0 and (meta / t0).exists() and (meta / t1).exists()
    t2 = commit(len(index.shards) - 2)
    tables = sorted(p.name for p in meta.glob("train.samples.*.arrow"))
    assert tables == sorted([t1, t2, "train.samples.notahash.arrow"])
    assert (meta / "val.samples.0123456789abcdef.arrow").exists()
    # Same content again: the replaced index named t2 too, so t1 is no longer anyone's previous.
    assert commit(len(index.shards) - 2) == t2
    assert sorted(p.name for p in meta.glob("train.samples.*.arrow")) == sorted(
        [t2, "train.samples.notahash.arrow"]
    )
    # A reader that mapped t0 before it was removed still reads it (POSIX keeps the inode).
    assert len(reader.columns) == index.samples and int(reader.columns.size.sum()) > 0
