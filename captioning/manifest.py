"""Caption manifest: row model, Parquet part files, reading clips and earlier captions.

OUT/manifests/captions/ is a manifest folder (curation.manifest): one part file per batch while
captioning runs (atomic: temp name + rename locally, one PUT on an object store), compacted into
few large files when a run ends and when the next one starts. Nothing is rewritten in place: a
rerun adds parts, compaction keeps every row, and readers keep the latest row per
(clip_id, caption_type) — use `read_captions(..., latest=True)`. OUT may be local or a URL
(s3://, gs://): paths are then strings, not pathlib.Path.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pydantic import BaseModel, ConfigDict, Field

from captioning.config import CaptionConfig
from curation import atomic
from curation.manifest import committed_files, compact, dataset_schema, read_table, write_parquet

SCHEMA_VERSION = "caption_row.v1"
CLIP_COLUMNS = [
    "clip_id",
    "video_id",
    "source",
    "status",
    "clip_path",
    "start_s",
    "end_s",
    "fps",
    "width",
    "height",
    "source_caption",
    "source_meta",
]


class CaptionRow(BaseModel):
    """One caption of one type for one clip (or the error/rejection that stands in for it)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal["caption_row.v1"] = SCHEMA_VERSION
    clip_id: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    video_id: str | None = None
    caption_type: str
    caption: str | None = Field(None, description="Post-processed caption; also kept when rejected.")
    raw_caption: str | None = Field(None, description="Model output before post-processing.")
    model_id: str
    model_revision: str | None = None
    backend: str
    prompt_id: str
    prompt_version: int
    sampling_params: str = Field(description="JSON of the sampling of the last try.")
    japanese_ratio: float | None = None
    kana_ratio: float | None = None
    has_kana: bool | None = None
    latin_ratio: float | None = None
    length: int | None = None
    repetition: float | None = None
    refusal: bool | None = None
    truncated: bool | None = None
    status: Literal["ok", "rejected", "error"]
    reason: str | None = Field(None, description="First QA failure or the error; null when ok.")
    tries: int = Field(ge=0, description="Generations made (QA retries included).")
    backend_attempts: int = Field(0, ge=0, description="Backend calls incl. transport retries.")
    tokens_in: int | None = None
    tokens_out: int | None = None
    num_frames: int | None = None
    frame_height: int | None = None
    frame_width: int | None = None
    sample_fps: float | None = None
    prep_s: float | None = None
    gen_s: float | None = None
    config_hash: str
    package_version: str
    run_id: str
    created_at: datetime


ARROW_SCHEMA = pa.schema(
    [
        ("schema_version", pa.string()),
        ("clip_id", pa.string()),
        ("video_id", pa.string()),
        ("caption_type", pa.string()),
        ("caption", pa.string()),
        ("raw_caption", pa.string()),
        ("model_id", pa.string()),
        ("model_revision", pa.string()),
        ("backend", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt_version", pa.int32()),
        ("sampling_params", pa.string()),
        ("japanese_ratio", pa.float32()),
        ("kana_ratio", pa.float32()),
        ("has_kana", pa.bool_()),
        ("latin_ratio", pa.float32()),
        ("length", pa.int32()),
        ("repetition", pa.float32()),
        ("refusal", pa.bool_()),
        ("truncated", pa.bool_()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("tries", pa.int32()),
        ("backend_attempts", pa.int32()),
        ("tokens_in", pa.int32()),
        ("tokens_out", pa.int32()),
        ("num_frames", pa.int32()),
        ("frame_height", pa.int32()),
        ("frame_width", pa.int32()),
        ("sample_fps", pa.float32()),
        ("prep_s", pa.float32()),
        ("gen_s", pa.float32()),
        ("config_hash", pa.string()),
        ("package_version", pa.string()),
        ("run_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)
assert ARROW_SCHEMA.names == list(CaptionRow.model_fields), "Arrow schema and CaptionRow drifted"


def json_schemas() -> dict[str, dict]:
    return {
        "caption_row.v1": CaptionRow.model_json_schema(),
        "caption_config.v1": CaptionConfig.model_json_schema(),
    }


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id() -> str:
    return now_utc().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


# ---- layout -----------------------------------------------------------------------------------
def resolve_layout(clips_arg: str | Path) -> tuple[Any, Any, Any]:
    """(OUT, clips manifest dir, captions manifest dir) from `--clips`.

    Accepts OUT/manifests (the documented form), OUT/manifests/clips, or OUT itself. Local
    folders come back as Path, URLs (s3://...) as strings.
    """
    if atomic.is_url(clips_arg):
        u = str(clips_arg).rstrip("/")
        base = posixpath.basename(u)
        if base == "clips" and posixpath.basename(posixpath.dirname(u)) == "manifests":
            manifests = posixpath.dirname(u)
        elif base == "manifests" and atomic.listdir(atomic.join(u, "clips")):
            manifests = u
        elif atomic.listdir(atomic.join(u, "manifests", "clips")):
            manifests = atomic.join(u, "manifests")
        else:
            raise FileNotFoundError(f"no clip manifest at {u} (expected OUT/manifests with a clips/ dataset)")
        return (
            posixpath.dirname(manifests),
            atomic.join(manifests, "clips"),
            atomic.join(manifests, "captions"),
        )
    p = Path(clips_arg)
    if (p / "clips").is_dir() and p.name == "manifests":
        manifests = p
    elif p.name == "clips" and p.parent.name == "manifests":
        manifests = p.parent
    elif (p / "manifests" / "clips").is_dir():
        manifests = p / "manifests"
    else:
        raise FileNotFoundError(f"no clip manifest at {p} (expected OUT/manifests with a clips/ dataset)")
    return manifests.parent, manifests / "clips", manifests / "captions"


# ---- reading ----------------------------------------------------------------------------------
class ClipRows(Sequence[dict[str, Any]]):
    """Clip rows as dicts made on access from an Arrow table: millions of kept clips cost their
    Arrow columns, not a dict each. Indexing, slicing, iteration and `==` against a list behave as
    a list of the same dicts would."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table.combine_chunks()

    def __len__(self) -> int:
        return self.table.num_rows

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> ClipRows: ...
    def __getitem__(self, i: int | slice) -> dict[str, Any] | ClipRows:
        if isinstance(i, slice):
            idx = range(len(self))[i]
            if idx.step == 1:
                return ClipRows(self.table.slice(idx.start, len(idx)))
            return ClipRows(self.table.take(pa.array(list(idx), type=pa.int64())))
        n = len(self)
        if not -n <= i < n:
            raise IndexError("clip row index out of range")
        return self.table.slice(i % n, 1).to_pylist()[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.table.to_batches(max_chunksize=_ROWS_PER_BATCH):
            yield from batch.to_pylist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ClipRows):
            return self.table.equals(other.table)
        if isinstance(other, list):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ClipRows({len(self)} rows)"


_ROWS_PER_BATCH = 8192


def read_kept_clips(clips_dir: str | Path) -> ClipRows:
    """Kept clip rows sorted by clip id (the columns captioning relies on; missing optional ones are
    None), as a sequence of dicts made on access."""
    folder = os.fspath(clips_dir)
    names = committed_files(folder)
    if not names:
        raise FileNotFoundError(f"no parquet parts in {clips_dir}")
    schema = dataset_schema(folder)
    cols = [c for c in CLIP_COLUMNS if c in schema.names]
    missing = {"clip_id", "status", "clip_path"} - set(cols)
    if missing:
        raise ValueError(f"clip manifest {clips_dir} lacks columns {sorted(missing)}")
    table = read_table(folder, columns=cols, group_key=None, filter=ds.field("status") == "kept")
    table = table.sort_by("clip_id")
    for c in CLIP_COLUMNS:
        if c not in table.column_names:
            table = table.append_column(c, pa.nulls(table.num_rows, pa.string()))
    return ClipRows(table.select(CLIP_COLUMNS))


def read_captions(
    captions_dir: str | Path, latest: bool = True, columns: list[str] | None = None
) -> pa.Table:
    """All caption rows, or (latest=True) the newest row per (clip_id, caption_type).

    `columns`: only these (plus the keys that pick the latest row) are read, so millions of
    captions need not load their raw outputs and sampling parameters."""
    if columns is not None:
        keys = ["clip_id", "caption_type", "created_at"]
        columns = [*keys, *(c for c in columns if c not in keys)]
    table = read_table(os.fspath(captions_dir), ARROW_SCHEMA, columns=columns, group_key=None)
    if not latest or table.num_rows == 0:
        return table
    table = table.sort_by(
        [("clip_id", "ascending"), ("caption_type", "ascending"), ("created_at", "descending")]
    )
    cid, ctype = table.column("clip_id").combine_chunks(), table.column("caption_type").combine_chunks()
    # First row of each (clip, type) run in sorted order: where either key differs from the previous row.
    first = np.ones(table.num_rows, dtype=bool)
    if table.num_rows > 1:
        same = pc.and_(
            pc.equal(cid.slice(1), cid.slice(0, len(cid) - 1)),
            pc.equal(ctype.slice(1), ctype.slice(0, len(ctype) - 1)),
        )
        first[1:] = ~same.to_numpy(zero_copy_only=False)
    return table.filter(pa.array(first))


def compact_captions(captions_dir: str | Path) -> dict[str, int]:
    """Merge the per-batch parts into few large files (every row kept, history included)."""
    return compact(
        os.fspath(captions_dir),
        ARROW_SCHEMA,
        group_key=None,
        sort_by=("clip_id", "caption_type", "created_at"),
    )


def pending_mask(
    clip_ids: pa.Array | pa.ChunkedArray,
    captions: pa.Table,
    caption_types: Iterable[str],
    retry_rejected: bool,
    current_hash: str | None = None,
) -> dict[str, np.ndarray]:
    """Per caption type, which clips still need it (Arrow hash joins: millions of clips, no dicts).

    Done = latest row ok (or rejected, unless retry_rejected). Errors and missing types are redone.
    With current_hash, rows written under another config hash (model, prompts, ...) are redone too.
    """
    done_status = pa.array(["ok"] if retry_rejected else ["ok", "rejected"])
    out: dict[str, np.ndarray] = {}
    for t in caption_types:
        if captions.num_rows == 0:
            out[t] = np.ones(len(clip_ids), dtype=bool)
            continue
        cond = pc.and_(
            pc.equal(captions.column("caption_type"), t), pc.is_in(captions.column("status"), done_status)
        )
        if current_hash is not None:
            cond = pc.and_(cond, pc.equal(captions.column("config_hash"), current_hash))
        done = captions.column("clip_id").filter(cond)
        out[t] = ~pc.is_in(clip_ids, value_set=done.combine_chunks()).to_numpy(zero_copy_only=False)
    return out


def pending_work(
    clips: Sequence[dict[str, Any]],
    captions: pa.Table,
    caption_types: Iterable[str],
    retry_rejected: bool,
    current_hash: str | None = None,
) -> list[dict[str, Any]]:
    """Clips that still need captions, each with `caption_types` = the types to (re)do.

    With ClipRows (read_kept_clips), only the pending clips become dicts."""
    types = list(caption_types)
    if isinstance(clips, ClipRows):
        ids = clips.table.column("clip_id")
    else:
        ids = pa.array([c["clip_id"] for c in clips], type=pa.string())
    masks = pending_mask(ids, captions, types, retry_rejected, current_hash)
    if not types:
        return []
    todo = np.stack([masks[t] for t in types], axis=1)
    rows = np.nonzero(todo.any(axis=1))[0]
    if isinstance(clips, ClipRows):
        picked: Iterable[dict[str, Any]] = ClipRows(clips.table.take(pa.array(rows, type=pa.int64())))
    else:
        picked = [clips[i] for i in rows.tolist()]
    out = []
    for i, clip in zip(rows.tolist(), picked, strict=True):
        out.append({**clip, "caption_types": [t for k, t in enumerate(types) if todo[i, k]]})
    return out


# ---- writing ----------------------------------------------------------------------------------
def rows_to_table(rows: list[CaptionRow]) -> pa.Table:
    return pa.Table.from_pylist([r.model_dump() for r in rows], schema=ARROW_SCHEMA)


def write_part(
    rows: list[CaptionRow], captions_dir: str | Path, run_id: str, batch_key: str
) -> str | Path | None:
    """Write one part file atomically (local: temp name + rename; object store: one PUT under its
    final, unique name). Returns its path, or None if no rows."""
    if not rows:
        return None
    name = f"part-{run_id}-{batch_key}.parquet"
    final = captions_dir / name if isinstance(captions_dir, Path) else atomic.join(captions_dir, name)
    write_parquet(rows_to_table(rows), os.fspath(final))
    return final
