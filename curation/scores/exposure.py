"""Per-frame exposure statistics: mean/spread of luma and the share of near-black / near-white pixels.

Input is a full-range grayscale frame (uint8, 0 = black, 255 = white) as given by PyAV's
``frame.to_ndarray(format="gray")`` or ``cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)``. Do not pass the raw
Y plane of a limited-range ("tv") video: there black is 16 and white 235, so ``dark_fraction`` and
``bright_fraction`` would read almost 0 on black and white frames.

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
# Too dark to be useful training data even if not black (underexposed night footage): clip median mean luma.
DARK_LUMA_MAX = 40.0
# Washed out: low contrast around a high mean (overexposed, fog, glare, white-balance blowout) ...
WASHED_LUMA_MIN = 170.0
WASHED_STD_MAX = 25.0
# ... or more than half of the frame clipped to white.
WASHED_BRIGHT_FRACTION_MIN = 0.5


def frame_exposure(
    gray: np.ndarray,
    dark_level: int = DARK_PIXEL_LEVEL,
    bright_level: int = BRIGHT_PIXEL_LEVEL,
) -> dict[str, float]:
    """Exposure statistics of one grayscale uint8 frame (H x W).

    Returns:
        ``luma_mean``: mean luma, 0-255.
        ``luma_std``: standard deviation of luma, 0-~128 (global contrast).
        ``dark_fraction``: share of pixels with luma ``< dark_level`` (default 16), 0-1.
        ``bright_fraction``: share of pixels with luma ``> bright_level`` (default 240), 0-1.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 gray frame, got {gray.dtype} {gray.shape}")
    # One 256-bin histogram gives all four numbers in a single pass (cv2.calcHist is ~10x np.bincount).
    hist = cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    n = float(gray.size)
    levels = np.arange(256, dtype=np.float64)
    mean = float((hist * levels).sum()) / n
    var = max(float((hist * levels * levels).sum()) / n - mean * mean, 0.0)
    return {
        "luma_mean": mean,
        "luma_std": float(np.sqrt(var)),
        "dark_fraction": float(hist[:dark_level].sum()) / n,
        "bright_fraction": float(hist[bright_level + 1 :].sum()) / n,
    }


def exposure_verdict(stats: dict[str, float]) -> str:
    """``"black"``, ``"dark"``, ``"washed"`` or ``"ok"`` from :func:`frame_exposure`-style stats.

    Applies the module's default thresholds; pass per-frame stats, or per-clip medians of them.
    """
    mean, std = stats["luma_mean"], stats["luma_std"]
    if mean <= BLACK_LUMA_MAX and stats["dark_fraction"] >= BLACK_DARK_FRACTION_MIN:
        return "black"
    if mean <= DARK_LUMA_MAX:
        return "dark"
    if (mean >= WASHED_LUMA_MIN and std <= WASHED_STD_MAX) or (
        stats["bright_fraction"] >= WASHED_BRIGHT_FRACTION_MIN
    ):
        return "washed"
    return "ok"
