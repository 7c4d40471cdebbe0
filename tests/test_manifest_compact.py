"""Compact manifests: parts -> few files, safe to kill at any step, readers that take every layout;
the columnar decision equals the row-wise one."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.config import FilterConfig, SplitConfig
from curation.decide import decide_clips, decide_table
from curation.manifest import (
    SCORES_SCHEMA,
    THUMB_SCHEMA,
    committed_files,
    compact,
    read_rows,
    write_table_atomic,
)


def _thumbs(folder: Path, vid: str, n: int, tag: str = "a") -> None:
    rows = [{"video_id": vid, "clip_id": f"{vid}_{tag}{j}", "jpeg": tag.encode()} for j in range(n)]
    write_table_atomic(rows, THUMB_SCHEMA, str(folder / f"{vid}.parquet"))


def _ids(folder: Path) -> set[str]:
    return {r["clip_id"] for r in read_rows(str(folder))}


def test_parts_compact_into_few_files_with_the_same_rows(tmp_path: Path) -> None:
    for i in random.Random(2).sample(range(30), 30):
        _thumbs(tmp_path, f"v{i:03d}", 3)
    before = _ids(tmp_path)
    stats = compact(str(tmp_path), THUMB_SCHEMA, sort_by=("video_id", "clip_id"), rows_per_file=40)
    assert stats == {"read": 30, "written": 3, "rows": 90}
    assert committed_files(str(tmp_path)) == [f"c-000001-0000{i}.parquet" for i in range(3)]
    assert sorted(os.listdir(tmp_path)) == ["_compact-000001.json", *committed_files(str(tmp_path))]
    assert _ids(tmp_path) == before
    # Globally sorted across the files (an external sort: the files were written in any order).
    order = [
        r["clip_id"] for n in committed_files(str(tmp_path)) for r in pq.read_table(tmp_path / n).to_pylist()
    ]
    assert order == sorted(before)
    assert compact(str(tmp_path), THUMB_SCHEMA)["written"] == 0  # nothing new: nothing rewritten


def test_a_newer_part_replaces_its_video_as_a_whole(tmp_path: Path) -> None:
    for i in range(3):
        _thumbs(tmp_path, f"v{i}", 3)
    compact(str(tmp_path), THUMB_SCHEMA)
    _thumbs(tmp_path, "v1", 1, tag="new")  # v1 processed again (other settings): one clip now
    expected = {"v0_a0", "v0_a1", "v0_a2", "v1_new0", "v2_a0", "v2_a1", "v2_a2"}
    assert _ids(tmp_path) == expected
    compact(str(tmp_path), THUMB_SCHEMA)
    assert _ids(tmp_path) == expected and len(committed_files(str(tmp_path))) == 1


def test_a_compaction_killed_at_any_step_reads_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import curation.atomic as atomic

    for i in range(4):
        _thumbs(tmp_path, f"v{i}", 2)
    expected = _ids(tmp_path)
    real_write, real_remove = atomic.write_bytes, atomic.remove

    class Killed(Exception):
        pass

    # Killed before the commit record: new files exist but are not committed.
    monkeypatch.setattr(atomic, "write_bytes", lambda *a: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        compact(str(tmp_path), THUMB_SCHEMA)
    assert any(n.startswith("c-") for n in os.listdir(tmp_path))
    assert _ids(tmp_path) == expected and len(committed_files(str(tmp_path))) == 4
    # Killed after the record, with one replaced part removed and the others still there.
    monkeypatch.setattr(atomic, "write_bytes", real_write)
    calls = []

    def remove_once(path: str) -> None:
        calls.append(path)
        if len(calls) > 1:
            raise Killed()
        real_remove(path)

    monkeypatch.setattr(atomic, "remove", remove_once)
    with pytest.raises(Killed):
        compact(str(tmp_path), THUMB_SCHEMA)
    record = json.loads((tmp_path / "_compact-000002.json").read_text())
    assert record["replaces"] and len(os.listdir(tmp_path)) > 2
    assert _ids(tmp_path) == expected and committed_files(str(tmp_path)) == record["files"]
    # The next compaction (a resume) only finishes the clean-up.
    monkeypatch.setattr(atomic, "remove", real_remove)
    assert compact(str(tmp_path), THUMB_SCHEMA)["written"] == 0
    assert sorted(os.listdir(tmp_path)) == ["_compact-000002.json", "c-000002-00000.parquet"]
    assert json.loads((tmp_path / "_compact-000002.json").read_text())["replaces"] == []
    assert _ids(tmp_path) == expected


def test_old_layout_and_hidden_temporaries(tmp_path: Path) -> None:
    _thumbs(tmp_path, "v0", 2)
    (tmp_path / ".v1.parquet.tmp-123").write_bytes(b"half a file")
    (tmp_path / "c-000009-00000.parquet").write_bytes(b"uncommitted")
    assert _ids(tmp_path) == {"v0_a0", "v0_a1"}
    compact(str(tmp_path), THUMB_SCHEMA)
    assert not [n for n in os.listdir(tmp_path) if "tmp" in n or n.startswith("c-000009")]


def _score_row(rng: random.Random, i: int) -> dict:
    def maybe(lo: float, hi: float) -> float | None:
        return None if rng.random() < 0.1 else rng.uniform(lo, hi)

    vid = f"v{i % 7}"
    base = rng.getrandbits(63)  # stored as int64
    return {
        "clip_id": f"{vid}_{i:07d}_{i + 50:07d}", "video_id": vid, "source": "files",
        "start_frame": i, "end_frame": i + 50, "start_s": 0.0, "end_s": 2.0,
        "duration_s": rng.choice([1.0, 2.0, 4.0]), "n_frames": 50, "fps": 25.0, "width": 320, "height": 240,
        "shot_index": 0, "window_index": 0, "n_samples": 4,
        "motion": maybe(0, 0.08), "luma_mean": maybe(0, 255), "luma_std": maybe(0, 60),
        "luma_p99": maybe(0, 255), "dark_fraction": maybe(0, 1), "sharpness": maybe(0, 200),
        "text_fraction": maybe(0, 0.2), "border_fraction": rng.uniform(0, 0.5),
        "crop_top": rng.choice([0.0, 0.1, 0.3]), "crop_bottom": 0.0, "crop_left": rng.choice([0.0, 0.2]),
        "crop_right": 0.0,
        # Near-duplicates: a few clips share hashes up to a bit or two.
        "phashes": [base if rng.random() < 0.7 else (0xF0F0 ^ (1 << rng.randrange(3))) for _ in range(3)],
        "analysis_hash": "h", "package_version": "0",
    }  # fmt: skip


def test_columnar_decisions_equal_the_row_wise_ones() -> None:
    rng = random.Random(0)
    rows = [_score_row(rng, i) for i in range(500)]
    # Re-encodes of 100 clips: one bit off on every frame, ids sorting before or after the original.
    rows += [
        {**r, "clip_id": ("a" if k % 2 else "w") + r["clip_id"], "phashes": [h ^ 1 for h in r["phashes"]]}
        for k, r in enumerate(rows[:100])
    ]
    split, filters = SplitConfig(), FilterConfig()
    videos = {f"v{k}": {"width": 320, "height": 240} for k in range(7)}
    expected = {r["clip_id"]: r for r in decide_clips([dict(r) for r in rows], videos, split, filters)}
    table = pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)
    got = decide_table(table, np.full(600, 320.0), np.full(600, 240.0), split, filters).to_pylist()
    assert len({r["status"] for r in got}) == 2 and any(r["duplicate_of"] for r in got)
    for r in got:
        e = expected[r["clip_id"]]
        assert (r["status"], r["reason"], r["failed_checks"], r["duplicate_of"]) == (
            e["status"], e["reason"], e["failed_checks"], e["duplicate_of"],
        ), r["clip_id"]  # fmt: skip
    # Row order does not matter (the columnar dedup sorts candidates by clip id itself), nor chunking.
    perm = list(range(600))
    rng.shuffle(perm)
    shuffled = pa.concat_tables([table.take(perm[:250]), table.take(perm[250:])])
    again = decide_table(shuffled, np.full(600, 320.0), np.full(600, 240.0), split, filters).to_pylist()
    assert sorted(again, key=lambda r: r["clip_id"]) == sorted(got, key=lambda r: r["clip_id"])
    assert sum(1 for r in got if r["duplicate_of"]) >= 4  # the passing re-encodes lose to their originals


def test_reading_scores_of_many_parts_and_compacted_files_agree(tmp_path: Path) -> None:
    rng = random.Random(1)
    rows = [_score_row(rng, i) for i in range(200)]
    for vid in {r["video_id"] for r in rows}:
        write_table_atomic(
            [r for r in rows if r["video_id"] == vid], SCORES_SCHEMA, str(tmp_path / f"{vid}.parquet")
        )
    before = sorted(read_rows(str(tmp_path), SCORES_SCHEMA), key=lambda r: r["clip_id"])
    compact(str(tmp_path), SCORES_SCHEMA, sort_by=("video_id", "clip_id"))
    assert sorted(read_rows(str(tmp_path), SCORES_SCHEMA), key=lambda r: r["clip_id"]) == before


def test_many_small_parts_compact_into_whole_row_groups(tmp_path: Path) -> None:
    # Per-video parts (the local runner writes one per video): the compacted file has row groups of
    # many parts, not one per part (tiny row groups made the compaction of 10k parts cost GBs).
    for i in range(300):
        _thumbs(tmp_path, f"v{i:04d}", 2)
    before = sorted(r["clip_id"] for r in read_rows(str(tmp_path)))
    compact(str(tmp_path), THUMB_SCHEMA, sort_by=("video_id", "clip_id"))
    names = [n for n in os.listdir(tmp_path) if n.startswith("c-")]
    assert len(names) == 1 and pq.ParquetFile(tmp_path / names[0]).num_row_groups == 1
    rows = read_rows(str(tmp_path))
    assert [r["clip_id"] for r in rows] == before  # sorted by video, then clip


def test_small_pieces_are_gathered_while_they_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Thousands of one-video pieces held until a row group's worth has gathered cost ~20 kB of C++
    # objects each (outside the Arrow pool): they are merged every _GATHER_PIECES, so the compaction
    # holds a few tables, not one per part; rows, order and row groups are unchanged.
    import curation.manifest as manifest

    for i in range(200):
        _thumbs(tmp_path, f"v{i:04d}", 2)
    before = sorted(r["clip_id"] for r in read_rows(str(tmp_path)))
    monkeypatch.setattr(manifest, "_GATHER_PIECES", 16)
    sizes: list[int] = []
    real = pa.concat_tables

    def spy(tables: list[pa.Table], *a: object, **k: object) -> pa.Table:
        sizes.append(len(tables))
        return real(tables, *a, **k)

    monkeypatch.setattr(pa, "concat_tables", spy)
    compact(str(tmp_path), THUMB_SCHEMA, sort_by=("video_id", "clip_id"))
    monkeypatch.setattr(pa, "concat_tables", real)
    assert sizes and max(sizes) <= 16 + 200 // 16  # never the 200 pieces at once
    names = [n for n in os.listdir(tmp_path) if n.startswith("c-")]
    assert len(names) == 1 and pq.ParquetFile(tmp_path / names[0]).num_row_groups == 1
    assert [r["clip_id"] for r in read_rows(str(tmp_path))] == before


@pytest.mark.parametrize("batch_parts", [False, True])
def test_spills_are_sorted_a_bucket_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_parts: bool
) -> None:
    # Rows reach an output's spill in any order: Ray's batch parts are named by a hash of their
    # videos, each holding videos from all over the key range. Each output is sorted one position
    # bucket (at most a row group) at a time, never read back whole; the rows come out in key order.
    import curation.manifest as manifest

    monkeypatch.setattr(manifest, "ROW_GROUP_ROWS", 8)
    if batch_parts:
        for b in range(5):
            rows = [{"video_id": f"v{i:03d}", "clip_id": f"v{i:03d}_a{j}", "jpeg": b"a"}
                    for i in range(b, 20, 5) for j in range(2)]  # fmt: skip
            write_table_atomic(rows, THUMB_SCHEMA, str(tmp_path / f"batch-{b}.parquet"))
    else:
        for i in range(20):
            _thumbs(tmp_path, f"v{i:03d}", 2)
    sizes: list[int] = []
    real = manifest._sorted_buckets

    def spy(spills: list[str]) -> Iterator[pa.Table]:
        for t in real(spills):
            sizes.append(t.num_rows)
            yield t

    monkeypatch.setattr(manifest, "_sorted_buckets", spy)
    compact(str(tmp_path), THUMB_SCHEMA, sort_by=("video_id", "clip_id"))
    assert sizes == [8] * 5  # 40 rows, buckets of 8 positions: never the whole output at once
    (name,) = committed_files(str(tmp_path))
    got = pq.read_table(tmp_path / name)
    assert got.schema.names == THUMB_SCHEMA.names  # the spill's __pos column is gone
    assert got.column("clip_id").to_pylist() == sorted(f"v{i:03d}_a{j}" for i in range(20) for j in range(2))
    assert not [n for n in os.listdir(tmp_path) if n.startswith("batch-") or n.startswith("v0")]


def test_large_rows_close_row_groups_by_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Thumbnails: a row group closes at _GROUP_BYTES, so no copy of a whole output file is made.
    import curation.manifest as manifest

    monkeypatch.setattr(manifest, "_GROUP_BYTES", 4_000)
    for i in range(40):
        rows = [{"video_id": f"v{i:03d}", "clip_id": f"v{i:03d}_{j}", "jpeg": bytes(500)} for j in range(2)]
        write_table_atomic(rows, THUMB_SCHEMA, str(tmp_path / f"v{i:03d}.parquet"))
    compact(str(tmp_path), THUMB_SCHEMA, sort_by=("video_id", "clip_id"))
    (name,) = committed_files(str(tmp_path))
    pf = pq.ParquetFile(tmp_path / name)
    assert pf.num_row_groups >= 80 * 500 // 4_000 - 1
    assert pf.read().column("clip_id").to_pylist() == [f"v{i:03d}_{j}" for i in range(40) for j in range(2)]
