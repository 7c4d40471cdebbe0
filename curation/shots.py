"""Shot boundaries, turned into candidate clips of bounded length.

Detectors (`split.detector`), all fed the small frames of the single analysis decode pass:

  hardcut     (default) three cheap cues on each pair of consecutive frames, each judged against
              its neighbours: the HSV content change (PySceneDetect's AdaptiveDetector rule),
              a jump of the colour histogram (cuts inside fast action, where every frame changes),
              and, in near-black frames, the share of pixels that change strongly (a cut from
              black to a title card changes few pixels, but all of them by a lot)
  adaptive    PySceneDetect's AdaptiveDetector
  content     PySceneDetect's ContentDetector
  transnetv2  the learned TransNetV2 on 48x27 frames (about 1 CPU second per video second; GPU when present)
  fused       hardcut and transnetv2 together: a cut either one finds
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode, SceneDetector

from curation.config import SplitConfig

# A pixel "changes strongly" when its HSV value moves by more than this between two frames:
# compression noise and fades stay far below it, text appearing on black far above.
STRONG_CHANGE = 40
HIST_BINS = 8  # per BGR channel: 512 bins


def make_detector(cfg: SplitConfig, fps: float) -> SceneDetector:
    min_len = max(1, round(cfg.min_scene_len_s * fps))
    if cfg.detector == "content":
        return ContentDetector(threshold=cfg.content_threshold, min_scene_len=min_len)
    return AdaptiveDetector(
        adaptive_threshold=cfg.adaptive_threshold, min_content_val=cfg.min_content_val, min_scene_len=min_len
    )


def _neighbour_ratio(x: np.ndarray, window: int, eps: float) -> np.ndarray:
    """x[i] over the mean of x at i-window..i+window without i (frame 0 has no pair: excluded)."""
    n = len(x)
    i = np.arange(n)
    lo, hi = np.maximum(1, i - window), np.minimum(n, i + window + 1)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    k = hi - lo - 1
    mean = (csum[hi] - csum[lo] - x) / np.maximum(k, 1)
    out = np.where(k > 0, x / (mean + eps), 0.0)
    out[0] = 0.0
    return out


class CueTracker:
    """Per-frame cues of the hardcut detector; four floats a frame, decisions at the end."""

    def __init__(self) -> None:
        self.content: list[float] = []  # mean |HSV change|, PySceneDetect's content_val
        self.strong: list[float] = []  # share of pixels whose value changes by > STRONG_CHANGE
        self.hist: list[float] = []  # 1 - cosine similarity of 512-bin colour histograms
        self.value: list[float] = []  # mean HSV value (brightness) of the frame
        self._prev: tuple[np.ndarray, np.ndarray] | None = None

    def push(self, bgr: np.ndarray) -> None:
        # cv2 reductions rather than numpy ones: this runs on every decoded frame.
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([bgr], [0, 1, 2], None, [HIST_BINS] * 3, [0, 256] * 3).ravel()
        hist /= max(cv2.norm(hist), 1e-9)
        self.value.append(cv2.mean(hsv)[2])
        if self._prev is None:
            self.content.append(0.0)
            self.strong.append(0.0)
            self.hist.append(0.0)
        else:
            p_hsv, p_hist = self._prev
            diff = cv2.absdiff(hsv, p_hsv)
            self.content.append(sum(cv2.mean(diff)[:3]) / 3)
            dv = cv2.extractChannel(diff, 2)
            self.strong.append(cv2.countNonZero(cv2.compare(dv, STRONG_CHANGE, cv2.CMP_GT)) / dv.size)
            self.hist.append(max(0.0, 1.0 - float(hist @ p_hist)))
        self._prev = (hsv, hist)

    def cuts(self, cfg: SplitConfig) -> list[int]:
        """Frames that start a new shot, by the three rules, before the minimum-gap filter."""
        c, s, h, v = (
            np.asarray(x, dtype=np.float64) for x in (self.content, self.strong, self.hist, self.value)
        )
        n = len(c)
        if n < 2:
            return []
        w = cfg.window_frames
        rc = _neighbour_ratio(c, w, 1e-3)
        rh = _neighbour_ratio(h, w, 1e-3)
        rs = _neighbour_ratio(s, w, 3e-4)
        brighter = np.maximum(v, np.concatenate([[v[0]], v[:-1]]))  # of the two frames of each pair
        content = (c >= cfg.min_content_val) & (rc >= cfg.adaptive_threshold)
        colour = (c >= cfg.min_content_val) & (h >= cfg.hist_distance_min) & (rh >= cfg.hist_ratio)
        dark = (brighter <= cfg.dark_value_max) & (s >= cfg.dark_changed_min) & (rs >= cfg.dark_ratio)
        hit = content | colour | dark
        hit[0] = False
        return [int(i) for i in np.flatnonzero(hit)]


def min_gap(cuts: Sequence[int], gap: int) -> list[int]:
    """Sorted unique cuts with no two closer than `gap` frames (the earlier one stays)."""
    out: list[int] = []
    for c in sorted(set(cuts)):
        if not out or c - out[-1] >= gap:
            out.append(c)
    return out


def tn_frame(bgr: np.ndarray) -> np.ndarray:
    """The 48x27 RGB frame TransNetV2 takes, from the detection frame (whole frame squashed)."""
    from curation.transnet import HEIGHT, WIDTH

    return np.ascontiguousarray(cv2.resize(bgr, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)[..., ::-1])


class ShotDetector:
    """Feeds frames one at a time, so the caller's single decode pass also serves detection.

    `process` takes the small BGR detection frame of every decoded frame, in display order;
    `finish` returns the frames that start a new shot. With `defer_transnet` the 48x27 frames
    are kept instead of run (`deferred_frames`, 3.9 KB a frame) for a GPU actor elsewhere, and
    `finish` returns the cheap cues' cuts only, for `resolve_deferred`.
    """

    def __init__(
        self, cfg: SplitConfig, fps: float, device: str | None = None, defer_transnet: bool = False
    ) -> None:
        self.cfg = cfg
        self.fps = fps
        self.cuts: list[int] = []
        self._last = 0
        self._gap = max(1, round(cfg.min_scene_len_s * fps))
        self._sd = make_detector(cfg, fps) if cfg.detector in ("adaptive", "content") else None
        self._cues = CueTracker() if cfg.detector in ("hardcut", "fused") else None
        self._tn = None
        self._keep: list[np.ndarray] | None = None
        self.deferred_frames: np.ndarray | None = None
        self.probabilities: np.ndarray | None = None  # TransNetV2's, per frame, after finish()
        if cfg.detector in ("transnetv2", "fused"):
            if defer_transnet:
                self._keep = []
            else:
                from curation.transnet import TransNetStream

                self._tn = TransNetStream(
                    device or (None if cfg.transnet_device == "auto" else cfg.transnet_device)
                )

    def process(self, index: int, bgr: np.ndarray) -> None:
        self._last = index
        if self._sd is not None:
            for tc in self._sd.process_frame(FrameTimecode(index, self.fps), bgr):
                self.cuts.append(tc.frame_num)
        if self._cues is not None:
            self._cues.push(bgr)
        if self._tn is not None:
            self._tn.push(tn_frame(bgr))
        elif self._keep is not None:
            self._keep.append(tn_frame(bgr))

    def finish(self) -> list[int]:
        if self._sd is not None:
            for tc in self._sd.post_process(FrameTimecode(self._last, self.fps)):
                self.cuts.append(tc.frame_num)
            return sorted({c for c in self.cuts if 0 < c <= self._last})
        cue_cuts = self._cues.cuts(self.cfg) if self._cues is not None else []
        if self._keep is not None:
            self.deferred_frames = np.stack(self._keep) if self._keep else np.zeros((0, 27, 48, 3), np.uint8)
            self._keep = None
            self.cuts = cue_cuts
            return self.cuts
        tn_cuts: list[int] = []
        if self._tn is not None:
            from curation.transnet import cuts_from_probabilities

            self.probabilities = self._tn.finish()
            tn_cuts = cuts_from_probabilities(self.probabilities, self.cfg.transnet_threshold)
        self.cuts = combine(cue_cuts, tn_cuts, self._gap, self._last)
        return self.cuts


def resolve_deferred(
    cue_cuts: Sequence[int], probabilities: np.ndarray, cfg: SplitConfig, fps: float
) -> list[int]:
    """The cuts of a deferred detector once TransNetV2's probabilities came back."""
    from curation.transnet import cuts_from_probabilities

    gap = max(1, round(cfg.min_scene_len_s * fps))
    tn_cuts = cuts_from_probabilities(probabilities, cfg.transnet_threshold)
    return combine(cue_cuts, tn_cuts, gap, len(probabilities) - 1)


def combine(cue_cuts: Sequence[int], tn_cuts: Sequence[int], gap: int, last: int) -> list[int]:
    """The fused detector's answer (either detector's cut counts), also used for one detector alone."""
    return min_gap([c for c in [*cue_cuts, *tn_cuts] if 0 < c <= last], gap)


def merge_hint_cuts(cuts: list[int], hint_cuts: list[int], min_gap: int, n_frames: int) -> list[int]:
    """Add annotated boundaries that are not already within `min_gap` frames of a detected cut."""
    out = list(cuts)
    for h in sorted(set(hint_cuts)):
        if 0 < h < n_frames and all(abs(h - c) >= min_gap for c in out):
            out.append(h)
    return sorted(out)


@dataclass(frozen=True)
class Candidate:
    start: int  # first frame, inclusive
    end: int  # last frame, exclusive
    shot: int  # index of the shot it came from
    window: int  # index of the window inside that shot


def candidates(cuts: list[int], times: np.ndarray, cfg: SplitConfig) -> list[Candidate]:
    """Shots between cuts, trimmed at each cut, split into equal windows no longer than max_clip_s.

    Equal windows (rather than max_clip_s windows plus a remainder) keep every frame of a long
    shot, and each window is at least max_clip_s/2 long.
    """
    n = len(times)
    if n == 0:
        return []
    frame_dur = float(np.median(np.diff(times))) if n > 1 else 0.04
    bounds = [0, *[c for c in cuts if 0 < c < n], n]
    out: list[Candidate] = []
    for shot, (a, b) in enumerate(itertools.pairwise(bounds)):
        s = a + (cfg.trim_frames if a > 0 else 0)
        e = b - (cfg.trim_frames if b < n else 0)
        if e - s <= 0:
            continue
        length_s = times[e - 1] - times[s] + frame_dur
        k = max(1, math.ceil(length_s / cfg.max_clip_s - 1e-9))
        edges = np.linspace(s, e, k + 1).round().astype(int)
        for w in range(k):
            out.append(Candidate(int(edges[w]), int(edges[w + 1]), shot, w))
    return out
