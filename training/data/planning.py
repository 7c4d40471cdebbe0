"""Shard planning at corpus scale: columnar inputs, lazy sample plans, the same plans as plan_sample.

Millions of kept clips: the clip rows stay one Arrow table (the columns planning reads), the latest
captions another, grouped by clip row (offsets), and a planned sample keeps a row number. Its
SampleMeta is built when something needs it (rendering, the plan hash) by the same functions that
`shard_writer.plan_sample` uses (precheck, place, build_meta), so a lazy plan and an eager one are
equal field for field (tests/test_shard_planning.py). Types are checked once per column when the
tables are read (`check_columns`), and each row is validated by pydantic when its meta is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.data.sample_format import CaptionVariant, SampleMeta, SkipReason
from training.data.shard_writer import (
    SCORE_COLUMNS,
    ClipProbe,
    PlanContext,
    SamplePlan,
    build_meta,
    place,
    plan_context,
    precheck,
    split_of,
)
from training.data.stages import ShardConfig

# The clip manifest columns a sample plan reads (those absent from a manifest are left out, as
# plan_sample leaves out a score its row does not have).
PLAN_COLUMNS = (
    "clip_id",
    "video_id",
    "source",
    "clip_path",
    "start_s",
    "end_s",
    "width",
    "height",
    "decision_hash",
    "crop_top",
    "crop_bottom",
    "crop_left",
    "crop_right",
    "source_caption",
    *SCORE_COLUMNS,
)
VARIANT_COLUMNS = tuple(CaptionVariant.model_fields)
# What planning itself reads of a clip row (precheck, place and the plan's key, split and path):
# only these become Python values while planning; the meta is built later from the whole row.
CHECK_COLUMNS = (
    "clip_id",
    "video_id",
    "clip_path",
    "source_caption",
    "crop_top",
    "crop_bottom",
    "crop_left",
    "crop_right",
)
CHUNK_ROWS = 32_768  # rows turned into Python objects at a time during planning


def check_columns(table: pa.Table, required: Sequence[str], what: str) -> None:
    """Bulk validation at the boundary: required columns present and without nulls."""
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}")
    nulls = [c for c in required if table.column(c).null_count]
    if nulls:
        raise ValueError(f"{what} has null values in required columns {nulls}")


class _Pick(NamedTuple):
    """What pick_caption reads of a caption (status, text), without a pydantic model."""

    caption: str | None
    status: str


class CaptionTable:
    """The latest caption row per (clip, type), grouped by the rows of a sorted clip table.

    `captions` holds at most one row per (clip_id, caption_type), as `read_captions(latest=True)`
    returns them; rows of clips not in `clip_ids` are dropped.
    """

    def __init__(self, captions: pa.Table, clip_ids: pa.Array | pa.ChunkedArray) -> None:
        n = len(clip_ids)
        cols = ["caption_type", *VARIANT_COLUMNS]
        self._columns: dict[str, pa.Array] | None = None
        if captions.num_rows == 0:
            self.table = pa.table({c: pa.array([], pa.string()) for c in cols})
            self.offsets = np.zeros(n + 1, dtype=np.int64)
            return
        check_columns(captions, ["clip_id", "caption_type", "status"], "caption manifest")
        ids = clip_ids.combine_chunks() if isinstance(clip_ids, pa.ChunkedArray) else clip_ids
        row = pc.index_in(captions.column("clip_id"), value_set=ids)
        row_np = row.to_numpy(zero_copy_only=False)
        row_np = np.where(row.is_null().to_numpy(zero_copy_only=False), -1, row_np).astype(np.int64)
        keep = np.nonzero(row_np >= 0)[0]
        # Stable: within a clip, rows stay in caption_type order (the order plan_sample's dict had).
        order = keep[np.argsort(row_np[keep], kind="stable")]
        present = [c for c in cols if c in captions.column_names]
        self.table = captions.select(present).take(pa.array(order, type=pa.int64()))
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(row_np[order], minlength=n), out=self.offsets[1:])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_columns": None}  # a cache of views of `table`: rebuilt on use

    def spans(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the caption rows of clip rows `idx`, clip by clip; the number of captions per clip)."""
        lo, hi = self.offsets[idx], self.offsets[idx + 1]
        counts = hi - lo
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
        return starts + np.arange(int(counts.sum()), dtype=np.int64), counts

    def subset(self, idx: np.ndarray) -> CaptionTable:
        """The captions of clip rows `idx`, grouped by their positions in `idx`."""
        cap_idx, counts = self.spans(idx)
        out = CaptionTable.__new__(CaptionTable)
        out._columns = None
        out.table = self.table.take(pa.array(cap_idx, type=pa.int64()))
        out.offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=out.offsets[1:])
        return out

    def picks(self, lo: int, hi: int) -> list[dict[str, _Pick]]:
        """For clip rows [lo, hi): {caption_type: (caption, status)}."""
        a, b = int(self.offsets[lo]), int(self.offsets[hi])
        part = self.table.slice(a, b - a)
        types = part.column("caption_type").to_pylist()
        caps = part.column("caption").to_pylist()
        status = part.column("status").to_pylist()
        out: list[dict[str, _Pick]] = []
        for i in range(lo, hi):
            s, e = int(self.offsets[i]) - a, int(self.offsets[i + 1]) - a
            out.append({types[k]: _Pick(caps[k], status[k]) for k in range(s, e)})
        return out

    def variants(self, i: int) -> dict[str, CaptionVariant]:
        """The validated caption variants of clip row i, by type."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        if self._columns is None:
            self._columns = {
                n: c.chunk(0) if c.num_chunks == 1 else c.combine_chunks()
                for n, c in zip(self.table.column_names, self.table.columns, strict=True)
            }
        out: dict[str, CaptionVariant] = {}
        for k in range(a, b):
            r = {name: col[k].as_py() for name, col in self._columns.items()}
            ctype = r.pop("caption_type")
            out[ctype] = CaptionVariant.model_validate(r)
        return out


ProbeOf = Callable[[str], "ClipProbe | SkipReason"]


class ProbeColumns:
    """The probes of planned clip rows as arrays, indexed by clip row (a row not planned reads as
    zeros): what a shard task needs to rebuild a meta, shipped with the plan source once instead of
    a Python object per clip."""

    FIELDS = ("width", "height", "n_frames", "fps", "size_bytes")
    DTYPES: ClassVar[dict[str, Any]] = {"fps": np.float64, "size_bytes": np.int64}  # the rest fit int32

    def __init__(self, n: int, rows: Sequence[int] = (), probes: Sequence[ClipProbe] = ()) -> None:
        idx = np.asarray(rows, dtype=np.int64)
        for name in self.FIELDS:
            col = np.zeros(n, dtype=self.DTYPES.get(name, np.int32))
            col[idx] = [getattr(p, name) for p in probes]
            setattr(self, name, col)

    def subset(self, idx: np.ndarray) -> ProbeColumns:
        out = ProbeColumns.__new__(ProbeColumns)
        for name in self.FIELDS:
            setattr(out, name, getattr(self, name)[idx])
        return out

    def get(self, row: int) -> ClipProbe:
        return ClipProbe(
            width=int(self.width[row]),  # type: ignore[attr-defined]
            height=int(self.height[row]),  # type: ignore[attr-defined]
            n_frames=int(self.n_frames[row]),  # type: ignore[attr-defined]
            fps=float(self.fps[row]),  # type: ignore[attr-defined]
            size_bytes=int(self.size_bytes[row]),  # type: ignore[attr-defined]
        )


class PlanSource:
    """Shared inputs of lazy plans: rebuilds the meta of one clip row on demand.

    After `plan_samples` its probes are columns (`probes`), and the whole source pickles as a few
    Arrow tables and numpy arrays: `vjp shard` sends it to the workers once (`ray.put`) and each
    shard task builds its own metas from row numbers (`plans`)."""

    def __init__(
        self, clips: pa.Table, captions: CaptionTable, probe_of: ProbeOf | None, ctx: PlanContext
    ) -> None:
        self.clips = clips
        # One contiguous array per column: a row is read by index, no per-row table slice. A column
        # of one chunk is used as is (combine_chunks would copy it: the whole clip table, GBs).
        self._columns = {
            name: col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
            for name, col in zip(clips.column_names, clips.columns, strict=True)
        }
        self.captions = captions
        self.probe_of = probe_of
        self.probes: ProbeColumns | None = None
        self.ctx = ctx

    def __reduce__(self) -> tuple[Any, ...]:
        if self.probes is None:  # a callable over a dict of probes is not shipped to workers
            raise TypeError("a PlanSource is sent to workers only with its probe columns (plan_samples)")
        return (_restore_source, (self.clips, self.captions, self.probes, self.ctx))

    def subset(self, rows: Sequence[int]) -> PlanSource:
        """A source of these rows only, numbered 0.. in the given order: what one shard task needs."""
        if self.probes is None:
            raise TypeError("a PlanSource is cut only with its probe columns (plan_samples)")
        idx = np.asarray(rows, dtype=np.int64)
        out = PlanSource(self.clips.take(pa.array(idx)), self.captions.subset(idx), None, self.ctx)
        out.probes = self.probes.subset(idx)
        return out

    def _probe(self, row: int, clip_id: str) -> ClipProbe | SkipReason:
        if self.probes is not None:
            return self.probes.get(row)
        assert self.probe_of is not None
        return self.probe_of(clip_id)

    def metas(self, rows: Sequence[int]) -> list[SampleMeta]:
        """meta(i) for many rows at once: one take per table instead of a lookup per value (a
        shard task builds the metas of its samples in one call)."""
        idx = np.asarray(rows, dtype=np.int64)
        clips = self.clips.take(pa.array(idx)).to_pylist()
        cap_idx, counts = self.captions.spans(idx)
        cap_rows = self.captions.table.take(pa.array(cap_idx)).to_pylist() if len(cap_idx) else []
        out: list[SampleMeta] = []
        k = 0
        for row, clip, n in zip(idx.tolist(), clips, counts.tolist(), strict=True):
            variants: dict[str, CaptionVariant] = {}
            for r in cap_rows[k : k + n]:
                ctype = r.pop("caption_type")
                variants[ctype] = CaptionVariant.model_validate(r)
            k += n
            out.append(self._build(clip, variants, row))
        return out

    def plans(self, rows: Sequence[int]) -> list[SamplePlan]:
        """Eager plans of these rows (metas built in bulk), equal to the lazy ones planning made."""
        out = []
        for row, meta in zip(np.asarray(rows, dtype=np.int64).tolist(), self.metas(rows), strict=True):
            probe = self._probe(row, meta.clip_id)
            assert not isinstance(probe, str)
            out.append(SamplePlan(meta, meta.clip.clip_path, probe.size_bytes))
        return out

    def _build(self, clip: dict[str, Any], variants: dict[str, CaptionVariant], row: int) -> SampleMeta:
        probe = self._probe(row, clip["clip_id"])
        picked = precheck(clip, variants, probe, self.ctx.captions)
        if isinstance(picked, str) or isinstance(probe, str):
            raise RuntimeError(f"clip {clip['clip_id']}: its inputs changed after planning ({picked})")
        placed = place(clip, probe, self.ctx)
        if isinstance(placed, str):
            raise RuntimeError(f"clip {clip['clip_id']}: its inputs changed after planning ({placed})")
        return build_meta(clip, variants, probe, self.ctx, picked, placed)

    def clip(self, i: int) -> dict[str, Any]:
        return {name: col[i].as_py() for name, col in self._columns.items()}

    def meta(self, i: int) -> SampleMeta:
        return self._build(self.clip(i), self.captions.variants(i), i)


def _restore_source(
    clips: pa.Table, captions: CaptionTable, probes: ProbeColumns, ctx: PlanContext
) -> PlanSource:
    source = PlanSource(clips, captions, None, ctx)
    source.probes = probes
    return source


class Skip(NamedTuple):
    clip_id: str
    video_id: str
    reason: SkipReason


def plan_samples(
    clips: pa.Table,
    captions: CaptionTable,
    probe_of: ProbeOf,
    stage_name: str,
    cfg: ShardConfig,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[list[SamplePlan], list[Skip]]:
    """plan_sample for every row of `clips` (sorted by clip_id), as lazy plans; (plans, skips) in
    row order. The checks run now on plain values; metas are built later, by the shard tasks."""
    check_columns(clips, ["clip_id", "video_id", "clip_path"], "clip manifest")
    clips = clips.combine_chunks()  # one chunk per column: rows are then read by index (PlanSource)
    ctx = plan_context(stage_name, cfg)
    source = PlanSource(clips, captions, probe_of, ctx)
    plans: list[SamplePlan] = []
    skips: list[Skip] = []
    checked = clips.select([c for c in CHECK_COLUMNS if c in clips.column_names])
    # Reading the manifests leaves freed Arrow buffers the allocator keeps (GBs at millions of
    # clips); hand them back before the plans' Python objects are made.
    pa.default_memory_pool().release_unused()
    prev_vid = ""
    planned_probes: list[ClipProbe] = []
    for lo in range(0, clips.num_rows, chunk_rows):
        hi = min(lo + chunk_rows, clips.num_rows)
        rows = checked.slice(lo, hi - lo).to_pylist()
        picks = captions.picks(lo, hi)
        for k, clip in enumerate(rows):
            if clip["video_id"] == prev_vid:  # a video's clips are neighbours (sorted ids): one string
                clip["video_id"] = prev_vid
            prev_vid = clip["video_id"]
            probe = probe_of(clip["clip_id"])
            picked = precheck(clip, picks[k], probe, ctx.captions)
            if isinstance(picked, str):
                skips.append(Skip(clip["clip_id"], clip["video_id"], picked))
                continue
            assert not isinstance(probe, str)
            placed = place(clip, probe, ctx)
            if isinstance(placed, str):
                skips.append(Skip(clip["clip_id"], clip["video_id"], placed))
                continue
            vid = clip["video_id"]
            split = split_of(vid, ctx.split)
            cid, path = clip["clip_id"], clip["clip_path"]
            plans.append(SamplePlan.lazy(source, lo + k, cid, split, vid, path, probe.size_bytes))
            planned_probes.append(probe)
    # The probes of planned rows as columns: the source no longer needs the caller's lookup and
    # can be shipped to shard tasks whole.
    source.probes = ProbeColumns(clips.num_rows, [p._row for p in plans], planned_probes)
    source.probe_of = None
    return plans, skips
