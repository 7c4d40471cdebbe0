"""Per-frame sharpness: variance of the Laplacian at a fixed working scale.

The Laplacian variance of the same picture grows when it is downscaled (edges get steeper per pixel), so a
raw value from a 144p analysis frame is not comparable with one from a 360p frame. Every frame is
therefore resized so that its short side is :data:`WORK_SHORT_SIDE` pixels before measuring; the number is
then a property of the picture, not of the analysis resolution chosen by the decode pass.
"""

from __future__ import annotations

import cv2
import numpy as np

WORK_SHORT_SIDE = 144
# Pixels dropped inside a letterbox crop: the bar/picture edge and its compression ringing are strong,
# content-independent edges that would make every letterboxed frame look sharp.
CROP_MARGIN = 2
# Suggested per-clip minimum (median over sampled frames) of frame_sharpness. Measured at 144p on a photo
# and synthetic scenes: in focus ~550-7700; Gaussian blur sigma 1 px (at 144p) ~25-470, sigma 2 px ~5-45
# (a strongly out-of-focus or motion-smeared shot). The value also scales with contrast (a sharp but very
# dark frame scores ~25) and flat content (sky, walls, anime flats) scores low, so read a low value as
# "blurry or featureless", and judge it only on clips that pass the exposure checks.
BLUR_MIN = 40.0


def frame_sharpness(gray: np.ndarray, crop: tuple[int, int, int, int] | None = None) -> float:
    """Variance of the 3x3 Laplacian (in gray levels squared) at a short side of 144 px; higher = sharper.

    Args:
        gray: uint8 grayscale frame (H x W), any analysis resolution.
        crop: optional ``(top, bottom, left, right)`` border sizes in pixels of ``gray`` (letterbox bars,
            e.g. from ``letterbox.frame_borders``) to exclude, plus a 2 px margin.
    """
    h, w = gray.shape[:2]
    if crop is not None:
        top, bottom, left, right = (max(int(v), 0) for v in crop)
        m_top, m_bot = (top + CROP_MARGIN if top else 0), (bottom + CROP_MARGIN if bottom else 0)
        m_left, m_right = (left + CROP_MARGIN if left else 0), (right + CROP_MARGIN if right else 0)
        if h - m_top - m_bot >= 8 and w - m_left - m_right >= 8:
            gray = gray[m_top : h - m_bot, m_left : w - m_right]
    # Scale from the FULL frame's short side so that a cropped picture is measured at the same scale as an
    # uncropped one (scaling the crop itself to 144 would upsample letterboxed content and blur it).
    scale = WORK_SHORT_SIDE / min(h, w)
    if abs(scale - 1.0) > 1e-3:
        ch, cw = gray.shape[:2]
        size = (max(round(cw * scale), 3), max(round(ch * scale), 3))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=1)
    _, std = cv2.meanStdDev(lap)
    return float(std[0, 0]) ** 2
