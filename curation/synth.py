"""Generated videos with known ground truth: the sample corpus of the README and the test corpus.

Each segment is textured (multi-scale noise plus shapes), so cut detection, blur and text scores
behave as on real footage; segments differ in palette and brightness so every cut is a clear
content change (PySceneDetect misses some flat colour changes, e.g. red to green).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction

import av
import cv2
import numpy as np


@dataclass(frozen=True)
class Segment:
    kind: str  # moving | static | dark | letterbox | text | shaky | blurry | washed
    frames: int
    seed: int = 0


@dataclass(frozen=True)
class SynthVideo:
    name: str
    segments: tuple[Segment, ...]
    fps: int = 24
    width: int = 640
    height: int = 360
    crf: int = 20
    expected: dict[str, str] = field(default_factory=dict)

    @property
    def cuts(self) -> list[int]:
        out, n = [], 0
        for s in self.segments[:-1]:
            n += s.frames
            out.append(n)
        return out


def texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((4, 0.5), (16, 0.3), (64, 0.2)):
        small = rng.random((max(2, h * cells // w), cells, 3)).astype(np.float32)
        img += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    tint = rng.random(3).astype(np.float32) * 0.8 + 0.2
    img = np.clip(img * tint * 255.0 * 0.9 + 20, 0, 255).astype(np.uint8)
    for _ in range(120):  # hard edges, so the texture is sharp
        c = tuple(int(x) for x in rng.integers(0, 255, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), int(rng.integers(4, 30)), c, -1)
        else:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(5, 50)), y + int(rng.integers(5, 50))), c, -1)
    return img


def _bounce(v: int, span: int) -> int:
    v %= 2 * (span - 1)
    return v if v < span else 2 * (span - 1) - v


def _segment_frames(seg: Segment, h: int, w: int) -> list[np.ndarray]:
    pad = 240
    base = texture(h + pad, w + pad, seg.seed)
    rng = np.random.default_rng(seg.seed + 1)
    frames = []
    for i in range(seg.frames):
        if seg.kind == "static":
            x = y = 0
        elif seg.kind == "shaky":
            x, y = (int(v) for v in rng.integers(0, pad, 2))
        else:
            # A slow pan that bounces at the texture's edge: no jump, so no false cut.
            x, y = _bounce(2 * i, pad), _bounce(i, pad)
        f = base[y : y + h, x : x + w].copy()
        if seg.kind == "dark":
            f = (f.astype(np.float32) * 0.08).astype(np.uint8)
        elif seg.kind == "washed":
            f = (235 + f.astype(np.float32) * 0.06).astype(np.uint8)
        elif seg.kind == "blurry":
            f = cv2.GaussianBlur(f, (0, 0), 6)
        elif seg.kind == "letterbox":
            bar = h // 8
            f[:bar] = 0
            f[h - bar :] = 0
        elif seg.kind == "text":
            for line, yy in (("SUBTITLE LINE ONE 2026", h - 50), ("burnt-in caption text here", h - 20)):
                cv2.putText(f, line, (20, yy), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 5, cv2.LINE_AA)
                cv2.putText(f, line, (20, yy), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
        frames.append(f)
    return frames


def write_video(v: SynthVideo, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with av.open(path, "w") as out:
        st = out.add_stream("libx264", rate=Fraction(v.fps))
        st.width, st.height, st.pix_fmt = v.width, v.height, "yuv420p"
        st.codec_context.thread_count = 1
        st.options = {"crf": str(v.crf), "preset": "ultrafast", "g": str(v.fps * 2)}
        for seg in v.segments:
            for f in _segment_frames(seg, v.height, v.width):
                out.mux(st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(st.encode(None))
    return path


def sample_corpus() -> list[SynthVideo]:
    """Small corpus with known cuts and verdicts (first failing reason per clip, by segment)."""
    s = 3 * 24
    return [
        SynthVideo(
            "cuts",
            (
                Segment("moving", s, 1),
                Segment("static", s, 2),
                Segment("dark", s, 3),
                Segment("letterbox", s, 4),
            ),
            expected={"0": "kept", "1": "static", "2": "too_dark", "3": "kept"},
        ),
        SynthVideo(
            "quality",
            (Segment("text", s, 5), Segment("blurry", s, 7), Segment("washed", s, 8), Segment("shaky", s, 6)),
            expected={"0": "burnt_in_text", "1": "blurry", "2": "washed_out", "3": "too_fast_or_shaky"},
        ),
        SynthVideo("duplicate", (Segment("moving", s, 1),), crf=28, expected={"0": "near_duplicate"}),
        SynthVideo("short", (Segment("moving", 36, 9),), expected={"0": "too_short"}),
        SynthVideo("long", (Segment("moving", 25 * 24, 10),), expected={}),
    ]


def write_sample_corpus(folder: str) -> list[str]:
    return [write_video(v, os.path.join(folder, f"{v.name}.mp4")) for v in sample_corpus()]
