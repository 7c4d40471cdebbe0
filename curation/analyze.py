"""One decode pass per video: shot boundaries and per-sample scores, then scores per candidate clip.

Memory stays flat whatever the video's length: frames are dropped as soon as they are scored;
only one float per frame (its time) and one small dict per sampled frame are kept.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

import av
import cv2
import numpy as np
from av.video.frame import PictureType

from curation.config import AnalysisConfig, SplitConfig
from curation.decode import full_range_luma, iter_frames, motion_vectors, small_bgr, small_gray, step_for
from curation.probe import ProbeInfo
from curation.scores import blur, exposure, letterbox, motion, phash, text
from curation.shots import Candidate, ShotDetector, candidates, merge_hint_cuts, resolve_deferred
from curation.sources.base import SplitHint

# Detection runs on every frame, so it gets the smallest frames that still find cuts: on the
# shared real videos 72-144 px short sides give identical cuts and 96 costs 3x less than 144.
DETECT_SHORT_SIDE = 64
# Codec motion vectors (fraction of diagonal per frame) are trusted between these bounds and
# confirmed by optical flow outside them: below, they cannot tell a still shot from slow
# low-texture motion; above, encoders' limited search ranges make them underestimate (x264's
# fast presets search +-16 px), which would hide shaky footage.
FLOW_CONFIRM_BELOW = 0.002
FLOW_CONFIRM_ABOVE = 0.01
# Contact-sheet thumbnails: one small JPEG (~2 KB) every THUMB_PERIOD_S keeps memory flat
# enough for hour-long videos and gives every clip of >= 2 s one picture.
THUMB_PERIOD_S = 2.0
THUMB_SHORT_SIDE = 128
THUMB_JPEG = [cv2.IMWRITE_JPEG_QUALITY, 80]
# Flow costs ~2 ms a frame pair; where vectors exist, one confirmation a second is enough.
FLOW_MIN_INTERVAL_S = 0.99


@dataclass
class Sample:
    index: int
    scores: dict[str, float]
    borders: tuple[int, int, int, int]
    phash: int
    edges: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # letterbox.edge_support


@dataclass
class VideoAnalysis:
    n_frames: int
    duration_s: float
    fps_measured: float
    fps_variable: bool
    cuts: list[int]
    times: np.ndarray
    samples: list[Sample] = field(default_factory=list)
    analysis_size: tuple[int, int] = (0, 0)  # (height, width) of scored frames
    thumbs: list[tuple[int, bytes]] = field(default_factory=list)  # (frame index, JPEG)
    frame_dur: float = 0.0  # median frame interval, seconds
    # TransNetV2 deferred to a GPU actor: its 48x27 frames; `cuts` are the cheap cues' until
    # apply_transnet() (curation/pipeline.py) resolves them.
    transnet_frames: np.ndarray | None = None


def wants_flow(mv: float | None, mode: str, since_last_flow_s: float) -> bool:
    """Optical flow where codec motion vectors are missing or ambiguous, at most ~1 per second.

    Without vectors (I-frames, VP9/AV1...) flow is the only motion signal, so it always runs.
    """
    if mode == "always" or (mode == "auto" and mv is None):
        return True
    ambiguous = mv is not None and not FLOW_CONFIRM_BELOW <= mv <= FLOW_CONFIRM_ABOVE
    return mode == "auto" and ambiguous and since_last_flow_s >= FLOW_MIN_INTERVAL_S


def _sample_scores(
    gray: np.ndarray,
    prev_gray: np.ndarray,
    mv: float | None,
    want_flow: bool,
    cfg: AnalysisConfig,
    full_range: bool = True,
) -> tuple[dict[str, float], tuple[int, int, int, int]]:
    borders = letterbox.frame_borders(gray)
    s: dict[str, float] = dict(exposure.frame_exposure(gray, full_range=full_range))
    s["sharpness"] = blur.frame_sharpness(gray, borders)
    s["text_fraction"] = text.frame_text_fraction(gray)
    if mv is not None:
        s["motion_mv"] = mv
    if want_flow:
        f = motion.flow_magnitude(prev_gray, gray, cfg.flow_size)
        s.update(f)
        s["motion"] = f["flow_mean"]
    elif mv is not None:
        s["motion"] = mv
    return s, borders


def analyze_video(
    path: str,
    info: ProbeInfo,
    split: SplitConfig,
    cfg: AnalysisConfig,
    hints: list[SplitHint] | None = None,
    defer_transnet: bool = False,
) -> VideoAnalysis:
    # One video per process is the parallelism; OpenCV's own thread pool only adds CPU time
    # (its workers took ~40% more CPU than wall time on the 144-320 px score frames).
    cv2.setNumThreads(1)
    det = ShotDetector(split, info.fps, defer_transnet=defer_transnet)
    det_step = step_for(info.coded_width, info.coded_height, DETECT_SHORT_SIDE)
    score_step = step_for(info.coded_width, info.coded_height, cfg.short_side)
    times: list[float] = []
    samples: list[Sample] = []
    period = 1.0 / cfg.score_fps
    next_t = 0.0
    prev: av.VideoFrame | None = None
    size = (0, 0)
    last_flow_t = -1e9
    last_anchor = 0  # display index of the last I/P frame: P-frame vectors span the anchor distance
    thumbs: list[tuple[int, bytes]] = []
    thumb_step = step_for(info.coded_width, info.coded_height, THUMB_SHORT_SIDE)
    next_thumb_t = THUMB_PERIOD_S / 2
    for index, t, frame in iter_frames(
        path, info.stream_index, cfg.flow != "always", cfg.decode_threads, cfg.skip_loop_filter
    ):
        times.append(t)
        det.process(index, small_bgr(frame, det_step, info.rotation))
        ptype = int(frame.pict_type or 0)
        if t + 1e-6 >= next_t and prev is not None:
            # Sample at the second frame of a consecutive pair so flow sees one frame interval.
            gray = small_gray(frame, score_step, info.rotation)
            prev_gray = small_gray(prev, score_step, info.rotation)
            mvs = motion_vectors(frame)
            mv = None if mvs is None else motion.mv_magnitude(mvs, frame.width, frame.height)
            if mv is not None and ptype == PictureType.P:
                mv /= max(1, index - last_anchor)
            flow = wants_flow(mv, cfg.flow, t - last_flow_t)
            if flow:
                last_flow_t = t
            scores, borders = _sample_scores(gray, prev_gray, mv, flow, cfg, full_range_luma(frame))
            edges = letterbox.edge_support(gray, borders)
            samples.append(Sample(index, scores, borders, phash.phash64(gray), edges))
            size = gray.shape[:2]
            next_t = (math.floor(t / period) + 1) * period
            if t + 1e-6 >= next_thumb_t:
                ok, jpg = cv2.imencode(".jpg", small_bgr(frame, thumb_step, info.rotation), THUMB_JPEG)
                if ok:
                    thumbs.append((index, jpg.tobytes()))
                next_thumb_t = (math.floor(t / THUMB_PERIOD_S) + 1.5) * THUMB_PERIOD_S
        if ptype in (PictureType.I, PictureType.P):
            last_anchor = index
        prev = frame
    n = len(times)
    if n == 0:
        raise ValueError("no frame could be decoded")
    tarr = np.asarray(times, dtype=np.float64)
    diffs = np.diff(tarr)
    frame_dur = float(np.median(diffs)) if n > 1 else 1.0 / info.fps
    variable = bool(n > 2 and frame_dur > 0 and np.std(diffs) / frame_dur > 0.05)
    cuts = det.finish()
    if det.deferred_frames is None:
        cuts = with_hints(cuts, tarr, split, hints, info.fps)
    duration = float(tarr[-1] + frame_dur)
    return VideoAnalysis(
        n_frames=n,
        duration_s=duration,
        fps_measured=(n / duration) if duration > 0 else info.fps,
        fps_variable=variable or info.fps_variable,
        cuts=cuts,
        times=tarr,
        samples=samples,
        analysis_size=size,
        frame_dur=frame_dur,
        thumbs=thumbs,
        transnet_frames=det.deferred_frames,
    )


def with_hints(
    cuts: list[int], times: np.ndarray, split: SplitConfig, hints: list[SplitHint] | None, fps: float
) -> list[int]:
    """Detected cuts plus the source's annotated scene boundaries (seconds), when configured."""
    if not (split.use_scene_hints and hints):
        return cuts
    hint_frames = [int(np.searchsorted(times, h.start)) for h in hints if h.unit == "s"]
    hint_frames += [int(np.searchsorted(times, h.end)) for h in hints if h.unit == "s"]
    return merge_hint_cuts(cuts, hint_frames, max(1, round(split.min_scene_len_s * fps)), len(times))


def apply_transnet(
    a: VideoAnalysis, probabilities: np.ndarray, split: SplitConfig, hints: list[SplitHint] | None, fps: float
) -> None:
    """Final cuts of a deferred analysis from TransNetV2's probabilities (one per frame)."""
    if len(probabilities) != a.n_frames:
        raise ValueError(f"TransNetV2 gave {len(probabilities)} probabilities for {a.n_frames} frames")
    a.cuts = with_hints(resolve_deferred(a.cuts, probabilities, split, fps), a.times, split, hints, fps)
    a.transnet_frames = None


def _agg(values: list[float], fn: str) -> float | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    if fn == "mean":
        return float(a.mean())
    if fn == "median":
        return float(np.median(a))
    if fn == "max":
        return float(a.max())
    if fn == "p75":
        return float(np.percentile(a, 75))
    raise ValueError(fn)


N_PHASHES = 3  # hashes per clip, at evenly spaced quantiles of its samples


def _is_black(s: Sample) -> bool:
    return s.scores.get("dark_fraction", 0.0) >= exposure.BLACK_DARK_FRACTION_MIN


def video_bars(a: VideoAnalysis) -> tuple[int, int, int, int]:
    """The letterbox/pillarbox the whole video shares (black frames, i.e. fades, left out)."""
    return letterbox.video_bars([s.borders for s in a.samples], [_is_black(s) for s in a.samples])


def clip_scores(
    c: Candidate,
    a: VideoAnalysis,
    sample_index: list[int] | None = None,
    bars: tuple[int, int, int, int] | None = None,
) -> dict[str, Any]:
    """Scores of one candidate clip from the samples inside it; None where it has no sample."""
    idx = sample_index if sample_index is not None else [s.index for s in a.samples]
    inside = a.samples[bisect.bisect_left(idx, c.start) : bisect.bisect_left(idx, c.end)]
    start_s = float(a.times[c.start])
    end_s = float(a.times[c.end - 1] + a.frame_dur)

    def vals(key: str) -> list[float]:
        return [s.scores[key] for s in inside if key in s.scores]

    out: dict[str, Any] = {
        "start_frame": c.start,
        "end_frame": c.end,
        "start_s": start_s,
        "end_s": end_s,
        "duration_s": end_s - start_s,
        "n_frames": c.end - c.start,
        "shot_index": c.shot,
        "window_index": c.window,
        "n_samples": len(inside),
        # Medians: FFmpeg labels every reference as one frame away, so P-frames behind B-frames
        # read ~3x their true motion; they are the minority of sampled frames.
        "motion": _agg(vals("motion"), "median"),
        "motion_mv": _agg(vals("motion_mv"), "median"),
        "motion_flow": _agg(vals("flow_mean"), "mean"),
        "motion_p90": _agg(vals("flow_p90"), "max"),
        "camera_pan": _agg(vals("flow_global"), "mean"),
        "flow_share": (len(vals("flow_mean")) / len(inside)) if inside else None,
        "luma_mean": _agg(vals("luma_mean"), "median"),
        "luma_std": _agg(vals("luma_std"), "median"),
        # A lit subject in some frames is enough: fades within the clip must not hide it.
        "luma_p99": _agg(vals("luma_p99"), "p75"),
        "dark_fraction": _agg(vals("dark_fraction"), "mean"),
        "bright_fraction": _agg(vals("bright_fraction"), "mean"),
        "sharpness": _agg(vals("sharpness"), "median"),
        "text_fraction": _agg(vals("text_fraction"), "p75"),
        "text_fraction_max": _agg(vals("text_fraction"), "max"),
    }
    h, w = a.analysis_size
    if inside and h and w:
        # Black frames (fades) report no bars; leave them out of the crop box.
        black = [_is_black(s) for s in inside]
        out.update(
            letterbox.aggregate_crop(
                [s.borders for s in inside],
                h,
                w,
                skip=black,
                edges=[s.edges for s in inside],
                video=bars if bars is not None else video_bars(a),
            )
        )
        quantiles = [(i + 1) / (N_PHASHES + 1) for i in range(N_PHASHES)]
        picks = [inside[min(len(inside) - 1, int(len(inside) * q))] for q in quantiles]
        out["phashes"] = [p.phash for p in picks]
    else:
        out.update({"crop_top": 0.0, "crop_bottom": 0.0, "crop_left": 0.0, "crop_right": 0.0})
        out["border_fraction"] = 0.0
        out["phashes"] = []
    return out


def clip_thumbnail(c: Candidate, a: VideoAnalysis) -> bytes | None:
    """The thumbnail nearest the clip's middle, if one falls inside the clip."""
    inside = [(abs(i - (c.start + c.end) / 2), i, jpg) for i, jpg in a.thumbs if c.start <= i < c.end]
    return min(inside)[2] if inside else None


def clip_thumbnails(a: VideoAnalysis, split: SplitConfig) -> list[bytes | None]:
    """One thumbnail per candidate clip, in the order of `analyze_clips`."""
    return [clip_thumbnail(c, a) for c in candidates(a.cuts, a.times, split)]


def analyze_clips(a: VideoAnalysis, split: SplitConfig) -> list[dict[str, Any]]:
    index = [s.index for s in a.samples]  # sorted: samples are taken in decode order
    bars = video_bars(a)
    return [clip_scores(c, a, index, bars) for c in candidates(a.cuts, a.times, split)]
