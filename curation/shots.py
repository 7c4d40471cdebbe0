"""Shot boundaries, turned into candidate clips of bounded length.

Detectors (`split.detector`), all fed the small frames of the single analysis decode pass:

  hardcut     (default) a logistic combiner of cheap cues on each pair of consecutive frames, each
              also against its neighbours: the HSV content change, the colour-histogram change, the
              share of pixels changing strongly, a structure change (normalised correlation of gray
              thumbnails over small shifts: blind to gain, so flashes and fades barely move it; a flat
              frame next to a textured one counts as a full change), a flash test (the frame before
              comes back within 4 frames, by structure, histogram and brightness), two-frame pairs across the
              boundary against pairs beside it (jump cuts), darkness and contrast; weights fitted on
              the tuning part of a set spliced from real footage (curation/cut_splice.py). Beside it
              one rule: black to a small title card (few pixels change, all by a lot)
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


# Structure thumbnails: gray, THUMB_W x THUMB_H, compared over shifts of up to one thumbnail pixel
# (camera motion) by normalised correlation, which ignores gain and offset (flashes, fades).
THUMB_W, THUMB_H = 32, 18
BLACK_VALUE = 30  # HSV value of "black" pixels (limited-range black is 16)
TITLE_BLACK = 0.8  # a title card on black: at least this share of black pixels
LAGS = 5  # each frame is compared with the 5 before it (a flash of up to 4 frames is looked across)
_SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


# Flat indices of the 9 one-pixel-shifted (THUMB_H-2) x (THUMB_W-2) crops of a thumbnail, row by
# row as in _SHIFTS: one gather per frame instead of a sliding-window view and its reshape copy.
_CROP_ORIGINS = (np.arange(3)[:, None] * THUMB_W + np.arange(3)[None, :]).reshape(9, 1)
_CROP_OFFSETS = (np.arange(THUMB_H - 2)[:, None] * THUMB_W + np.arange(THUMB_W - 2)[None, :]).reshape(1, -1)
_CROP_INDEX = _CROP_ORIGINS + _CROP_OFFSETS


# Frames per stacked batch of CueTracker.push_many (bounds its buffers when handed a long list).
_MAX_BATCH = 64
_CROP = (THUMB_H - 2) * (THUMB_W - 2)


class _Scratch:
    """Buffers a CueTracker reuses from chunk to chunk (fresh large temporaries cost page faults)."""

    def __init__(self, cap: int, h: int, w: int) -> None:
        self.cap, self.size = cap, (h, w)
        self.bgr = np.empty((cap, h, w, 3), np.uint8)
        self.hsv = np.empty((cap + 1, h, w, 3), np.uint8)  # row 0: the frame before the chunk
        self.diff = np.empty((cap, h, w, 3), np.uint8)
        self.val = np.empty((cap, h * w), np.uint8)
        self.dv = np.empty((cap, h * w), np.uint8)
        self.gray = np.empty((cap, h, w), np.uint8)
        self.thumbs = np.empty((cap, THUMB_H, THUMB_W), np.uint8)
        self.crops = np.empty((cap * 9, _CROP), np.float32)
        self.squares = np.empty((cap * 9, _CROP), np.float32)
        self.crop_sums = np.empty((cap * 9, 1), np.float32)
        # Flat indices of every frame's 9 shifted crops in the (frames, THUMB_H * THUMB_W) thumbnails.
        frame_start = np.arange(cap)[:, None, None] * (THUMB_W * THUMB_H)
        self.crop_index = (frame_start + _CROP_INDEX).reshape(cap * 9, -1)


def _windows(rows: np.ndarray) -> np.ndarray:
    """Every run of LAGS consecutive rows, as the columns of one (len - LAGS + 1, width, LAGS) view."""
    # sliding_window_view(rows, LAGS, axis=0), built directly: its checks cost more than the products.
    row, col = rows.strides
    return np.ndarray((len(rows) - LAGS + 1, rows.shape[1], LAGS), rows.dtype, rows, 0, (row, col, row))


def _row_sums(x: np.ndarray) -> np.ndarray:
    """Exact integer sums of the rows of a 2-D uint8 array (OpenCV's int32 ones unless a row could
    overflow them; its float64 row sums are ~50x slower and accumulate in int32 all the same)."""
    if x.shape[1] * 255 < 2**31:
        return cv2.reduce(x, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    return x.sum(axis=1, dtype=np.int64)


class CueTracker:
    """Per-frame cues of the hardcut detector: a few floats a frame, decisions at the end.

    `push_many` takes a chunk of frames at once: the colour conversions, differences and reductions
    run once over the stacked chunk, and the thumbnails' unit normalisation once over all their
    crops. Every value is bit for bit what one frame at a time gave (tests/test_cue_batch.py keeps
    that code as the reference): integer sums are exact in any order, OpenCV's means are reproduced
    as it computes them (an integer sum times 1 / count), and the float32 normalisation runs the same
    row-wise numpy operations. What stays per frame is what a stacked form would round differently
    or did not make cheaper: the INTER_AREA thumbnail (stacked frames would share area cells at their
    edges), the float32 BLAS products (a stacked product sums in another order; they are called on
    the same shapes and layouts as before), the 512-bin histogram (one calcHist a frame was the
    fastest exact form) and the per-channel content means.
    """

    def __init__(self) -> None:
        self.content: list[float] = []  # mean |HSV change|, PySceneDetect's content_val
        self.strong: list[float] = []  # share of pixels whose value changes by > STRONG_CHANGE
        self.hist: list[float] = []  # 1 - cosine similarity of 512-bin colour histograms
        self.value: list[float] = []  # mean HSV value (brightness) of the frame
        self.contrast: list[float] = []  # std of the gray thumbnail
        self.black: list[float] = []  # share of pixels no brighter than BLACK_VALUE
        self.strong_lag: list[list[float]] = []  # strong-change share against frame i-1-k, k < LAGS
        self.struct: list[list[float]] = []  # 1 - best shifted correlation with frame i-1-k, k < LAGS
        self.hist_lag: list[list[float]] = []  # 1 - histogram cosine with frame i-1-k, k < LAGS
        self._vals = np.zeros((0, 0), np.uint8)  # HSV value planes of the last LAGS frames, oldest first
        # Unit centre crops and histograms of the last LAGS frames, newest first, as the rows of one
        # array each.
        self._centres = np.zeros((0, _CROP), np.float32)
        self._hists = np.zeros((0, HIST_BINS**3), np.float32)
        self._scratch: _Scratch | None = None

    def push(self, bgr: np.ndarray) -> None:
        self.push_many([bgr])

    def push_many(self, frames: Sequence[np.ndarray]) -> None:
        """The cues of the next frames, in display order (BGR uint8, all of one size)."""
        for start in range(0, len(frames), _MAX_BATCH):
            self._push_batch(frames[start : start + _MAX_BATCH])

    def _buffers(self, n: int, h: int, w: int) -> _Scratch:
        sc = self._scratch
        if sc is not None and sc.size != (h, w):
            raise ValueError(f"frame of {w}x{h} after frames of {sc.size[1]}x{sc.size[0]}")
        if sc is None or sc.cap < n:
            grown = _Scratch(max(n, DETECT_CHUNK), h, w)
            if sc is not None:
                grown.hsv[0] = sc.hsv[0]
            self._scratch = sc = grown
        return sc

    def _push_batch(self, frames: Sequence[np.ndarray]) -> None:
        n = len(frames)
        if not n:
            return
        h, w = frames[0].shape[:2]
        npx = h * w
        sc = self._buffers(n, h, w)
        first = not self.content
        bgr = np.stack(frames, out=sc.bgr[:n])
        rows = bgr.reshape(n * h, w, 3)  # the chunk as one tall image: per-pixel work in one call
        # HSV of the chunk behind the last frame's (row 0), so every frame's change is one absdiff.
        hsv = sc.hsv[: n + 1]
        cv2.cvtColor(rows, cv2.COLOR_BGR2HSV, dst=hsv[1:].reshape(n * h, w, 3))
        # cv2.mean's arithmetic: an exact integer sum times the reciprocal of the pixel count.
        inv = 1.0 / npx
        val = cv2.extractChannel(hsv[1:].reshape(n * h, w, 3), 2, dst=sc.val[:n].reshape(n * h, w))
        val = val.reshape(n, npx)
        self.value += (_row_sums(val) * inv).tolist()
        black = 1.0 - _row_sums(cv2.compare(val, BLACK_VALUE, cv2.CMP_GT)) // 255 / npx
        self.black += black.tolist()
        self.strong_lag += self._strong_lag(val, black, npx).tolist()

        diff = cv2.absdiff(
            hsv[1:].reshape(n * h, w, 3), hsv[:-1].reshape(n * h, w, 3), dst=sc.diff[:n].reshape(n * h, w, 3)
        )
        dv = cv2.extractChannel(diff, 2, dst=sc.dv[:n].reshape(n * h, w)).reshape(n, npx)
        strong = _row_sums(cv2.compare(dv, STRONG_CHANGE, cv2.CMP_GT)) // 255 / npx
        if first:  # frame 0 has no change
            self.content.append(0.0)
            self.strong.append(0.0)
        self.content += [sum(cv2.mean(d)[:3]) / 3 for d in diff.reshape(n, h, w, 3)[int(first) :]]
        self.strong += strong[int(first) :].tolist()
        sc.hsv[0] = hsv[n]

        # 512-bin BGR histograms, unit length in float32 (hist /= norm); their counts are integers,
        # so cv2.norm's double sum of squares is exact in any order.
        counts = np.stack([cv2.calcHist([f], [0, 1, 2], None, [HIST_BINS] * 3, [0, 256] * 3) for f in bgr])
        counts = counts.reshape(n, -1)
        c64 = counts.astype(np.float64)
        norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", c64, c64)), 1e-9)
        hists = counts / norms.astype(np.float32)[:, None]

        gray = cv2.cvtColor(rows, cv2.COLOR_BGR2GRAY, dst=sc.gray[:n].reshape(n * h, w)).reshape(n, h, w)
        thumbs = sc.thumbs[:n]
        for i in range(n):
            cv2.resize(gray[i], (THUMB_W, THUMB_H), dst=thumbs[i], interpolation=cv2.INTER_AREA)
        tint = thumbs.reshape(n, -1).astype(np.int64)
        # cv2.meanStdDev's arithmetic on the float32 thumbnail (exact double sums of integers).
        tinv = 1.0 / tint.shape[1]
        mean = tint.sum(axis=1) * tinv
        self.contrast += np.sqrt(np.maximum((tint * tint).sum(axis=1) * tinv - mean * mean, 0.0)).tolist()
        shifted = self._unit_crops(sc, thumbs.reshape(n, -1).astype(np.float32), n).reshape(n, 9, _CROP)

        # The float32 products with the LAGS frames before each frame. A stacked product would sum in
        # another order, so each frame gets the BLAS call it got alone, on the same shapes and
        # strides: np.matmul over a stack calls gemm (gemv, dot) once per frame. The histograms and
        # centres of the chunk and the LAGS before it are rows newest first, so frame i's
        # predecessors are a window of rows (sliding_window_view: the transposed layout as before).
        rev_h = np.concatenate((hists[::-1], self._hists))
        rev_c = np.concatenate((shifted[::-1, 4], self._centres))
        before = len(self._hists)
        sims = np.ones((n, LAGS), np.float32)  # unfilled lags give 1 - 1 = 0, their former padding
        hs = np.ones((n, LAGS), np.float32)
        full = max(0, LAGS - before)  # frames from here on have LAGS predecessors
        for i in range(min(full, n)):  # the first frames of a video: fewer
            r, k = n - 1 - i, before + i
            if k:
                sims[i, :k] = (shifted[i] @ rev_c[r + 1 : r + 1 + k].T).max(axis=0)
                hs[i, :k] = rev_h[r + 1 : r + 1 + k] @ rev_h[r]
        if full < n:
            m = n - full
            sims[full:] = np.matmul(shifted[full:], _windows(rev_c)[m:0:-1]).max(axis=1)
            lagged = _windows(rev_h).transpose(0, 2, 1)[m:0:-1]
            hs[full:] = np.matmul(lagged, rev_h[m - 1 :: -1, :, None])[..., 0]
        if first:
            self.hist.append(0.0)
        m = n - int(first)  # frames with a frame before them: the histogram cosine with it
        if m:
            dots = np.matmul(rev_h[m - 1 :: -1, None, :], rev_h[m:0:-1, :, None]).ravel()
            self.hist += np.maximum(0.0, 1.0 - dots.astype(np.float64)).tolist()
        # float32 arithmetic as per element before (a Python scalar does not widen a float32 array).
        self.struct += (1 - sims).tolist()
        self.hist_lag += np.maximum(0.0, 1 - hs).tolist()
        self._centres = rev_c[:LAGS].copy()
        self._hists = rev_h[:LAGS].copy()

    @staticmethod
    def _unit_crops(sc: _Scratch, thumbs: np.ndarray, n: int) -> np.ndarray:
        """Every frame's 9 shifted crops, each made zero-mean and unit-length (norm floored at 1e-3),
        as rows. The arithmetic is the former per-frame code's (x.mean's: a float32 sum divided by an
        intp count into it; np.linalg.norm's for a real vector), row by row, in place on reused
        buffers."""
        x, sq, s = sc.crops[: n * 9], sc.squares[: n * 9], sc.crop_sums[: n * 9]
        np.take(thumbs, sc.crop_index[: n * 9], out=x)
        np.add.reduce(x, axis=-1, keepdims=True, out=s)
        np.true_divide(s, np.intp(_CROP), out=s, casting="unsafe")
        np.subtract(x, s, out=x)
        np.multiply(x, x, out=sq)
        np.add.reduce(sq, axis=-1, keepdims=True, out=s)
        np.sqrt(s, out=s)
        np.maximum(s, 1e-3, out=s)
        return np.divide(x, s, out=x)

    def _strong_lag(self, val: np.ndarray, black: np.ndarray, npx: int) -> np.ndarray:
        """Strong-change share of each new frame against the LAGS before it; only the title rule reads
        these, and only between mostly black frames: 0 for the others."""
        n = len(val)
        dark = np.concatenate((np.asarray(self.black[-LAGS - n : -n]), black)) >= TITLE_BLACK
        out = np.zeros((n, LAGS))
        if not dark.any():  # the common case: nothing to compute
            joined = val if n >= LAGS else np.concatenate((self._vals.reshape(-1, npx), val))
            self._vals = joined[-LAGS:].copy()
            return out
        vals = np.concatenate((self._vals.reshape(-1, npx), val))
        self._vals = vals[-LAGS:].copy()
        before = len(vals) - n
        now = np.arange(before, len(vals))
        for k in range(LAGS):
            then = now - 1 - k
            need = then >= 0
            need[need] &= dark[now[need]] | dark[then[need]]
            if need.any():
                changed = cv2.absdiff(vals[now[need]], vals[then[need]]) > STRONG_CHANGE
                out[need, k] = np.count_nonzero(changed, axis=1) / npx
        return out

    def cuts(self, cfg: SplitConfig, gap: int = 1) -> list[int]:
        """Frames that start a new shot: the learned combiner's peaks no closer than `gap` frames,
        plus the title-on-black rule."""
        n = len(self.content)
        if n < 2:
            return []
        z = cue_features(self) @ COEF + BIAS
        z[0] = -np.inf
        # Strongest first, so a flash's two edges or a cut's neighbour never outrank the cut.
        peak = (z >= cfg.hardcut_threshold) & (z >= np.maximum(np.roll(z, 1), np.roll(z, -1)))
        out: list[int] = []
        for i in sorted(np.flatnonzero(peak), key=lambda i: -z[i]):
            if all(abs(i - j) >= gap for j in out):
                out.append(int(i))
        return sorted(set(out) | set(self._titles_on_black()))

    def _titles_on_black(self) -> list[int]:
        """Black to a title card (or back, or card to card): few pixels change, each by a lot, between
        mostly black frames. No footage of the tuning part has it, so it is a rule, not a learned weight;
        both frames must be mostly black pixels (TITLE_BLACK), which dimmed shots with motion are not."""
        s, bk = (np.asarray(x, np.float64) for x in (self.strong, self.black))
        prev_bk = np.concatenate([[bk[0]], bk[:-1]])
        rs = _neighbour_ratio(s, 2, 3e-4)
        hit = np.minimum(bk, prev_bk) >= TITLE_BLACK
        hit &= (s >= 0.001) & (rs >= 5)
        # A flash or flicker in a dark shot: the pixels that jumped are back within 4 frames.
        sl = np.asarray(self.strong_lag, np.float64)
        n = len(s)
        back = np.full(n, np.inf)
        for lag in range(1, LAGS):
            fwd = np.full(n, np.inf)
            fwd[: max(n - lag, 0)] = sl[lag:, lag]
            bwd = np.where(np.arange(n) > lag, sl[:, lag], np.inf)
            back = np.minimum(back, np.minimum(fwd, bwd))
        hit &= back > 0.25 * s
        hit[0] = False
        return [int(i) for i in np.flatnonzero(hit)]


def _neighbour_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Mean of x at i-window..i+window without i (frame 0 excluded)."""
    n = len(x)
    i = np.arange(n)
    lo, hi = np.maximum(1, i - window), np.minimum(n, i + window + 1)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    k = hi - lo - 1
    return np.where(k > 0, (csum[hi] - csum[lo] - x) / np.maximum(k, 1), x)


FEATURES = (
    "content",
    "content_ratio",
    "hist",
    "hist_ratio",
    "strong",
    "strong_ratio",
    "struct",
    "struct_ratio",
    "struct_return",
    "hist_return",
    "dim",
    "contrast",
    "value_flash",
    "struct_dim",
    "struct_flat",
    "struct_cross",
)


# The combiner's weights over FEATURES, fitted by `benchmarks/split_bench.py --fit` on the tuning part
# of the generated set (curation/cut_splice.py, seed 0) and an extra jump-cut-rich tuning set of the
# same footage; the held-out part never entered the fit. Log-odds = features @ COEF + BIAS.
COEF = np.array(
    [
        0.0572,  # content
        0.9712,  # content_ratio
        -2.0607,  # hist
        1.1838,  # hist_ratio
        0.0002,  # strong
        0.5796,  # strong_ratio
        3.9777,  # struct
        0.5710,  # struct_ratio
        -3.9023,  # struct_return
        0.3766,  # hist_return
        -2.1570,  # dim
        0.7194,  # contrast
        -23.3641,  # value_flash
        4.8611,  # struct_dim
        0.5101,  # struct_flat
        1.7019,  # struct_cross
    ]
)
BIAS = -10.1725


def cue_features(t: CueTracker, window: int = 2) -> np.ndarray:
    """Per frame i, the cues of the boundary between frames i-1 and i (row 0 is all zeros)."""
    c, s, h, v, sd = (np.asarray(x, np.float64) for x in (t.content, t.strong, t.hist, t.value, t.contrast))
    n = len(c)
    if n == 0:
        return np.zeros((0, len(FEATURES)))
    d = np.asarray(t.struct, np.float64)  # d[i, k]: frame i against frame i-1-k
    hl = np.asarray(t.hist_lag, np.float64)
    # A flat frame (washed out, black) correlates with anything by noise alone: next to a textured
    # frame the structure certainly changed, whatever the correlation says.
    prev_sd = np.concatenate([[sd[0]], sd[:-1]])
    flat = np.clip((4 - np.minimum(sd, prev_sd)) / 2, 0, 1)
    one_flat = flat * np.clip((np.maximum(sd, prev_sd) - 4) / 4, 0, 1)
    d1 = np.maximum(d[:, 0], one_flat)
    # Two frames apart: pairs across the boundary against pairs on either side of it. Motion makes
    # both grow alike; a cut (a jump cut too) only the first.
    d2 = np.concatenate([d[:, 1], [0.0, 0.0, 0.0]])
    i = np.arange(n)
    cross = np.log((d2[i] + d2[i + 1] + 0.02) / (d2[np.maximum(i - 1, 0)] + d2[i + 2] + 0.02))

    def lr(x: np.ndarray, eps: float) -> np.ndarray:
        return np.log((x + eps) / (_neighbour_mean(x, window) + eps))

    # The content before the boundary comes back within 4 frames (a flash, a flicker): compare
    # frame i-1 with frames i+1..i+4, and frames i-2..i-5 with frame i.
    big = 2.0
    ret = np.full(n, big)
    hret = np.full(n, big)
    for lag in range(1, LAGS):
        fwd = np.full(n, big)
        fwd[: max(n - lag, 0)] = d[lag:, lag]
        hfwd = np.full(n, big)
        hfwd[: max(n - lag, 0)] = hl[lag:, lag]
        bwd = np.where(np.arange(n) > lag, d[:, lag], big)
        hbwd = np.where(np.arange(n) > lag, hl[:, lag], big)
        ret = np.minimum(ret, np.minimum(fwd, bwd))
        hret = np.minimum(hret, np.minimum(hfwd, hbwd))
    prev_v = np.concatenate([[v[0]], v[:-1]])
    # A brightness step counts against a cut only when the brightness comes back within 4 frames
    # (a flash): the part of the step that frames i+1..i+4 undo back to frame i-1, or frames
    # i-2..i-5 already had before it. A cut between a bright and a dark shot keeps its step.
    step = np.abs(v - prev_v)
    vback = np.full(n, np.inf)
    for lag in range(1, LAGS):
        fwd = np.full(n, np.inf)
        fwd[: max(n - lag, 0)] = np.abs(v[lag:] - prev_v[: max(n - lag, 0)])
        bwd = np.full(n, np.inf)
        bwd[lag + 1 :] = np.abs(v[lag + 1 :] - v[: max(n - lag - 1, 0)])
        vback = np.minimum(vback, np.minimum(fwd, bwd))
    v_flash = np.maximum(0.0, step - vback)
    lo_sd = np.log1p(np.minimum(sd, prev_sd))
    dim = np.clip((40 - np.maximum(v, prev_v)) / 40, 0, 1)
    f = np.stack(
        [
            np.log1p(c),
            lr(c, 1.0),
            np.sqrt(h),
            lr(h, 1e-3),
            np.log(s + 1e-4),
            lr(s, 3e-4),
            d1,
            lr(d1, 0.02),
            # Frames further apart differ more than neighbours: steady motion, not a cut. The other
            # sign (content seen again) says nothing for a cut: random shake meets it by chance.
            np.maximum(0.0, np.log((np.minimum(ret, big) + 0.02) / (d1 + 0.02))),
            np.log((np.minimum(hret, big) + 1e-3) / (h + 1e-3)),
            dim,
            lo_sd,
            v_flash / 255,
            d1 * dim,
            # Correlation means little on a nearly flat frame (black, the bottom of a fade).
            d1 * np.clip((4 - np.minimum(sd, prev_sd)) / 4, 0, 1),
            cross,
        ],
        axis=1,
    )
    f[0] = 0.0
    return f


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


# Detection frames are handed to the detectors DETECT_CHUNK at a time, not as each is decoded: the
# decoder and the cue code then each run on warm caches. Interleaved frame by frame, decode + cues
# cost 10-15% more CPU than in chunks of 16 (the shared videos, this machine); the cues are the same.
# The hardcut cues of a chunk are computed together (CueTracker.push_many), bit for bit as per frame.
DETECT_CHUNK = 16


class ShotDetector:
    """Feeds frames one at a time, so the caller's single decode pass also serves detection.

    `process` takes the small BGR detection frame of every decoded frame, in display order (its
    caller must not change it afterwards: it is kept until DETECT_CHUNK frames are in); `finish`
    returns the frames that start a new shot. With `defer_transnet` the 48x27 frames are kept
    instead of run (`deferred_frames`, 3.9 KB a frame) for a GPU actor elsewhere, and
    `finish` returns the cheap cues' cuts only, for `resolve_deferred`.
    """

    def __init__(
        self, cfg: SplitConfig, fps: float, device: str | None = None, defer_transnet: bool = False
    ) -> None:
        self.cfg = cfg
        self.fps = fps
        self.cuts: list[int] = []
        self._last = 0
        self._pending: list[tuple[int, np.ndarray]] = []
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
        self._pending.append((index, bgr))
        if len(self._pending) >= DETECT_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._cues is not None and self._pending:
            self._cues.push_many([bgr for _, bgr in self._pending])
        for index, bgr in self._pending:
            self._process(index, bgr)
        self._pending = []

    def _process(self, index: int, bgr: np.ndarray) -> None:
        self._last = index
        if self._sd is not None:
            for tc in self._sd.process_frame(FrameTimecode(index, self.fps), bgr):
                self.cuts.append(tc.frame_num)
        if self._tn is not None:
            self._tn.push(tn_frame(bgr))
        elif self._keep is not None:
            self._keep.append(tn_frame(bgr))

    def finish(self) -> list[int]:
        self._flush()
        if self._sd is not None:
            for tc in self._sd.post_process(FrameTimecode(self._last, self.fps)):
                self.cuts.append(tc.frame_num)
            return sorted({c for c in self.cuts if 0 < c <= self._last})
        cue_cuts = self._cues.cuts(self.cfg, self._gap) if self._cues is not None else []
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
