"""Parquet manifests: Arrow schemas derived from the record models, atomic part files, readers."""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import BaseModel

from curation.atomic import atomic_output
from curation.records import ClipRow, ClipScores, ThumbRow, VideoRow

_SCALARS: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    bytes: pa.binary(),
}


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


def write_table_atomic(rows: Iterable[dict[str, Any]], schema: pa.Schema, path: str) -> None:
    """Validate rows against their model and write them via a temporary name.

    Validation on write means a manifest never holds a row its JSON Schema rejects, and
    defaults (schema_version...) are filled in one place. A reader never sees a half part.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    model = _MODELS.get(id(schema))
    if model is not None:
        rows = [model.model_validate(r).model_dump() for r in rows]
    table = pa.Table.from_pylist(list(rows), schema=schema)
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_rows(folder: str, schema: pa.Schema | None = None) -> list[dict[str, Any]]:
    """All rows of a manifest folder (hidden temporaries are ignored by pyarrow.dataset)."""
    if not os.path.isdir(folder):
        return []
    files = sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.endswith(".parquet") and not f.startswith(".")
    )
    if not files:
        return []
    return ds.dataset(files, format="parquet", schema=schema).to_table().to_pylist()


def read_one(path: str) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist() if os.path.exists(path) else []
