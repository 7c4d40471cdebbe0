"""`finevideo:PATH`: HuggingFaceFV/finevideo parquet shards, streamed row by row.

Each row holds a whole mp4 (`mp4`, binary) and Gemini/GPT-4o metadata (`json`, a struct; a JSON
string is accepted too). Rows are read with `iter_batches(batch_size=1)`, so memory holds at most one
row group's column chunk (pyarrow's unit of I/O), never a whole shard.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from curation.sources.base import SplitHint, VideoItem
from curation.sources.files import full_url, has_magic, list_files, open_fs

log = logging.getLogger(__name__)

_COLUMNS = ("mp4", "json")
_SHARD_PATTERNS = ("data/train-*.parquet", "train-*.parquet", "data/*.parquet", "*.parquet")
_TOP_FIELDS = (
    "youtube_title",
    "youtube_categories",
    "youtube_tags",
    "youtube_channel",
    "youtube_upload_date",
    "content_parent_category",
    "content_fine_category",
    "duration_seconds",
    "resolution",
    "original_video_filename",
)
_CONTENT_FIELDS = ("title", "description", "fps")  # from content_metadata, stored as content_<field>
_NUMBER = re.compile(r"^\d+(\.\d*)?$|^\.\d+$")


# ------------------------------------------------------------------------------------------ timestamps


def parse_timestamp(value: Any) -> float | None:
    """Seconds from "HH:MM:SS.mmm", "MM:SS.mmm", "SS.mmm" (',' also as decimal mark) or a number.

    Returns None for anything else (negative, non-finite, malformed): a bad scene is skipped, the
    row is kept.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_clock(value.strip().replace(",", "."))
        if seconds is None:
            return None
    else:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _parse_clock(text: str) -> float | None:
    fields = text.split(":")
    if not 1 <= len(fields) <= 3:
        return None
    *whole, last = fields
    if not _NUMBER.match(last) or not all(f.isdigit() for f in whole):
        return None
    seconds = float(last)
    for i, f in enumerate(reversed(whole)):
        seconds += int(f) * 60 ** (i + 1)
    return seconds


# ------------------------------------------------------------------------------------------- metadata


def jsonable(value: Any) -> Any:
    """`value` with everything `json.dumps` rejects turned into strings (and NaN/inf into None)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def parse_row_json(value: Any) -> dict[str, Any]:
    """The `json` cell as a dict: struct cells arrive as dicts, string cells are decoded."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


def scenes_and_hints(content: dict[str, Any]) -> tuple[list[dict[str, Any]], list[SplitHint], int]:
    """Valid scenes (seconds), one hint per valid scene, and how many scenes were skipped."""
    scenes: list[dict[str, Any]] = []
    hints: list[SplitHint] = []
    skipped = 0
    raw_scenes = content.get("scenes")
    for scene in raw_scenes if isinstance(raw_scenes, list) else []:
        stamps = scene.get("timestamps") if isinstance(scene, dict) else None
        if not isinstance(stamps, dict):
            skipped += 1
            continue
        start = parse_timestamp(stamps.get("start_timestamp"))
        end = parse_timestamp(stamps.get("end_timestamp"))
        if start is None or end is None or end <= start:
            skipped += 1
            continue
        title = scene.get("title") if isinstance(scene.get("title"), str) else ""
        scenes.append(
            {
                "sceneId": jsonable(scene.get("sceneId")),
                "title": title,
                "start": start,
                "end": end,
                "dynamismScore": jsonable(scene.get("dynamismScore")),
            }
        )
        hints.append(SplitHint(start, end, unit="s", label=title))
    return scenes, hints, skipped


def row_meta(info: dict[str, Any], shard: str, row: int) -> tuple[dict[str, Any], list[SplitHint]]:
    meta: dict[str, Any] = {"shard": shard, "row": row}
    for name in _TOP_FIELDS:
        if name in info:
            meta[name] = jsonable(info[name])
    content = info.get("content_metadata")
    content = content if isinstance(content, dict) else {}
    for name in _CONTENT_FIELDS:
        meta[f"content_{name}"] = jsonable(content.get(name))
    scenes, hints, skipped = scenes_and_hints(content)
    meta["scenes"] = scenes
    meta["skipped_scenes"] = skipped
    return meta, hints


# ------------------------------------------------------------------------------------------------ shards


def find_shards(fs: AbstractFileSystem, path: str) -> list[str]:
    """Parquet shards named by a glob, a single file, a `data/` folder or the folder holding `data/`."""
    if has_magic(path):
        shards = [p for p in list_files(fs, path) if p.endswith(".parquet")]
    elif fs.isfile(path):
        shards = [path]
    else:
        shards = []
        for pattern in _SHARD_PATTERNS:
            shards = list_files(fs, f"{path}/{pattern}")
            if shards:
                break
    if not shards:
        raise FileNotFoundError(f"finevideo source: no parquet shards at {path}")
    names = [_base_name(s) for s in shards]
    if len(set(names)) != len(names):
        # Keys are "<shard file name>#<row>"; two shards with one name would share video ids.
        raise ValueError(
            f"finevideo source: several shards share a file name under {path}; use a narrower glob"
        )
    return sorted(shards, key=_base_name)


def _base_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


class FineVideoSource:
    name = "finevideo"

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})

    def iter_items(self) -> Iterator[VideoItem]:
        fs, path = open_fs(self.url, self.storage_options)
        for shard in find_shards(fs, path):
            yield from self._iter_shard(fs, shard)

    def _iter_shard(self, fs: AbstractFileSystem, shard: str) -> Iterator[VideoItem]:
        name = _base_name(shard)
        url = full_url(fs, shard)
        row = 0
        with fs.open(shard, "rb") as f:
            try:
                parquet = pq.ParquetFile(f)
                columns = [c for c in _COLUMNS if c in parquet.schema_arrow.names]
                if "mp4" not in columns:
                    raise ValueError("no 'mp4' column")
                batches = parquet.iter_batches(batch_size=1, columns=columns)
            except Exception as exc:  # any unreadable footer/schema: report the shard, go on
                yield self._shard_error(name, url, row, exc)
                return
            while True:
                try:
                    batch = next(batches, None)
                except Exception as exc:  # a damaged page mid-shard: keep the rows already yielded
                    yield self._shard_error(name, url, row, exc)
                    return
                if batch is None:
                    return
                for i in range(batch.num_rows):
                    yield self._row_item(batch, i, name, url, row)
                    row += 1

    def _row_item(self, batch: Any, i: int, shard: str, url: str, row: int) -> VideoItem:
        mp4 = batch.column("mp4")[i].as_py()
        raw_json = batch.column("json")[i].as_py() if "json" in batch.schema.names else None
        meta, hints = row_meta(parse_row_json(raw_json), shard, row)
        data = bytes(mp4) if mp4 else None
        return VideoItem(
            source=self.name,
            key=f"{shard}#{row}",
            uri=f"{url}#{row}",
            data=data,
            meta=meta,
            hints=hints,
            error=None if data else "row has no mp4 bytes",
        )

    def _shard_error(self, shard: str, url: str, row: int, exc: Exception) -> VideoItem:
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("finevideo shard %s unreadable after %d rows: %s", shard, row, reason)
        return VideoItem(
            source=self.name,
            key=f"{shard}#<unreadable>",
            uri=url,
            meta={"shard": shard, "row": row},
            error=f"parquet shard {shard} is unreadable after {row} rows: {reason}",
        )
