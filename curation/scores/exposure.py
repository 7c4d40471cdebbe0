"""Per-frame exposure statistics: mean/spread of luma and the share of near-black / near-white pixels.

Input is a grayscale frame (uint8). Statistics are always in full-range units (0 = black, 255 =
white): pass ``full_range=False`` for the raw Y plane of a limited-range ("tv") video, where black is 16
and white 235, and the histogram is mapped to full range (otherwise ``dark_fraction`` would read 0 on a
black frame and ``luma_mean`` 16).

Darkness is two numbers, not one: the mean says how much of the picture is dark, the 99th percentile
(``luma_p99``) whether anything in it is lit. A low-key shot (a lit face in a dark room, a spacecraft
against black) has a low mean and bright highlights; underexposed footage has neither.

The verdicts (black frame, too dark, washed out) are decided later, per clip, from these numbers; the
constants below are the suggested defaults and :func:`exposure_verdict` applies them to one set of stats
(per frame, or to per-clip medians of the stats).
"""

from __future__ import annotations

import cv2
import numpy as np

# Pixel levels (0-255, full range) counted as near-black / near-white. 16 is where full-range-decoded
# black plus typical compression noise ends; 240 is clipped highlights.
DARK_PIXEL_LEVEL = 16
BRIGHT_PIXEL_LEVEL = 240

# Black frame (fades, slates, dropped signal): nearly every pixel near-black. A mean threshold alone would
# also catch a dark night scene, so both conditions are used.
BLACK_LUMA_MAX = 20.0
BLACK_DARK_FRACTION_MIN = 0.95
# Too dark to be useful training data even if not black (underexposed night footage): clip median mean luma
# below this AND highlights (luma_p99) below DARK_HIGHLIGHT_MAX, a quarter of full scale: nothing in the
# picture is lit. On the shared real videos a lit face in Sintel's dark shots has p99 65-87 (mean ~10) and
# NASA's lit mirror in a dark hall ~130 (mean ~9), while the nearly black VP9 clip has p99 8.
DARK_LUMA_MAX = 40.0
DARK_HIGHLIGHT_MAX = 64.0
# Washed out: low contrast around a high mean (overexposed, fog, glare, white-balance blowout) ...
WASHED_LUMA_MIN = 170.0
WASHED_STD_MAX = 25.0
# ... or more than half of the frame clipped to white.
WASHED_BRIGHT_FRACTION_MIN = 0.5


_FULL = np.arange(256, dtype=np.float64)
# Limited-range code value -> full-range level (16 -> 0, 235 -> 255, clipped outside).
_FROM_LIMITED = np.clip((_FULL - 16.0) * 255.0 / 219.0, 0.0, 255.0)


def frame_exposure(
    gray: np.ndarray,
    dark_level: int = DARK_PIXEL_LEVEL,
    bright_level: int = BRIGHT_PIXEL_LEVEL,
    full_range: bool = True,
) -> dict[str, float]:
    """Exposure statistics of one grayscale uint8 frame (H x W), in full-range units.

    Returns:
        ``luma_mean``: mean luma, 0-255.
        ``luma_std``: standard deviation of luma, 0-~128 (global contrast).
        ``luma_p99``: 99th percentile of luma, 0-255 (are the highlights lit?).
        ``dark_fraction``: share of pixels with luma ``< dark_level`` (default 16), 0-1.
        ``bright_fraction``: share of pixels with luma ``> bright_level`` (default 240), 0-1.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 gray frame, got {gray.dtype} {gray.shape}")
    # One 256-bin histogram gives every number in a single pass (cv2.calcHist is ~10x np.bincount).
    hist = cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    n = float(gray.size)
    levels = _FULL if full_range else _FROM_LIMITED
    mean = float((hist * levels).sum()) / n
    var = max(float((hist * levels * levels).sum()) / n - mean * mean, 0.0)
    p99 = float(levels[min(int(np.searchsorted(np.cumsum(hist), 0.99 * n)), 255)])
    return {
        "luma_mean": mean,
        "luma_std": float(np.sqrt(var)),
        "luma_p99": p99,
        "dark_fraction": float(hist[levels < dark_level].sum()) / n,
        "bright_fraction": float(hist[levels > bright_level].sum()) / n,
    }


def exposure_verdict(stats: dict[str, float]) -> str:
    """``"black"``, ``"dark"``, ``"washed"`` or ``"ok"`` from :func:`frame_exposure`-style stats.

    Applies the module's default thresholds; pass per-frame stats, or per-clip medians of them.
    """
    mean, std = stats["luma_mean"], stats["luma_std"]
    if mean <= BLACK_LUMA_MAX and stats["dark_fraction"] >= BLACK_DARK_FRACTION_MIN:
        return "black"
    if mean <= DARK_LUMA_MAX and stats.get("luma_p99", 0.0) < DARK_HIGHLIGHT_MAX:
        return "dark"
    if (mean >= WASHED_LUMA_MIN and std <= WASHED_STD_MAX) or (
        stats["bright_fraction"] >= WASHED_BRIGHT_FRACTION_MIN
    ):
        return "washed"
    return "ok"
