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
4. large or letter-spaced titles (the Sintel trailer's "S I N T E L": letters ~8% of the frame height,
   gaps as wide as a letter) never form one run in step 2. They are found as chains of glyphs instead:
   edge components of letter size (long horizontal runs such as underlines removed first), chained
   left to right when their heights agree, their vertical extents overlap and the gap is at most
   :data:`CHAIN_GAP` letter heights; a chain of at least :data:`CHAIN_MIN` glyphs is a line when its tops
   or bottoms are aligned, its gaps are regular, and its glyphs share one ink: their brightest (or
   darkest) pixels agree and stand out from the band around the line in one polarity only (rendered
   text on its background; texture reaches far both ways). Such a line must stand out from its
   surroundings like the others.

The score is the share of the frame covered by the kept line boxes. Measured on synthetic frames
(Japanese and Latin subtitles rendered at 4x and downscaled, telops, title cards, over photos, 1/f noise,
water, crowds, window grids, grass and leaves): one subtitle line scores ~0.03-0.07, a title card
~0.05-0.15, and scenes without text 0 except for very busy, high-contrast vegetation (up to ~0.025 per
frame). Known misses: text smaller than ~4% of the frame height, text over equally busy high-contrast
texture, and low-contrast (semi-transparent) overlays: on the shared real videos, Big Buck Bunny's
titles and the copyright line of PySceneDetect's test video (edges below EDGE_MIN). Lowering EDGE_MIN to
40 finds them but also "text" on 20-60% of frames of foliage and feathers. Aggregate per clip (e.g. the
median or 75th percentile over sampled frames) before thresholding.

OCR was measured as the alternative (shared real videos, one frame a second at 480 px, one thread):
rapidocr-onnxruntime 1.4.4 (PP-OCRv4 weights in its wheel) finds text on 40-90% of the frames without
any when its detector alone is used (1.1 CPU s a frame); with recognition confirming (score > 0.8, >= 3
characters) it has no false alarm and finds every Sintel and copyright-line frame but a third of Big
Buck Bunny's, at 1.4 CPU s a frame: ~700x this detector (~2 ms), and 2-4x the whole analysis of a 480p
video (~0.07 CPU s per video second) even on one frame per 5-10 s clip. Not used.
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
# Glyph chains (step 4), in px at the working scale unless stated.
GLYPH_MIN_H = 6
GLYPH_MAX_W = 2.0  # glyph width / height
CHAIN_MIN = 4  # glyphs
CHAIN_GAP = 1.6  # largest gap between neighbours, in letter heights
CHAIN_HEIGHT_RATIO = 1.5
CHAIN_OVERLAP = 0.7  # vertical overlap of neighbours, share of the smaller height
CHAIN_ALIGN_MAX = 0.2  # std of the tops (or bottoms), in letter heights
CHAIN_GAP_JITTER = 0.6  # largest deviation of a gap from the median gap, in letter heights
INK_STD_MAX = 12.0  # gray levels: spread of the glyphs' extreme pixels
INK_CONTRAST_MIN = 60.0  # gray levels between the ink and the band around the line ...
INK_POLARITY = 2.0  # ... and at least this many times the contrast the other way
_GLYPH_CLOSE = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))


def _resize_short(gray: np.ndarray, short: int) -> np.ndarray:
    h, w = gray.shape[:2]
    scale = short / min(h, w)
    if abs(scale - 1.0) < 1e-3:
        return gray
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(gray, (max(round(w * scale), 1), max(round(h * scale), 1)), interpolation=interp)


def _one_ink(g: np.ndarray, boxes: np.ndarray) -> bool:
    """Rendered text has one colour, readable against its background (see step 4)."""
    hi = np.asarray([g[y : y + bh, x : x + bw].max() for x, y, bw, bh in boxes.tolist()], np.float64)
    lo = np.asarray([g[y : y + bh, x : x + bw].min() for x, y, bw, bh in boxes.tolist()], np.float64)
    x0, y0 = int(boxes[:, 0].min()), int(boxes[:, 1].min())
    x1, y1 = int((boxes[:, 0] + boxes[:, 2]).max()), int((boxes[:, 1] + boxes[:, 3]).max())
    m = max(2, (y1 - y0) // 2)
    band = np.concatenate([g[max(0, y0 - m) : y0, x0:x1].ravel(), g[y1 : y1 + m, x0:x1].ravel()])
    if band.size == 0:
        return False
    bg = float(np.median(band))
    up, down = float(np.median(hi)) - bg, bg - float(np.median(lo))
    bright = hi.std() <= INK_STD_MAX and up >= INK_CONTRAST_MIN and up >= INK_POLARITY * down
    dark = lo.std() <= INK_STD_MAX and down >= INK_CONTRAST_MIN and down >= INK_POLARITY * up
    return bool(bright or dark)


def _glyph_chains(edges: np.ndarray, g: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes of lines of similar, aligned glyphs whatever their spacing (step 4)."""
    h = edges.shape[0]
    # Long horizontal runs (underlines, horizons) would weld a title's letters into one blob.
    m = edges & ~cv2.morphologyEx(edges, cv2.MORPH_OPEN, _LONG)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _GLYPH_CLOSE)
    n, _, st, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= CHAIN_MIN:
        return []
    st = st[1:].astype(np.int64)
    gx, gy, gw, gh = st[:, 0], st[:, 1], st[:, 2], st[:, 3]
    idx = np.flatnonzero(
        (gh >= GLYPH_MIN_H) & (gh <= MAX_LINE_H_FRAC * h) & (gw <= GLYPH_MAX_W * gh) & (gw >= 2)
    )
    if idx.size < CHAIN_MIN:
        return []
    idx = idx[np.argsort(gx[idx], kind="stable")]
    xs = gx[idx]
    parent = list(range(len(st)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pos, a in enumerate(idx.tolist()):
        ha, right = int(gh[a]), int(gx[a] + gw[a])
        reach = int(np.searchsorted(xs, right + CHAIN_GAP * CHAIN_HEIGHT_RATIO * ha, side="right"))
        for b in idx[pos + 1 : reach].tolist():
            hb = int(gh[b])
            gap = int(gx[b]) - right
            overlap = min(gy[a] + ha, gy[b] + hb) - max(gy[a], gy[b])
            if (
                max(ha, hb) <= CHAIN_HEIGHT_RATIO * min(ha, hb)
                and -0.3 * min(ha, hb) <= gap <= CHAIN_GAP * max(ha, hb)
                and overlap >= CHAIN_OVERLAP * min(ha, hb)
            ):
                parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for i in idx.tolist():
        groups.setdefault(root(i), []).append(i)
    out: list[tuple[int, int, int, int]] = []
    for members in groups.values():
        if len(members) < CHAIN_MIN:
            continue
        mem = np.asarray(sorted(members, key=lambda i: int(gx[i])))
        letter = float(np.median(gh[mem]))
        tops, bottoms = gy[mem].astype(np.float64), (gy[mem] + gh[mem]).astype(np.float64)
        gaps = (gx[mem][1:] - (gx[mem] + gw[mem])[:-1]).astype(np.float64)
        x0, y0 = int(gx[mem].min()), int(gy[mem].min())
        x1, y1 = int((gx[mem] + gw[mem]).max()), int((gy[mem] + gh[mem]).max())
        if (
            min(tops.std(), bottoms.std()) <= CHAIN_ALIGN_MAX * letter
            and np.abs(gaps - np.median(gaps)).max() <= CHAIN_GAP_JITTER * letter
            and x1 - x0 >= MIN_ASPECT * (y1 - y0)
            and _one_ink(g, np.stack([gx[mem], gy[mem], gw[mem], gh[mem]], axis=1))
        ):
            out.append((x0, y0, x1 - x0, y1 - y0))
    return out


def text_boxes(gray: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Text-line boxes ``(x, y, w, h)`` in pixels of the WORKING scale (short side 144) of a uint8 frame."""
    g = _resize_short(gray, WORK_SHORT_SIDE)
    h, w = g.shape
    grad = cv2.morphologyEx(g, cv2.MORPH_GRADIENT, _GRAD)
    hist = cv2.calcHist([grad], [0], None, [256], [0, 256]).ravel()
    quantile = int(np.searchsorted(np.cumsum(hist), EDGE_QUANTILE * grad.size))
    edges = (grad >= min(max(quantile, EDGE_MIN), EDGE_MAX)).astype(np.uint8)
    integral = cv2.integral(edges)

    def density(x0: int, y0: int, x1: int, y1: int) -> float:
        s = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        return float(s) / ((x1 - x0) * (y1 - y0))

    def stands_out(x: int, y: int, bwi: int, bhi: int, inside: float) -> bool:
        margin = max(2, bhi // 2)
        around = []
        if y - margin >= 0:
            around.append(density(x, y - margin, x + bwi, y))
        if y + bhi + margin <= h:
            around.append(density(x, y + bhi, x + bwi, y + bhi + margin))
        # The calmer side: a line directly above/below another line (two-line subtitles) still passes.
        return not around or min(around) <= MAX_SURROUND_RATIO * inside

    out = [
        b for b in _glyph_chains(edges, g) if stands_out(*b, density(b[0], b[1], b[0] + b[2], b[1] + b[3]))
    ]
    lines = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, _CLOSE)
    lines = cv2.morphologyEx(lines, cv2.MORPH_OPEN, _LONG)
    lines = cv2.morphologyEx(lines, cv2.MORPH_OPEN, _THICK)
    n, _, stats, _ = cv2.connectedComponentsWithStats(lines, connectivity=4)
    if n <= 1:
        return out
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
    for x, y, bwi, bhi in zip(
        bx[keep].tolist(), by[keep].tolist(), bw[keep].tolist(), bh[keep].tolist(), strict=True
    ):
        inside = density(x, y, x + bwi, y + bhi)
        if inside < MIN_EDGE_DENSITY or not stands_out(x, y, bwi, bhi, inside):
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
