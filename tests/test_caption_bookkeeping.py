"""Caption bookkeeping at corpus scale: kept clips stay Arrow (ClipRows), and pending work is the
same as from a list of dicts (the per-row path it replaces)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from captioning.manifest import ARROW_SCHEMA, ClipRows, pending_mask, pending_work, read_kept_clips
from tests.caption_fixtures import make_clip_manifest


def _captions(rows: list[tuple[str, str, str]]) -> pa.Table:
    full = []
    for k, (cid, ctype, status) in enumerate(rows):
        r = {n: None for n in ARROW_SCHEMA.names}
        r.update(
            schema_version="caption_row.v1", clip_id=cid, caption_type=ctype, caption="説明", model_id="m",
            backend="b", prompt_id="p", prompt_version=1, sampling_params="{}", status=status, tries=1,
            backend_attempts=1, config_hash="h" if k % 4 else "old", package_version="0", run_id="r",
            created_at=datetime(2026, 1, 1, 0, k % 60, tzinfo=timezone.utc),
        )  # fmt: skip
        full.append(r)
    return pa.Table.from_pylist(full, schema=ARROW_SCHEMA)


def _pending_work_before(clips, captions, caption_types, retry_rejected, current_hash=None):  # type: ignore[no-untyped-def]
    """pending_work as it was (a dict per clip in, a dict per pending clip out): the reference."""
    types = list(caption_types)
    ids = pa.array([c["clip_id"] for c in clips], type=pa.string())
    masks = pending_mask(ids, captions, types, retry_rejected, current_hash)
    out = []
    for i, clip in enumerate(clips):
        todo = [t for t in types if masks[t][i]]
        if todo:
            out.append({**clip, "caption_types": todo})
    return out


def test_clip_rows_behave_as_the_list_of_dicts(tmp_path: Path) -> None:
    ids = [f"c{i:03d}_0_1" for i in range(40)]
    make_clip_manifest(
        tmp_path, [{"clip_id": c} for c in ids[::-1]] + [{"clip_id": "r_0_1", "status": "rejected"}]
    )
    clips = read_kept_clips(tmp_path / "manifests" / "clips")
    assert isinstance(clips, ClipRows) and len(clips) == 40
    as_list = list(clips)
    assert [c["clip_id"] for c in as_list] == ids and clips == as_list and clips[-1] == as_list[-1]
    assert clips[3:9] == as_list[3:9] and clips[::7] == as_list[::7] and clips[:0] == [] and not clips[:0]
    assert "caption_types" not in clips[0] and clips[0]["clip_path"] == as_list[0]["clip_path"]

    statuses = ["ok", "rejected", "error"]
    caps = _captions(
        [(c, t, statuses[(i + len(t)) % 3]) for i, c in enumerate(ids) if i % 5 for t in ("short", "dense")]
    )
    for retry in (False, True):
        for current in (None, "h"):
            got = pending_work(clips, caps, ["dense", "short"], retry, current)
            assert got == _pending_work_before(as_list, caps, ["dense", "short"], retry, current)
            assert got == pending_work(as_list, caps, ["dense", "short"], retry, current)
            assert got and all(w["caption_types"] for w in got)
    assert pending_work(clips, caps, [], False) == []
