"""Caption manifest: row model, Parquet part files, reading clips and earlier captions.

OUT/manifests/captions/ is a Parquet dataset of part files, one per batch, each written to a
hidden temp name and renamed (pyarrow.dataset skips names starting with '.' or '_'). Nothing is
rewritten: a rerun adds parts, and readers keep the latest row per (clip_id, caption_type) — use
`read_captions(..., latest=True)`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from captioning.config import CaptionConfig
from curation.atomic import atomic_output

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
def resolve_layout(clips_arg: str | Path) -> tuple[Path, Path, Path]:
    """(OUT, clips manifest dir, captions manifest dir) from `--clips`.

    Accepts OUT/manifests (the documented form), OUT/manifests/clips, or OUT itself.
    """
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
def _dataset(path: Path) -> ds.Dataset | None:
    if not path.is_dir() or not any(path.glob("*.parquet")):
        return None
    return ds.dataset(str(path), format="parquet")


def read_kept_clips(clips_dir: Path) -> list[dict[str, Any]]:
    """Kept clip rows (the columns captioning relies on; missing optional ones become None)."""
    dset = _dataset(clips_dir)
    if dset is None:
        raise FileNotFoundError(f"no parquet parts in {clips_dir}")
    cols = [c for c in CLIP_COLUMNS if c in dset.schema.names]
    missing = {"clip_id", "status", "clip_path"} - set(cols)
    if missing:
        raise ValueError(f"clip manifest {clips_dir} lacks columns {sorted(missing)}")
    table = dset.to_table(columns=cols, filter=ds.field("status") == "kept")
    rows = table.to_pylist()
    for r in rows:
        for c in CLIP_COLUMNS:
            r.setdefault(c, None)
    rows.sort(key=lambda r: r["clip_id"])
    return rows


def read_captions(captions_dir: Path, latest: bool = True) -> pa.Table:
    """All caption rows, or (latest=True) the newest row per (clip_id, caption_type)."""
    dset = _dataset(captions_dir)
    if dset is None:
        return ARROW_SCHEMA.empty_table()
    table = dset.to_table()
    if not latest or table.num_rows == 0:
        return table
    table = table.sort_by(
        [("clip_id", "ascending"), ("caption_type", "ascending"), ("created_at", "descending")]
    )
    keys = list(
        zip(table.column("clip_id").to_pylist(), table.column("caption_type").to_pylist(), strict=True)
    )
    keep = [i for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    return table.take(pa.array(keep, type=pa.int64()))


def pending_work(
    clips: list[dict[str, Any]],
    captions: pa.Table,
    caption_types: Iterable[str],
    retry_rejected: bool,
    current_hash: str | None = None,
) -> list[dict[str, Any]]:
    """Clips that still need captions, each with `caption_types` = the types to (re)do.

    Done = latest row ok (or rejected, unless retry_rejected). Errors and missing types are redone.
    With current_hash, rows written under another config hash (model, prompts, ...) are redone too.
    """
    done_status = {"ok"} if retry_rejected else {"ok", "rejected"}
    done: set[tuple[str, str]] = set()
    if captions.num_rows:
        for cid, ctype, st, h in zip(
            captions.column("clip_id").to_pylist(),
            captions.column("caption_type").to_pylist(),
            captions.column("status").to_pylist(),
            captions.column("config_hash").to_pylist(),
            strict=True,
        ):
            if st in done_status and (current_hash is None or h == current_hash):
                done.add((cid, ctype))
    types = list(caption_types)
    out = []
    for clip in clips:
        todo = [t for t in types if (clip["clip_id"], t) not in done]
        if todo:
            out.append({**clip, "caption_types": todo})
    return out


# ---- writing ----------------------------------------------------------------------------------
def rows_to_table(rows: list[CaptionRow]) -> pa.Table:
    return pa.Table.from_pylist([r.model_dump() for r in rows], schema=ARROW_SCHEMA)


def write_part(rows: list[CaptionRow], captions_dir: Path, run_id: str, batch_key: str) -> Path | None:
    """Write one part file atomically (temp name + rename). Returns its path, or None if no rows."""
    if not rows:
        return None
    final = captions_dir / f"part-{run_id}-{batch_key}.parquet"
    with atomic_output(final) as tmp:
        pq.write_table(rows_to_table(rows), tmp)
    return final
