"""Scores -> verdicts. Pure and cheap: changing a threshold re-decides from stored scores."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.config import FilterConfig, SplitConfig
from curation.scores.phash import duplicate_roots, near_duplicates

# Order matters: the first failing check is the recorded reason, cheapest and most basic first.
REASONS = (
    "too_short",
    "low_resolution",
    "bad_aspect",
    "black",
    "too_dark",
    "washed_out",
    "static",
    "too_fast_or_shaky",
    "blurry",
    "letterbox_too_large",
    "burnt_in_text",
    "near_duplicate",
)


def content_size(row: dict[str, Any], width: int, height: int) -> tuple[float, float]:
    """Width and height left after the recorded letterbox/pillarbox crop."""
    cw = width * (1.0 - (row.get("crop_left") or 0.0) - (row.get("crop_right") or 0.0))
    ch = height * (1.0 - (row.get("crop_top") or 0.0) - (row.get("crop_bottom") or 0.0))
    return cw, ch


def failing_checks(
    row: dict[str, Any], width: int, height: int, split: SplitConfig, f: FilterConfig
) -> list[str]:
    """Every check the clip fails, in REASONS order (a score that is None fails no check)."""

    def lt(key: str, bound: float) -> bool:
        v = row.get(key)
        return v is not None and v < bound

    def gt(key: str, bound: float) -> bool:
        v = row.get(key)
        return v is not None and v > bound

    def ge(key: str, bound: float) -> bool:
        v = row.get(key)
        return v is not None and v >= bound

    cw, ch = content_size(row, width, height)
    aspect = cw / ch if ch > 0 else 0.0
    checks = {
        "too_short": row["duration_s"] < split.min_clip_s - 1e-6,
        "low_resolution": min(cw, ch) < f.min_short_side,
        "bad_aspect": not (f.min_aspect <= aspect <= f.max_aspect),
        # A low mean alone is not enough: black needs nearly every pixel near-black, too_dark needs the
        # highlights dark as well (a lit face in a low-key shot is a picture). A score that is None
        # (rows written before it existed) does not block the check.
        "black": lt("luma_mean", f.black_luma_max) and not lt("dark_fraction", f.black_dark_fraction_min),
        "too_dark": lt("luma_mean", f.dark_luma_max) and not ge("luma_p99", f.dark_highlight_max),
        "washed_out": gt("luma_mean", f.washed_luma_min) and lt("luma_std", f.washed_std_max),
        "static": lt("motion", f.static_motion_max),
        "too_fast_or_shaky": gt("motion", f.shaky_motion_min),
        "blurry": lt("sharpness", f.blur_min),
        "letterbox_too_large": gt("border_fraction", f.border_fraction_max),
        "burnt_in_text": gt("text_fraction", f.text_fraction_max),
    }
    return [r for r in REASONS if checks.get(r)]


def decide_clips(
    rows: Iterable[dict[str, Any]], videos: dict[str, dict[str, Any]], split: SplitConfig, f: FilterConfig
) -> list[dict[str, Any]]:
    """Verdicts for every candidate clip of the job, near-duplicates resolved across all videos.

    `videos` maps video_id to its video row (displayed width/height). Only clips that pass every
    other check compete in deduplication, so a rejected clip never knocks out a good one.
    """
    out: list[dict[str, Any]] = []
    for r in rows:
        v = videos[r["video_id"]]
        fails = failing_checks(r, v["width"], v["height"], split, f)
        out.append({**r, "failed_checks": fails})
    survivors = [(r["clip_id"], list(r["phashes"])) for r in out if not r["failed_checks"] and r["phashes"]]
    dup_of = near_duplicates(survivors, f.dedup_max_distance)
    for r in out:
        if r["clip_id"] in dup_of:
            r["failed_checks"] = [*r["failed_checks"], "near_duplicate"]
        r["duplicate_of"] = dup_of.get(r["clip_id"])
        r["status"] = "rejected" if r["failed_checks"] else "kept"
        r["reason"] = r["failed_checks"][0] if r["failed_checks"] else None
    return out


# ---------------------------------------------------------------- columnar (corpus scale)


def _col(table: pa.Table, name: str) -> np.ndarray:
    """A float column as numpy with None -> NaN (NaN fails every comparison, like None above)."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def failing_matrix(
    table: pa.Table, width: np.ndarray, height: np.ndarray, split: SplitConfig, f: FilterConfig
) -> np.ndarray:
    """[rows, len(REASONS)] booleans, the vectorised twin of `failing_checks` (same rules, same
    order; near_duplicate is left False here)."""
    crop = {k: np.nan_to_num(_col(table, k)) for k in ("crop_left", "crop_right", "crop_top", "crop_bottom")}
    cw = width * (1.0 - crop["crop_left"] - crop["crop_right"])
    ch = height * (1.0 - crop["crop_top"] - crop["crop_bottom"])
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.where(ch > 0, cw / np.where(ch > 0, ch, 1.0), 0.0)
    luma, motion = _col(table, "luma_mean"), _col(table, "motion")
    checks = {
        "too_short": _col(table, "duration_s") < split.min_clip_s - 1e-6,
        "low_resolution": np.minimum(cw, ch) < f.min_short_side,
        "bad_aspect": ~((f.min_aspect <= aspect) & (aspect <= f.max_aspect)),
        "black": (luma < f.black_luma_max) & ~(_col(table, "dark_fraction") < f.black_dark_fraction_min),
        "too_dark": (luma < f.dark_luma_max) & ~(_col(table, "luma_p99") >= f.dark_highlight_max),
        "washed_out": (luma > f.washed_luma_min) & (_col(table, "luma_std") < f.washed_std_max),
        "static": motion < f.static_motion_max,
        "too_fast_or_shaky": motion > f.shaky_motion_min,
        "blurry": _col(table, "sharpness") < f.blur_min,
        "letterbox_too_large": _col(table, "border_fraction") > f.border_fraction_max,
        "burnt_in_text": _col(table, "text_fraction") > f.text_fraction_max,
    }
    false = np.zeros(table.num_rows, dtype=bool)
    return (
        np.stack([checks.get(r, false) for r in REASONS], axis=1)
        if table.num_rows
        else np.zeros((0, len(REASONS)), dtype=bool)
    )


def reason_lists(mat: np.ndarray, labels: tuple[str, ...] = REASONS) -> pa.Array:
    """Row-wise lists of the labels whose column is True (in label order)."""
    rows, cols = np.nonzero(mat)  # row-major: each row's reasons come out in REASONS order
    offsets = np.zeros(mat.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=mat.shape[0]), out=offsets[1:])
    values = pc.take(pa.array(labels, type=pa.string()), pa.array(cols.astype(np.int64)))
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def decide_table(
    scores: pa.Table, width: np.ndarray, height: np.ndarray, split: SplitConfig, f: FilterConfig
) -> pa.Table:
    """`decide_clips` for an Arrow table of score rows (width/height: the video's, per row).

    Adds failed_checks, duplicate_of, status and reason; millions of rows without a dict per row.
    """
    mat = failing_matrix(scores, width, height, split, f)
    n = scores.num_rows
    passing = ~mat.any(axis=1)
    ph = scores.column("phashes")
    has_ph = (pc.list_value_length(ph).to_numpy(zero_copy_only=False) > 0) if n else passing
    cand = np.nonzero(passing & has_ph)[0]
    duplicate_of = _dedup(scores.column("clip_id"), ph, cand, f.dedup_max_distance, mat, n)
    failed = mat.any(axis=1)
    reasons = pa.array(REASONS, type=pa.string())
    first = (
        pc.take(reasons, pa.array(mat.argmax(axis=1).astype(np.int64), mask=~failed)) if n else reasons[:0]
    )
    status = pc.if_else(pa.array(failed), "rejected", "kept") if n else pa.array([], pa.string())
    reason = first
    return (
        scores.append_column("failed_checks", reason_lists(mat))
        .append_column("duplicate_of", duplicate_of)
        .append_column("status", status)
        .append_column("reason", reason)
    )


def near_duplicate_of(ids: pa.Array, phashes: pa.Array, max_distance: int) -> np.ndarray:
    """For each candidate clip (ids[i], its frame hashes phashes[i]): the index in `ids` of the clip
    that survives its near-duplicate group, or -1 when it survives itself (the smallest clip id of a
    group survives). Same groups as near_duplicates, on arrays."""
    if not len(ids):
        return np.empty(0, dtype=np.int64)
    order = pc.sort_indices(ids).to_numpy()  # clip id order: the smallest index of a group survives
    ids = ids.take(pa.array(order))
    if len(ids) > 1 and pc.any(pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1))).as_py():
        raise ValueError("clip ids must be unique")
    lengths = pc.list_value_length(phashes).to_numpy(zero_copy_only=False)
    n_frames = int(lengths[0])
    if n_frames == 0 or (lengths != n_frames).any():
        raise ValueError("every clip needs the same, non-zero number of hashes")
    values = pc.list_flatten(phashes).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    root = duplicate_roots(values.reshape(len(ids), n_frames)[order], max_distance)
    losers = np.nonzero(root != np.arange(len(root)))[0]
    out = np.full(len(ids), -1, dtype=np.int64)
    out[order[losers]] = order[root[losers]]
    return out


def _dedup(
    clip_id: pa.ChunkedArray,
    phashes: pa.ChunkedArray,
    cand: np.ndarray,
    max_distance: int,
    mat: np.ndarray,
    n: int,
) -> pa.Array:
    """near_duplicates over the candidate rows, columnar: marks the losers' near_duplicate column in
    `mat` and returns the duplicate_of column (null for every other row)."""
    if not n:
        return pa.array([], pa.string())
    take = pa.array(cand, type=pa.int64())
    ids = clip_id.take(take).combine_chunks()
    dup = near_duplicate_of(ids, phashes.take(take).combine_chunks(), max_distance)
    losers = np.nonzero(dup >= 0)[0]
    mat[cand[losers], REASONS.index("near_duplicate")] = True
    dup_idx = np.full(n, -1, dtype=np.int64)
    dup_idx[cand[losers]] = dup[losers]
    return pc.take(ids, pa.array(dup_idx, mask=dup_idx < 0))
