"""Shot boundaries from PySceneDetect, turned into candidate clips of bounded length."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode, SceneDetector

from curation.config import SplitConfig


def make_detector(cfg: SplitConfig, fps: float) -> SceneDetector:
    min_len = max(1, round(cfg.min_scene_len_s * fps))
    if cfg.detector == "content":
        return ContentDetector(threshold=cfg.content_threshold, min_scene_len=min_len)
    return AdaptiveDetector(
        adaptive_threshold=cfg.adaptive_threshold, min_content_val=cfg.min_content_val, min_scene_len=min_len
    )


class ShotDetector:
    """Feeds frames one at a time, so the caller's single decode pass also serves detection."""

    def __init__(self, cfg: SplitConfig, fps: float) -> None:
        self.fps = fps
        self._det = make_detector(cfg, fps)
        self.cuts: list[int] = []
        self._last = 0

    def process(self, index: int, bgr: np.ndarray) -> None:
        self._last = index
        for tc in self._det.process_frame(FrameTimecode(index, self.fps), bgr):
            self.cuts.append(tc.frame_num)

    def finish(self) -> list[int]:
        for tc in self._det.post_process(FrameTimecode(self._last, self.fps)):
            self.cuts.append(tc.frame_num)
        return sorted({c for c in self.cuts if 0 < c <= self._last})


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
