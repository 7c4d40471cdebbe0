"""Letterbox / pillarbox detection: uniform dark bars at the frame edges, per frame and per clip.

A row (column) belongs to a bar when nearly all of its pixels are dark (``<= dark_max``) and those dark
pixels are uniform (std ``<= uniform_std_max``). Using the dark pixels' spread rather than the whole row's
keeps a small logo or a few bright specks in a bar from breaking it, while a dark *textured* scene fails
on either test (it has brighter pixels, or its dark pixels vary). Bars are counted as runs of bar rows
starting at the edge. Left/right bars are measured only between the top and bottom bars, so windowboxed
frames (both kinds of bars) work.

A genuinely flat dark region at a frame edge (clear night sky, a black wall, the dark hall around a lit
subject) is indistinguishable from a bar in one frame. Over time it is not: a bar is the same in every
frame of the video, and it ends in a straight line where the picture starts, while dark picture content
fades in irregularly (:func:`edge_support`). :func:`aggregate_crop` keeps a clip's bar only when the whole
video shares it (:func:`video_bars`), or when it is steady through the clip and straight-edged. On the
shared NASA footage dark space around the subject was read as a 24% + 18% pillarbox and the clip dropped
as low resolution: its "bars" change from shot to shot and their edges are 6-24% bright, against 30-100%
for the Sintel trailer's real letterbox.
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
# A clip's own bar (one the rest of the video does not share, e.g. 4:3 footage inside a 16:9 video) must be
# steady: this share of its frames within BAR_JITTER px of the median ...
STEADY_MIN = 0.75
BAR_JITTER = 2
# ... and straight-edged: the clip's median edge support at least this (measured per frame: real bars
# 0.3-1.0, dark content 0.05-0.25).
EDGE_SUPPORT_MIN = 0.35
# The video's own bar on each side: this percentile over its non-black frames (a bar is in every frame;
# a minority of frames with overlays in the bar may shrink it).
VIDEO_BAR_PERCENTILE = 10.0


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


def edge_support(
    gray: np.ndarray, borders: tuple[int, int, int, int], dark_max: int = 24
) -> tuple[float, float, float, float]:
    """Per side of :func:`frame_borders`' bars, how straight the bar's inner edge is, 0-1 (0 = no bar).

    The share of positions along the edge where one of the first two picture lines is brighter than a
    bar may be: where a real bar ends the picture starts along a straight line, so most positions are
    bright unless the picture itself is dark there; dark content that merely looks like a bar fades in
    irregularly and few positions are.
    """
    h, w = gray.shape[:2]
    top, bottom, left, right = borders
    x0, x1 = left, w - right
    inner = gray[top : h - bottom]
    regions = (
        (top, gray[top : top + 2, x0:x1], 0),
        (bottom, gray[max(h - bottom - 2, 0) : h - bottom, x0:x1], 0),
        (left, inner[:, left : left + 2], 1),
        (right, inner[:, max(w - right - 2, 0) : w - right], 1),
    )
    out = [
        float((r.max(axis=axis) > dark_max).mean()) if size and r.size else 0.0 for size, r, axis in regions
    ]
    return out[0], out[1], out[2], out[3]


def video_bars(
    borders: Sequence[tuple[int, int, int, int]], skip: Sequence[bool] | None = None
) -> tuple[int, int, int, int]:
    """The bars every picture of a video shares: per side, VIDEO_BAR_PERCENTILE over its non-skipped
    (non-black) frames' :func:`frame_borders`."""
    kept = [b for i, b in enumerate(borders) if skip is None or not skip[i]]
    if not kept:
        return (0, 0, 0, 0)
    q = np.percentile(np.asarray(kept, dtype=np.float64), VIDEO_BAR_PERCENTILE, axis=0)
    return int(q[0]), int(q[1]), int(q[2]), int(q[3])


def _trusted_side(sizes: np.ndarray, support: np.ndarray, median: float, video: int) -> float:
    """The clip's bar on one side where a real bar would be; otherwise only what the video shares."""
    if median <= video + BAR_JITTER:
        return median
    steady = float(np.mean(np.abs(sizes - median) <= BAR_JITTER))
    barred = support[sizes > 0]
    straight = float(np.median(barred)) if barred.size else 0.0
    if steady >= STEADY_MIN and straight >= EDGE_SUPPORT_MIN:
        return median
    return float(min(median, video))


def aggregate_crop(
    borders: Sequence[tuple[int, int, int, int]],
    height: int,
    width: int,
    skip: Sequence[bool] | None = None,
    edges: Sequence[tuple[float, float, float, float]] | None = None,
    video: tuple[int, int, int, int] | None = None,
) -> dict[str, float]:
    """Per-clip crop box from per-frame :func:`frame_borders` results of frames of size ``height x width``.

    Each side is the median over frames: bars are constant, while errors come from individual frames (dark
    content next to a bar makes it look larger, an overlay such as a subtitle in the bar makes it look
    smaller). :func:`frame_borders` returns zeros for black frames, which cannot be told apart from
    frames without bars here: pass ``skip`` (True for black frames, e.g. from the exposure score) to leave
    them out; without it, black frames still do not matter while they are a minority of the clip. If every
    frame is skipped, or none is given, the crop is empty.

    With ``edges`` (:func:`edge_support` per frame) and ``video`` (:func:`video_bars`), a side's bar is
    kept only if the video shares it, or if it is steady through the clip and straight-edged; otherwise
    only the part the video shares is cropped: dark picture content is not a bar.

    Returns fractions of the frame: ``crop_top``, ``crop_bottom`` (of the height), ``crop_left``,
    ``crop_right`` (of the width), and ``border_fraction``: share of the frame area outside the crop box.
    """
    if skip is not None and len(skip) != len(borders):
        raise ValueError(f"skip has {len(skip)} flags for {len(borders)} frames")
    if edges is not None and len(edges) != len(borders):
        raise ValueError(f"edges has {len(edges)} entries for {len(borders)} frames")
    idx = [i for i in range(len(borders)) if skip is None or not skip[i]]
    if not idx:
        return {
            "crop_top": 0.0,
            "crop_bottom": 0.0,
            "crop_left": 0.0,
            "crop_right": 0.0,
            "border_fraction": 0.0,
        }
    sizes = np.asarray([borders[i] for i in idx], dtype=np.float64)
    sides = np.median(sizes, axis=0)
    if edges is not None and video is not None:
        support = np.asarray([edges[i] for i in idx], dtype=np.float64)
        sides = np.asarray(
            [_trusted_side(sizes[:, k], support[:, k], float(sides[k]), video[k]) for k in range(4)]
        )
    top, bottom, left, right = sides
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
