"""Scores -> verdicts. Pure and cheap: changing a threshold re-decides from stored scores."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from curation.config import FilterConfig, SplitConfig
from curation.scores.phash import near_duplicates

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
