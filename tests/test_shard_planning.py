"""Columnar shard planning (training.data.planning) gives the same plans as plan_sample, row by row.

The reference is the per-row path the job used before: `read_kept_clips` (a dict per clip),
`read_caption_variants` (a pydantic model per caption) and `plan_sample` per clip. The columnar path
(`read_kept_table`, `read_caption_table`, `plan_samples`) must yield equal metas, skip reasons,
shards and plan hashes, including after a pickle round trip (what a Ray task receives).
"""

from __future__ import annotations

import math
import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from captioning.manifest import ARROW_SCHEMA as CAPTION_SCHEMA
from curation.manifest import CLIP_SCHEMA
from jobs.shard import read_caption_table, read_caption_variants, read_kept_clips, read_kept_table
from training.data.planning import plan_samples
from training.data.shard_writer import ClipProbe, fingerprints, group_shards, plan_sample
from training.data.stages import parse_config


def _clip(i: int) -> dict:
    vid = f"vid{i // 3:04d}"
    cid = f"{vid}_{i:07d}_{i + 48:07d}"
    if i == 7:
        cid = "bad.key_0000007"  # unsafe: skipped as unsafe_key
    row = {name: None for name in CLIP_SCHEMA.names}
    row.update(
        clip_id=cid, video_id=vid, source="files", status="kept" if i % 11 else "rejected",
        clip_path=None if i == 5 else f"clips/{cid}.mp4", start_s=i * 0.5, end_s=i * 0.5 + 4.0,
        width=640, height=360, fps=24.0, duration_s=4.0, n_frames=96, decision_hash="d0",
        crop_top=0.1 if i % 4 == 0 else 0.0, crop_bottom=0.0, crop_left=0.05 if i % 6 == 0 else None,
        crop_right=0.0, motion=0.01 * i, luma_mean=100.0 + i, sharpness=math.nan if i == 9 else 50.0 + i,
        text_fraction=0.0, border_fraction=0.0, phashes=[1, 2, 3], failed_checks=[],
    )  # fmt: skip
    return row


def _caption(cid: str, ctype: str, status: str, text: str | None, age: int) -> dict:
    row = {name: None for name in CAPTION_SCHEMA.names}
    row.update(
        schema_version="caption_row.v1", clip_id=cid, video_id=cid[:7], caption_type=ctype, caption=text,
        model_id="tiny", backend="transformers", prompt_id="p", prompt_version=1, sampling_params="{}",
        status=status, tries=1, backend_attempts=1, config_hash="h", package_version="0", run_id="r",
        japanese_ratio=0.9, length=len(text or ""), truncated=False,
        created_at=datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=age),
    )  # fmt: skip
    return row


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    clips = [_clip(i) for i in range(60)]
    # Clip files in a shuffled order: both readers sort by clip id.
    (tmp_path / "clips").mkdir()
    table = pa.Table.from_pylist(clips[::-1], schema=CLIP_SCHEMA)
    pq.write_table(table.slice(0, 30), tmp_path / "clips" / "a.parquet")
    pq.write_table(table.slice(30), tmp_path / "clips" / "b.parquet")
    caps = []
    for i, c in enumerate(clips):
        cid = c["clip_id"]
        if i % 5 == 1:
            continue  # no caption at all: no_caption
        caps.append(_caption(cid, "short", "ok", f"短い説明{i}。", 0))
        if i % 3 == 0:
            caps.append(_caption(cid, "dense", "rejected", "だめ", 1))
        elif i % 3 == 1:
            caps.append(_caption(cid, "dense", "error", None, 1))
            caps.append(_caption(cid, "dense", "ok", f"詳しい説明{i}。", 2))  # a later row wins
        if i % 7 == 0:
            caps.append(_caption(cid, "short", "ok", "   ", 5))  # latest short is blank: not usable
    caps.append(_caption("nokept_0000000_0000048", "short", "ok", "孤児", 0))  # a clip not in the manifest
    (tmp_path / "captions").mkdir()
    ct = pa.Table.from_pylist(caps, schema=CAPTION_SCHEMA)
    pq.write_table(ct.slice(0, 40), tmp_path / "captions" / "part-1.parquet")
    pq.write_table(ct.slice(40), tmp_path / "captions" / "part-2.parquet")
    return tmp_path


def _probe(cid: str) -> ClipProbe | str:
    n = int(cid[-2:]) if cid[-2:].isdigit() else 0
    if n % 13 == 0:
        return "missing_file"
    if n % 17 == 0:  # too few frames for the window
        return ClipProbe(width=640, height=360, n_frames=10, fps=24.0, size_bytes=1000 + n)
    return ClipProbe(width=640, height=360, n_frames=96 + n, fps=24.0 if n % 2 else 30.0, size_bytes=1000 + n)


@pytest.mark.parametrize("fallback", ["none", "source_caption"])
def test_columnar_plans_equal_per_row_plans(corpus: Path, fallback: str) -> None:
    cfg = parse_config(
        {
            "seed": 3,
            "captions": {"types": ["dense", "short"], "fallback": fallback},
            "stages": {"s": {"width": 128, "height": 128, "frames": 16, "fps": 12.0, "max_shard_samples": 4}},
        }
    )
    # Before: a dict per clip, a pydantic model per caption, plan_sample per clip.
    rows = read_kept_clips(corpus / "clips")
    variants = read_caption_variants(corpus / "captions")
    old = {
        c["clip_id"]: plan_sample(c, variants.get(c["clip_id"], {}), _probe(c["clip_id"]), "s", cfg)
        for c in rows
    }

    table = read_kept_table(corpus / "clips")
    captions = read_caption_table(corpus / "captions", table.column("clip_id"))
    plans, skips = plan_samples(table, captions, _probe, "s", cfg, chunk_rows=7)

    assert table.column("clip_id").to_pylist() == [c["clip_id"] for c in rows]
    assert {s.clip_id: s.reason for s in skips} == {k: v for k, v in old.items() if isinstance(v, str)}
    reasons = set(v for v in old.values() if isinstance(v, str))
    assert {"unsafe_key", "no_caption", "missing_file", "too_short"} <= reasons  # every path exercised
    eager = [v for v in old.values() if not isinstance(v, str)]
    assert len(plans) == len(eager) > 10
    for lazy, ref in zip(plans, eager, strict=True):
        assert lazy._meta is None  # lazy: built on access, not kept
        assert (lazy.key, lazy.split, lazy.video_id) == (ref.key, ref.meta.split, ref.meta.video_id)
        assert lazy.fingerprint() == ref.fingerprint()
        assert lazy == ref
        assert pickle.loads(pickle.dumps(lazy)) == ref  # a task gets the built meta
    assert any(p.meta.captions.get("dense") and p.meta.captions["dense"].status == "ok" for p in plans)
    assert fingerprints(plans) == [p.fingerprint() for p in eager]
    # Metas built in bulk (what fingerprints does for 32+ lazy plans of one source) equal them too.
    assert plans[0]._source.metas([p._row for p in plans]) == [p.meta for p in eager]
    new_shards = group_shards(plans, 4, cfg.seed)
    old_shards = group_shards(eager, 4, cfg.seed)
    assert [(s.split, s.name, s.plan_hash) for s in new_shards] == [
        (s.split, s.name, s.plan_hash) for s in old_shards
    ]


def test_captions_without_manifest_and_bad_rows(tmp_path: Path, corpus: Path) -> None:
    table = read_kept_table(corpus / "clips")
    empty = read_caption_table(tmp_path / "nothing", table.column("clip_id"))
    cfg = parse_config({"stages": {"s": {"width": 64, "height": 64, "frames": 8}}})
    plans, skips = plan_samples(table, empty, _probe, "s", cfg)
    assert plans == [] and {s.reason for s in skips} <= {"unsafe_key", "no_caption"}
    with pytest.raises(ValueError, match="null values in required columns"):
        plan_samples(
            table.set_column(1, "video_id", pa.nulls(table.num_rows, pa.string())), empty, _probe, "s", cfg
        )


def test_sample_rows_table_and_counts_as_the_dicts_were() -> None:
    from jobs.shard import SampleRows

    rows = SampleRows()
    ref: dict[str, dict] = {}
    entries = [
        ("c9", "v1", "train", "no_caption", None, True),
        ("c2", "v0", "eval", "too_short", None, True),
        ("c5", "v2", "train", None, "train/000000.tar", True),
        ("c1", "v2", "train", "decode_error", None, True),
        ("c7", "v3", "eval", "shard_failed", None, False),
        ("c3", "v3", "eval", None, "eval/000000.tar", True),
    ]
    for cid, vid, split, reason, shard, ok in entries:
        rows.add(cid, vid, split, reason, shard, ok=ok)
        status = "written" if reason is None else ("skipped" if ok else "failed")
        ref[cid] = dict(clip_id=cid, video_id=vid, split=split, status=status, reason=reason, shard=shard)
    assert rows.table().to_pylist() == sorted(ref.values(), key=lambda r: r["clip_id"])
    assert rows.not_written("eval") == {"too_short": 1, "shard_failed": 1}
    assert rows.not_written() == {"no_caption": 1, "too_short": 1, "decode_error": 1, "shard_failed": 1}
    assert rows.written() == 2 and len(rows) == 6


@pytest.mark.parametrize(
    ("rel", "why"),
    [
        ("../x.mp4", "escapes the output root"),
        ("clips/../../x.mp4", "escapes the output root"),
        ("/etc/passwd", "is absolute"),
        ("s3://other-bucket/clips/x.mp4", "is a URL"),
        ("file:///etc/passwd", "is a URL"),
        ("clips\\..\\..\\x.mp4", "backslash"),
        ("", "is empty"),
    ],
)
def test_clip_paths_from_a_manifest_never_leave_the_output_root(rel: str, why: str) -> None:
    from training.data import store

    with pytest.raises(store.UnsafePath, match=why) as e:
        store.member("s3://bucket/out", rel, "s3://bucket/out/manifests/clips: clip c1")
    assert str(e.value).startswith("s3://bucket/out/manifests/clips: clip c1: path")
    # Paths inside the root resolve below it, for a URL and a folder alike.
    assert store.member("s3://bucket/out", "clips/./c1.mp4") == "s3://bucket/out/clips/c1.mp4"
    assert store.member("/data/out", "clips/a/../c1.mp4") == "/data/out/clips/c1.mp4"


def test_unsafe_clip_paths_are_refused_before_probing(corpus: Path) -> None:
    from jobs.shard import clip_locations

    table = read_kept_table(corpus / "clips")
    ids = table.column("clip_id").to_pylist()
    bad = {_clip(2)["clip_id"]: "../../etc/passwd", _clip(3)["clip_id"]: "gs://elsewhere/x.mp4"}  # captioned
    paths = [bad.get(c, p) for c, p in zip(ids, table.column("clip_path").to_pylist(), strict=True)]
    table = table.set_column(table.column_names.index("clip_path"), "clip_path", pa.array(paths))
    todo, refused, messages = clip_locations(table, "s3://b/out", "s3://b/out/manifests/clips", limit=1)
    assert refused == dict.fromkeys(bad, "unsafe_path")
    first = _clip(2)["clip_id"]  # sorts first
    assert messages == [f"s3://b/out/manifests/clips: clip {first}: path '../../etc/passwd' escapes the "
                        "output root; refused"]  # fmt: skip
    assert todo == [(c, f"s3://b/out/{p}") for c, p in zip(ids, paths, strict=True) if c not in bad]
    # The refused clips are planned as skipped with that reason.
    cfg = parse_config({"stages": {"s": {"width": 64, "height": 64, "frames": 8}}})
    captions = read_caption_table(corpus / "captions", table.column("clip_id"))
    probes = {**{c: ClipProbe(96, 64, 60, 24.0, 1000) for c in ids}, **refused}
    _, skips = plan_samples(table, captions, probes.__getitem__, "s", cfg)
    assert {s.clip_id: s.reason for s in skips if s.clip_id in bad} == dict.fromkeys(bad, "unsafe_path")
