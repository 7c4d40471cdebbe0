"""Motion scores: dense optical flow between consecutive frames, and codec motion vectors.

Units: every magnitude is a fraction of the frame diagonal per frame interval (between two consecutive
decoded frames), so it does not depend on the analysis resolution. Multiply by the frame rate for
"diagonals per second" when comparing videos of different frame rates.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

# Suggested per-clip thresholds on the median of flow_mean over sampled frame pairs.
# STATIC: the measured flow_mean noise floor on static frames with sensor/compression-like noise (sigma
# 1-6 gray levels, textured or flat) is 2e-5 to 2e-4 of the diagonal; a slow deliberate pan at 30 fps that
# crosses the frame in ~15 s is ~2e-3. 1e-3 sits between: below it the clip is a still image / frozen frame.
STATIC_FLOW_MAX = 1e-3
# SHAKY / too fast: 3% of the diagonal per frame is the whole frame in ~1.1 s at 30 fps, which is a
# whip pan or violent handheld shake rather than a usable camera move; apply it to the median (or p75)
# of flow_global over the clip, and to flow_p90 for chaotic local motion. Magnitude is only a proxy
# for shake (which is jitter: frequent direction changes at moderate speed).
SHAKY_FLOW_MIN = 3e-2

# Farneback: robust on flat, noisy regions (stays ~0 there, unlike DIS which returns pixels of random
# flow on flat frames). At 128 px it resolves shifts up to ~5 px; larger pans are seeded by phase
# correlation (below); pans up to ~20% of the diagonal per frame interval were measured within 1%.
_FB_PARAMS = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2}
# Seed the flow with the global phase-correlation shift when it is this large (px at working size) ...
_SEED_MIN_SHIFT = 2.0
# ... and warping by it cuts the mean absolute frame difference at least this much (else it is noise).
_SEED_MAX_RESIDUAL = 0.75


@lru_cache(maxsize=8)
def _hanning(shape: tuple[int, int]) -> np.ndarray:
    return cv2.createHanningWindow((shape[1], shape[0]), cv2.CV_32F)


def _to_working(gray: np.ndarray, size: int) -> np.ndarray:
    h, w = gray.shape[:2]
    scale = size / max(h, w)
    if scale >= 1.0:  # never upsample: it only adds interpolation cost
        return gray
    return cv2.resize(
        gray, (max(round(w * scale), 8), max(round(h * scale), 8)), interpolation=cv2.INTER_AREA
    )


def _global_seed(p: np.ndarray, q: np.ndarray) -> tuple[float, float] | None:
    """Dominant translation from p to q by phase correlation, if it is large and real; else None."""
    pf, qf = p.astype(np.float32), q.astype(np.float32)
    # Mean removal: otherwise the window's own bump correlates with itself and flat frames "match" at 0.
    pf -= pf.mean()
    qf -= qf.mean()
    (dx, dy), _ = cv2.phaseCorrelate(pf, qf, _hanning(p.shape))
    if np.hypot(dx, dy) < _SEED_MIN_SHIFT:
        return None
    h, w = p.shape
    mx, my = int(np.ceil(abs(dx))), int(np.ceil(abs(dy)))
    if w - 2 * mx < 8 or h - 2 * my < 8:
        return None
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    q_back = cv2.warpAffine(q, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    inner = (slice(my, h - my), slice(mx, w - mx))
    before = float(cv2.absdiff(p[inner], q[inner]).mean())
    after = float(cv2.absdiff(p[inner], q_back[inner]).mean())
    return (dx, dy) if after < _SEED_MAX_RESIDUAL * before else None


def flow_magnitude(prev_gray: np.ndarray, gray: np.ndarray, size: int = 128) -> dict[str, float]:
    """Dense optical flow statistics between two CONSECUTIVE uint8 gray frames of the same size.

    Frames are downscaled so the long side is ``size`` px (never upscaled), then Farneback flow is
    computed (seeded with the phase-correlation pan when the pan is large). Returns, as fractions of
    the (working) frame diagonal per frame interval:
        ``flow_mean``: mean flow magnitude over all pixels (overall amount of motion),
        ``flow_p90``: 90th percentile of the magnitude (strong local motion),
        ``flow_global``: magnitude of the per-component median flow vector (camera pan/tilt).
    """
    if prev_gray.shape != gray.shape:
        raise ValueError(f"frame sizes differ: {prev_gray.shape} vs {gray.shape}")
    p, q = _to_working(prev_gray, size), _to_working(gray, size)
    h, w = p.shape
    seed = _global_seed(p, q)
    if seed is None:
        flow = cv2.calcOpticalFlowFarneback(p, q, None, flags=0, **_FB_PARAMS)
    else:
        init = np.empty((h, w, 2), np.float32)
        init[..., 0], init[..., 1] = seed
        flow = cv2.calcOpticalFlowFarneback(p, q, init, flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **_FB_PARAMS)
    mag = cv2.magnitude(flow[..., 0], flow[..., 1])
    diag = float(np.hypot(w, h))
    n = mag.size
    p90 = float(np.partition(mag.ravel(), int(0.9 * (n - 1)))[int(0.9 * (n - 1))])
    gx, gy = float(np.median(flow[..., 0])), float(np.median(flow[..., 1]))
    return {
        "flow_mean": float(mag.mean()) / diag,
        "flow_p90": p90 / diag,
        "flow_global": float(np.hypot(gx, gy)) / diag,
    }


def mv_magnitude(mvs: np.ndarray | None, width: int, height: int) -> float:
    """Block-area-weighted mean codec motion-vector magnitude, as a fraction of the diagonal per frame.

    ``mvs`` is the structured array of one decoded frame's motion vectors and ``width`` x ``height`` the frame
    size of the decoded stream (not the analysis size). With PyAV 18 (checked with 18.1 / libx264): set
    ``stream.codec_context.options = {"flags2": "+export_mvs"}`` and ``stream.thread_type = "SLICE"`` before
    decoding (under frame threads the exported vectors race: see curation.decode.thread_type), then per frame
    ``sd = frame.side_data.get("MOTION_VECTORS")`` gives an ``av.sidedata.motionvectors.MotionVectors``
    (``None`` on I-frames) and ``sd.to_ndarray()`` the array with fields ``source`` (int32, -1 = past
    reference, +1 = future), ``w``, ``h`` (uint8 block size), ``src_x``, ``src_y``, ``dst_x``, ``dst_y``
    (int16), ``flags`` (uint64), ``motion_x``, ``motion_y`` (int32) and ``motion_scale`` (uint16); the
    displacement in pixels is ``motion_x / motion_scale`` (x264: quarter-pel, scale 4). H.264 exports every
    inter block including skipped ones (0 vector); intra blocks have no vector and are not counted. Each
    magnitude is divided by ``|source|``, but FFmpeg only ever writes +-1 there, so the value is per
    *reference distance*: exact per frame for IPPP streams, while with B-frames a P-frame's vectors span the
    whole anchor distance (x264 pan, bf=2: P-frames read 3x the true per-frame motion, B-frames 1-1.15x; over
    a clip the mean is ~1.5x, the median exact), so aggregate per clip with the median, or divide a P-frame's
    value by its display-order distance to the previous I/P frame. ``None`` or empty (I-frames, intra-only
    codecs) gives 0.0: skip I-frames rather than reading that as "static".
    """
    if mvs is None or len(mvs) == 0:
        return 0.0
    scale = np.maximum(mvs["motion_scale"].astype(np.float64), 1.0)
    dist = np.maximum(np.abs(mvs["source"].astype(np.float64)), 1.0)
    mag = np.hypot(mvs["motion_x"].astype(np.float64), mvs["motion_y"].astype(np.float64)) / (scale * dist)
    area = mvs["w"].astype(np.float64) * mvs["h"].astype(np.float64)
    total = float(area.sum())
    if total <= 0:
        return 0.0
    # Elementwise, not `@`: a BLAS call wakes OpenBLAS threads whose spin-wait burns a core.
    return float((area * mag).sum()) / total / float(np.hypot(width, height))
