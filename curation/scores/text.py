"""Burnt-in text detection (subtitles, captions/telops, title cards, large watermarks) without OCR.

Classical pipeline at a fixed working scale (short side 144 px):

1. strong-edge map: 3x3 morphological gradient above a threshold. Rendered text (white fill with dark
   outline, or dark/white text on a flat card) has a near-maximal local contrast on every stroke, which
   most natural edges at this scale do not reach. The threshold is the 85th percentile of the frame's
   gradient, clamped to [:data:`EDGE_MIN`, :data:`EDGE_MAX`]: calm frames use the floor (soft, unoutlined
   text still counts), busy frames raise it so that only the strongest edges (text outlines) remain
   instead of the whole texture.
2. text lines: horizontal closing joins the strokes of neighbouring characters, an opening with a long
   horizontal kernel keeps only long horizontal runs (lines of several characters) and cuts off the
   background structures that touch a line, a short vertical opening removes 1-2 px lines (horizons,
   letterbox edges).
3. each connected component is kept when it is shaped like a text line (height, length, aspect ratio,
   filled bounding box), is densely edged, has a calmer band above or below it (a line stands out from
   its surroundings, a patch of dense texture does not), and its edges are spread evenly along its
   length (characters are evenly spaced; texture patches are clumpy).

The score is the share of the frame covered by the kept line boxes. Measured on synthetic frames
(Japanese and Latin subtitles rendered at 4x and downscaled, telops, title cards, over photos, 1/f noise,
water, crowds, window grids, grass and leaves): one subtitle line scores ~0.03-0.07, a title card
~0.05-0.15, and scenes without text 0 except for very busy, high-contrast vegetation (up to ~0.025 per
frame). Known misses: text smaller than ~4% of the frame height, and text over equally busy high-contrast
texture. Aggregate per clip (e.g. the median or 75th percentile over sampled frames) before thresholding.
"""

from __future__ import annotations

import cv2
import numpy as np

# Suggested per-clip threshold on the median of frame_text_fraction over sampled frames: a clip above it
# carries burnt-in text on most frames (one subtitle line is ~0.03-0.07 of the frame).
TEXT_FRACTION_MAX = 0.02

WORK_SHORT_SIDE = 144
# 3x3 morphological gradient threshold (gray levels): the frame's EDGE_QUANTILE, clamped to this range.
EDGE_MIN = 80
EDGE_MAX = 140
EDGE_QUANTILE = 0.85
_CLOSE = cv2.getStructuringElement(cv2.MORPH_RECT, (7, 1))  # joins characters (gaps <= 6 px)
_LONG = cv2.getStructuringElement(cv2.MORPH_RECT, (15, 1))  # a line is >= ~2 characters long
_THICK = cv2.getStructuringElement(cv2.MORPH_RECT, (1, 3))  # drops 1-2 px tall edge lines
_GRAD = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
MIN_LINE_H = 6  # px at the working scale: ~4% of the frame height
MAX_LINE_H_FRAC = 0.25
MIN_ASPECT = 3.0  # width / height: at least ~3 CJK characters
MIN_AREA_FRAC = 0.006
MIN_FILL = 0.55  # component pixels / bounding-box area
MIN_EDGE_DENSITY = 0.2  # strong-edge pixels / box area
MAX_SURROUND_RATIO = 0.6  # edge density of the calmer band above/below, relative to the box
MAX_COLUMN_CV = 0.55  # coefficient of variation of per-column edge density along the line


def _resize_short(gray: np.ndarray, short: int) -> np.ndarray:
    h, w = gray.shape[:2]
    scale = short / min(h, w)
    if abs(scale - 1.0) < 1e-3:
        return gray
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(gray, (max(round(w * scale), 1), max(round(h * scale), 1)), interpolation=interp)


def text_boxes(gray: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Text-line boxes ``(x, y, w, h)`` in pixels of the WORKING scale (short side 144) of a uint8 frame."""
    g = _resize_short(gray, WORK_SHORT_SIDE)
    h, w = g.shape
    grad = cv2.morphologyEx(g, cv2.MORPH_GRADIENT, _GRAD)
    hist = cv2.calcHist([grad], [0], None, [256], [0, 256]).ravel()
    quantile = int(np.searchsorted(np.cumsum(hist), EDGE_QUANTILE * grad.size))
    edges = (grad >= min(max(quantile, EDGE_MIN), EDGE_MAX)).astype(np.uint8)
    lines = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, _CLOSE)
    lines = cv2.morphologyEx(lines, cv2.MORPH_OPEN, _LONG)
    lines = cv2.morphologyEx(lines, cv2.MORPH_OPEN, _THICK)
    n, _, stats, _ = cv2.connectedComponentsWithStats(lines, connectivity=4)
    if n <= 1:
        return []
    st = stats[1:].astype(np.int64)
    bx, by, bw, bh, area = st[:, 0], st[:, 1], st[:, 2], st[:, 3], st[:, 4]
    # Shape tests vectorised first: textured frames give hundreds of components, few survive these.
    keep = (
        (bh >= MIN_LINE_H)
        & (bh <= MAX_LINE_H_FRAC * h)
        & (bw >= MIN_ASPECT * bh)
        & (bw * bh >= MIN_AREA_FRAC * h * w)
        & (area >= MIN_FILL * bw * bh)
    )
    integral = cv2.integral(edges)

    def density(x0: int, y0: int, x1: int, y1: int) -> float:
        s = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        return float(s) / ((x1 - x0) * (y1 - y0))

    out: list[tuple[int, int, int, int]] = []
    for x, y, bwi, bhi in zip(
        bx[keep].tolist(), by[keep].tolist(), bw[keep].tolist(), bh[keep].tolist(), strict=True
    ):
        inside = density(x, y, x + bwi, y + bhi)
        if inside < MIN_EDGE_DENSITY:
            continue
        margin = max(2, bhi // 2)
        around = []
        if y - margin >= 0:
            around.append(density(x, y - margin, x + bwi, y))
        if y + bhi + margin <= h:
            around.append(density(x, y + bhi, x + bwi, y + bhi + margin))
        # The calmer side: a line directly above/below another line (two-line subtitles) still passes.
        if around and min(around) > MAX_SURROUND_RATIO * inside:
            continue
        cols = edges[y : y + bhi, x : x + bwi].mean(axis=0)
        if cols.std() > MAX_COLUMN_CV * cols.mean():
            continue
        out.append((x, y, bwi, bhi))
    return out


def frame_text_fraction(gray: np.ndarray) -> float:
    """Share (0-1) of the frame area covered by text-like lines in a uint8 grayscale frame.

    Resolution-independent (computed at a short side of 144 px). 0 for frames without text; one subtitle
    line is ~0.03-0.07, a title card ~0.05-0.15. See the module docstring for the method and limits.
    """
    boxes = text_boxes(gray)
    if not boxes:
        return 0.0
    gh, gw = gray.shape[:2]
    scale = WORK_SHORT_SIDE / min(gh, gw)
    h, w = (gh, gw) if abs(scale - 1.0) < 1e-3 else (max(round(gh * scale), 1), max(round(gw * scale), 1))
    mask = np.zeros((h, w), np.uint8)
    for x, y, bw, bh in boxes:
        mask[y : y + bh, x : x + bw] = 1
    return float(np.count_nonzero(mask)) / (h * w)
