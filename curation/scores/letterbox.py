"""Letterbox / pillarbox detection: uniform dark bars at the frame edges, per frame and per clip.

A row (column) belongs to a bar when nearly all of its pixels are dark (``<= dark_max``) and those dark
pixels are uniform (std ``<= uniform_std_max``). Using the dark pixels' spread rather than the whole row's
keeps a small logo or a few bright specks in a bar from breaking it, while a dark *textured* scene fails
on either test (it has brighter pixels, or its dark pixels vary). Bars are counted as runs of bar rows
starting at the edge. Left/right bars are measured only between the top and bottom bars, so windowboxed
frames (both kinds of bars) work.

A genuinely flat dark region at a frame edge (clear night sky, a black wall) is indistinguishable from a
bar in one frame; the per-clip median in :func:`aggregate_crop` removes it when the camera or content
moves, not in a static shot.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Share of a line's pixels allowed above dark_max: a channel logo or specks in a bar. Kept small because a
# dark scene with a few lights (night sky) would otherwise pass as a bar.
BRIGHT_ALLOWANCE = 0.05
# Bars on both sides covering more than this share of the height (width) is not a letterbox but a dark,
# flat frame (fade, title card on black): report no bars at all. A 9:16 video pillarboxed in 16:9
# has bars covering 68% of the width, so the limit sits above that.
MAX_BARS_SHARE = 0.8
# Block-transform ringing (low-bitrate H.264, JPEG) makes the last 1-3 bar lines next to the picture
# noisier: after the strict run, up to RINGING_SLACK lines that are still dark but have up to
# RINGING_STD_FACTOR times the allowed spread are added to the bar.
RINGING_SLACK = 3
RINGING_STD_FACTOR = 2.0
# Suggested per-clip threshold: crop when the aggregated crop removes at least this share of the area
# (1-2 px of dark edge is common in clean footage and not worth a crop).
BORDER_FRACTION_MIN = 0.02


def _bar_lines(
    gray: np.ndarray, axis: int, dark_max: int, uniform_std_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per row (axis=1) or per column (axis=0): (is a bar line, is a bar line up to codec ringing)."""
    g = gray.astype(np.float32)
    dark = (gray <= dark_max).astype(np.float32)
    gd = g * dark
    # cv2.reduce is several times faster than numpy's axis reductions on small uint8/float images.
    n = cv2.reduce(dark, axis, cv2.REDUCE_SUM).ravel()
    s1 = cv2.reduce(gd, axis, cv2.REDUCE_SUM).ravel()
    s2 = cv2.reduce(gd * g, axis, cv2.REDUCE_SUM).ravel()
    length = gray.shape[axis]  # pixels per line: a row has W of them, a column H
    safe_n = np.maximum(n, 1.0)
    mean = s1 / safe_n
    var = np.maximum(s2 / safe_n - mean * mean, 0.0)
    dark_enough = n >= (1.0 - BRIGHT_ALLOWANCE) * length
    strict = dark_enough & (var <= uniform_std_max * uniform_std_max)
    relaxed = dark_enough & (var <= (RINGING_STD_FACTOR * uniform_std_max) ** 2)
    return strict, relaxed


def _edge_run(mask: np.ndarray) -> int:
    """Length of the run of True at the start of ``mask``."""
    off = np.flatnonzero(~mask)
    return int(off[0]) if off.size else int(mask.size)


def _bar_size(strict: np.ndarray, relaxed: np.ndarray) -> int:
    """Bar length from the edge: the strict run, extended over up to RINGING_SLACK ringing lines."""
    run = _edge_run(strict)
    if run == 0 or run == strict.size:
        return run
    return run + _edge_run(relaxed[run : run + RINGING_SLACK])


def frame_borders(
    gray: np.ndarray, dark_max: int = 24, uniform_std_max: float = 6.0
) -> tuple[int, int, int, int]:
    """Sizes in pixels of uniform dark bars at ``(top, bottom, left, right)`` of a uint8 gray frame.

    0 where there is no bar. An (almost) uniformly dark frame returns all zeros: it is a black frame, which
    is the exposure score's business, not a letterbox. ``dark_max`` (0-255) is the brightest level a bar
    may have (covers full-range black 0 and limited-range black 16 plus noise); ``uniform_std_max`` is the
    largest std of a bar line's dark pixels (compression noise, film grain).
    """
    h, w = gray.shape[:2]
    rows, rows_relaxed = _bar_lines(gray, 1, dark_max, uniform_std_max)
    top = _bar_size(rows, rows_relaxed)
    bottom = _bar_size(rows[::-1], rows_relaxed[::-1]) if top < h else 0
    if top + bottom > MAX_BARS_SHARE * h:  # black or nearly black frame (fade, title on black)
        return (0, 0, 0, 0)
    inner = gray[top : h - bottom]
    cols, cols_relaxed = _bar_lines(inner, 0, dark_max, uniform_std_max)
    left = _bar_size(cols, cols_relaxed)
    right = _bar_size(cols[::-1], cols_relaxed[::-1]) if left < w else 0
    if left + right > MAX_BARS_SHARE * w:
        return (0, 0, 0, 0)
    return (top, bottom, left, right)


def aggregate_crop(
    borders: Sequence[tuple[int, int, int, int]],
    height: int,
    width: int,
    skip: Sequence[bool] | None = None,
) -> dict[str, float]:
    """Per-clip crop box from per-frame :func:`frame_borders` results of frames of size ``height x width``.

    Each side is the median over frames: bars are constant, while errors come from individual frames (dark
    content next to a bar makes it look larger, an overlay such as a subtitle in the bar makes it look
    smaller). :func:`frame_borders` returns zeros for black frames, which cannot be told apart from
    frames without bars here: pass ``skip`` (True for black frames, e.g. from the exposure score) to leave
    them out; without it, black frames still do not matter while they are a minority of the clip. If every
    frame is skipped, or none is given, the crop is empty.

    Returns fractions of the frame: ``crop_top``, ``crop_bottom`` (of the height), ``crop_left``,
    ``crop_right`` (of the width), and ``border_fraction``: share of the frame area outside the crop box.
    """
    if skip is not None and len(skip) != len(borders):
        raise ValueError(f"skip has {len(skip)} flags for {len(borders)} frames")
    kept = [b for i, b in enumerate(borders) if skip is None or not skip[i]]
    if not kept:
        return {
            "crop_top": 0.0,
            "crop_bottom": 0.0,
            "crop_left": 0.0,
            "crop_right": 0.0,
            "border_fraction": 0.0,
        }
    top, bottom, left, right = np.median(np.asarray(kept, dtype=np.float64), axis=0)
    ct, cb = float(top) / height, float(bottom) / height
    cl, cr = float(left) / width, float(right) / width
    inner = max(1.0 - ct - cb, 0.0) * max(1.0 - cl - cr, 0.0)
    return {
        "crop_top": ct,
        "crop_bottom": cb,
        "crop_left": cl,
        "crop_right": cr,
        "border_fraction": 1.0 - inner,
    }
