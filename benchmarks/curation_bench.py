"""Curation CPU cost, in one run on the same videos, as CPU seconds per second of source video:

  plain decode   one PyAV decode pass of every frame (threads on), nothing else
  ours           probe + the single analysis pass (shots, every score) + per-clip aggregation
  naive          PySceneDetect detect() with defaults, then for every clip one decode to cut it
                 and one more decode per filter (motion, exposure, blur, letterbox, text, phash)

Goal (issue 2): ours <= 1.3 x plain decode, and >= 3 x faster than naive.
Usage: python benchmarks/curation_bench.py [--videos GLOB] [--no-shared] [--hd]
"""

from __future__ import annotations

import argparse
import glob
import itertools
import os
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.analyze import analyze_clips, analyze_video
from curation.config import CurateConfig
from curation.decode import iter_frames, small_gray, step_for
from curation.probe import probe
from curation.scores import blur, exposure, letterbox, motion, phash, text
from curation.synth import Segment, SynthVideo, write_sample_corpus, write_video

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"


def cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(fn: Callable[[], object]) -> float:
    t = cpu()
    fn()
    return cpu() - t


def plain_decode(path: str) -> float:
    """Decodes every frame; returns the duration seen (containers may not state one)."""
    info = probe(path)
    last = 0.0
    n = 0
    for _, t, _ in iter_frames(path, info.stream_index, export_mvs=False):
        last, n = t, n + 1
    return last + (last / (n - 1) if n > 1 else 0.0)


def ours(path: str, cfg: CurateConfig) -> None:
    info = probe(path)
    analyze_clips(analyze_video(path, info, cfg.split, cfg.analysis), cfg.split)


def _frames(c: av.container.InputContainer, s: av.video.stream.VideoStream):
    for packet in c.demux(s):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue


def _decode_clip(path: str, start_s: float, end_s: float, every: int) -> list:
    """Decode one clip on its own (seek + decode), keeping every `every`-th frame as luma."""
    out = []
    with av.open(path) as c:
        s = c.streams.video[0] if len(c.streams.video) == 1 else c.streams.best("video")
        s.thread_type = "AUTO"
        c.seek(int(start_s / s.time_base), stream=s, backward=True)
        i = 0
        for f in _frames(c, s):
            if f.time is None or f.time < start_s:
                continue
            if f.time >= end_s:
                break
            if i % every == 0:
                out.append(small_gray(f, step_for(f.width, f.height, 144)))
            i += 1
    return out


def naive(path: str) -> None:
    from scenedetect import ContentDetector, detect

    scenes = detect(path, ContentDetector())
    info = probe(path)
    if not scenes:
        scenes_s = [(0.0, info.duration_s or 1e9)]
    else:
        scenes_s = [(a.seconds, b.seconds) for a, b in scenes]
    every = max(1, round(info.fps / 2))
    filters = [
        lambda fr: [exposure.frame_exposure(g) for g in fr],
        lambda fr: [blur.frame_sharpness(g) for g in fr],
        lambda fr: [letterbox.frame_borders(g) for g in fr],
        lambda fr: [text.frame_text_fraction(g) for g in fr],
        lambda fr: [phash.phash64(g) for g in fr],
        lambda fr: [motion.flow_magnitude(a, b) for a, b in itertools.pairwise(fr)],
    ]
    for a, b in scenes_s:
        _decode_clip(path, a, b, 1)  # the cut
        for f in filters:
            f(_decode_clip(path, a, b, every))


def upscale(src: str, dst: str, height: int = 1080) -> str:
    with av.open(src) as inp, av.open(dst, "w") as out:
        s = inp.streams.video[0]
        o = out.add_stream("libx264", rate=s.average_rate)
        o.height = height
        o.width = round(s.codec_context.width * height / s.codec_context.height) // 2 * 2
        o.pix_fmt = "yuv420p"
        o.options = {"crf": "16", "preset": "medium"}
        for f in inp.decode(s):
            out.mux(o.encode(f.reformat(width=o.width, height=o.height, format="yuv420p")))
        out.mux(o.encode(None))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", default=None, help="glob of videos (default: generated + ../shared/videos)")
    ap.add_argument("--no-shared", action="store_true")
    ap.add_argument("--hd", action="store_true", help="add a generated 1920x1080 20 s video (Pixabay-like)")
    args = ap.parse_args()
    cfg = CurateConfig()
    tmp = tempfile.mkdtemp(prefix="vjp-bench-")
    if args.videos:
        videos = sorted(glob.glob(args.videos))
    else:
        videos = write_sample_corpus(os.path.join(tmp, "gen"))
        if args.hd:
            hd = SynthVideo(
                "hd", (Segment("moving", 240, 1), Segment("text", 240, 2)), width=1920, height=1080
            )
            videos.append(write_video(hd, os.path.join(tmp, "hd.mp4")))
            if (SHARED / "imageio_cockatoo.mp4").exists():
                # Real hand-held footage at the size most Pixabay videos have, encoded the way
                # stock footage is (x264 medium, high quality): decoding costs what the corpus costs.
                src = str(SHARED / "imageio_cockatoo.mp4")
                videos.append(upscale(src, os.path.join(tmp, "cockatoo_1080p.mp4")))
        if not args.no_shared and SHARED.exists():
            videos += sorted(
                str(p)
                for p in SHARED.iterdir()
                if p.suffix in (".mp4", ".webm", ".mkv", ".mov")
                and p.name not in ("decord_video_270.mov",)  # 3 frames: timing noise only
            )
    rows = []
    for v in videos:
        try:
            dur = probe(v).duration_s or plain_decode(v)
        except Exception as e:
            print(f"skip {v}: {e}")
            continue
        d = timed(lambda v=v: plain_decode(v))
        o = timed(lambda v=v: ours(v, cfg))
        n = timed(lambda v=v: naive(v))
        rows.append((os.path.basename(v), dur, d, o, n))
        print(
            f"{os.path.basename(v):36s} {dur:7.1f}s  decode {d / dur:6.3f}  ours {o / dur:6.3f}  "
            f"naive {n / dur:6.3f}  ours/decode {o / d:5.2f}  naive/ours {n / o:5.2f}",
            flush=True,
        )
    tot = [sum(r[i] for r in rows) for i in range(1, 5)]
    dur, d, o, n = tot
    print("-" * 100)
    label = f"TOTAL ({len(rows)} videos)"
    print(
        f"{label:36s} {dur:7.1f}s  decode {d / dur:6.3f}  ours {o / dur:6.3f}  "
        f"naive {n / dur:6.3f}  ours/decode {o / d:5.2f}  naive/ours {n / o:5.2f}"
    )
    hd_rows = [r for r in rows if r[0] in ("hd.mp4", "cockatoo_1080p.mp4")]
    if hd_rows:
        d, o = sum(r[2] for r in hd_rows), sum(r[3] for r in hd_rows)
        print(f"{'1080p subset (Pixabay-like sizes)':36s} ours/decode {o / d:5.2f}")
    print("(CPU seconds per second of source video; goal: ours/decode <= 1.3, naive/ours >= 3)")


if __name__ == "__main__":
    main()
