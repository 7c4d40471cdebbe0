"""Curation CPU cost, in one run on the same videos, as CPU seconds per second of source video:

  plain decode   one PyAV decode pass of every frame (threads on), nothing else
  ours           probe + the single analysis pass (shots, every score) + per-clip aggregation,
                 default config: motion from optical flow on every sample, frame-threaded decode
  vectors        ours with `analysis.flow: auto`: codec motion vectors (slice-threaded decode, the
                 only way they are exact) and flow where they are ambiguous
  before         the pre-issue-8 default: vectors from the frame-threaded decode (not reproducible)
  naive          PySceneDetect detect() with defaults, then for every clip one decode to cut it
                 and one more decode per filter (motion, exposure, blur, letterbox, text, phash)

Then a reproducibility check on every H.264 video: how many sampled frames' scores differ between
two runs (ours: three runs), and how many frames' exported motion vectors differ between two
frame-threaded decodes (the root cause of issue 8).

  pipeline       what `vjp curate` spends per video without clip extraction: the file's hash, the
                 analysis in the isolated decoder child (CPU of both processes; a reused child, as
                 in a run, and one decode thread: workers run one video per core), the manifest parts
  decode 1 thr   the plain decode pass with one FFmpeg thread (what the pipeline's decode costs)

Then the fixed cost per video (issue 16): `vjp curate` on the embedded Ray over N tiny generated
videos (160x96, 3 s), CPU of every process of the run (driver, Ray, workers, decoder children)
per video, minus the same videos' work done in-process (hash, probe, analysis): batched tasks
with reused decoder children (the default), batched with a fresh child per video
(VJP_ISOLATE_MAX_CALLS=1), and the former way (a task and a child process per video).

Goals: ours <= 1.3 x plain decode, >= 3 x faster than naive, reproducible (issue 2); pipeline
<= 1.3 x decode on the small real videos and <= 1.1 x at 1080p, fixed cost <= 20 ms CPU per
video (issue 16).
Usage: python benchmarks/curation_bench.py [--videos GLOB] [--no-shared] [--hd] [--no-naive]
       [--overhead N] [--no-repro]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import curation.decode
from curation import isolate
from curation.analyze import analyze_clips, analyze_video
from curation.config import CurateConfig
from curation.decode import iter_frames, motion_vectors, small_gray, step_for
from curation.ids import sha256_file
from curation.pipeline import _analyze_in_child, process_video
from curation.probe import probe
from curation.scores import blur, exposure, letterbox, motion, phash, text
from curation.sources.base import VideoItem
from curation.synth import Segment, SynthVideo, write_sample_corpus, write_video

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"


def cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(fn: Callable[[], object]) -> float:
    t = cpu()
    fn()
    return cpu() - t


def plain_decode(path: str, threads: int = 0) -> float:
    """Decodes every frame; returns the duration seen (containers may not state one)."""
    info = probe(path)
    last = 0.0
    n = 0
    for _, t, _ in iter_frames(path, info.stream_index, export_mvs=False, threads=threads):
        last, n = t, n + 1
    return last + (last / (n - 1) if n > 1 else 0.0)


def ours(path: str, cfg: CurateConfig) -> list[Any]:
    """The analysis; returns every sample's scores so runs can be compared."""
    info = probe(path)
    a = analyze_video(path, info, cfg.split, cfg.analysis)
    analyze_clips(a, cfg.split)
    return [(s.index, sorted(s.scores.items()), s.borders, s.phash) for s in a.samples]


def before(path: str, cfg: CurateConfig) -> list[Any]:
    """The former default: exported vectors with FFmpeg's frame threads."""
    with mock.patch.object(curation.decode, "thread_type", lambda export_mvs: "AUTO"):
        return ours(path, cfg)


def pipeline(path: str, cfg: CurateConfig, out: str) -> float:
    """process_video's CPU (this process + the isolated child) with extraction turned off."""
    no_extract = cfg.model_copy(update={"filters": cfg.filters.model_copy(update={"min_short_side": 10**6})})
    item = VideoItem(source="files", key=path, uri=path, path=path)
    item.resume = (None, [])  # what the driver's resume index hands a new video
    t, c = cpu(), isolate.child_cpu_seconds()
    row = process_video(item, out, no_extract)
    assert row["status"] == "ok", row
    return cpu() - t + isolate.child_cpu_seconds() - c


def differing(runs: list[list[Any]]) -> int:
    """Samples whose scores differ from the first run's in any later run."""
    return sum(any(r[i] != runs[0][i] for r in runs[1:]) for i in range(len(runs[0])))


def vector_digests(path: str, frame_threads: bool) -> list[str | None]:
    """One digest of each frame's exported motion vectors (field by field: padding bytes are junk)."""
    info = probe(path)
    frame = mock.patch.object(curation.decode, "thread_type", lambda export_mvs: "AUTO")
    out: list[str | None] = []
    with frame if frame_threads else contextlib.nullcontext():
        for _, _, f in iter_frames(path, info.stream_index, export_mvs=True):
            mvs = motion_vectors(f)
            fields = b"" if mvs is None else b"".join(mvs[k].tobytes() for k in mvs.dtype.names)
            out.append(None if mvs is None else hashlib.sha256(fields).hexdigest())
    return out


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


def tiny_corpus(folder: str, n: int) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    return [
        write_video(
            SynthVideo(f"t{i}", (Segment("moving", 72, i),), width=160, height=96),
            os.path.join(folder, f"t{i:05d}.mp4"),
        )
        for i in range(n)
    ]


_OVERHEAD_RUN = """
import json, os, sys, time
import psutil
sys.path.insert(0, {repo!r})
from curation.config import CurateConfig
from jobs.curate import curate
from jobs.runner import init_ray

def kind(p, me):
    if p.pid == me:
        return "driver"
    cmd = " ".join(p.cmdline())
    if "multiprocessing.forkserver" in cmd:  # the decoder children (and their idle forkservers)
        return "decoder"
    return "ray_worker" if p.name().startswith("ray::") else "ray_system"

def tree_cpu():
    me, out = psutil.Process(), {{}}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            k = kind(p, me.pid)
            out[k] = out.get(k, 0.0) + t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return out

if __name__ == "__main__":
    cfg = CurateConfig(runner={{"progress": False, "videos_per_task": {per_task}}})
    init_ray(None)
    # Warm up: Ray's workers and their decoder children start once per run, not per video.
    curate("files:{warm}/*.mp4", {out!r} + "-warm", cfg)
    c, w = tree_cpu(), time.time()
    s = curate("files:{src}/*.mp4", {out!r}, cfg)
    d = tree_cpu()
    print(json.dumps({{"cpu": {{k: d[k] - c.get(k, 0.0) for k in d}}, "wall": time.time() - w,
                      "videos": s["videos"], "ok": s["videos_ok"]}}))
"""


def overhead(n: int, tmp: str) -> None:
    """Fixed CPU per video of `vjp curate` on Ray, against the same videos' in-process work."""
    src = os.path.join(tmp, "tiny")
    videos = tiny_corpus(src, n)
    warm = os.path.join(tmp, "tiny-warm")
    tiny_corpus(warm, 4)
    cfg_json = CurateConfig().model_dump_json()
    _analyze_in_child(videos[0], cfg_json, [], False)
    work = decode = 0.0
    for v in videos:
        work += timed(lambda v=v: (sha256_file(v), _analyze_in_child(v, cfg_json, [], False)))
        decode += timed(lambda v=v: plain_decode(v))
    print(f"\nfixed cost per video: `vjp curate` (embedded Ray) on {n} generated 160x96 3 s videos, ms")
    head = ("wall", "CPU", "fixed", "CPU-decode", "decoders", "driver", "Ray wkrs", "Ray sys")
    print(f"{'':36s}" + "".join(f"{h:>11s}" for h in head))
    print(f"{'in-process work (hash+analysis)':36s}{'':11s}{1e3 * work / n:11.1f}")
    print(f"{'one decode pass':36s}{'':11s}{1e3 * decode / n:11.1f}")
    repo = str(Path(__file__).resolve().parents[1])
    modes = (
        ("batched, reused children (default)", 0, ""),
        ("batched, a fresh child per video", 0, "1"),
        ("a task + a child per video (before)", 1, "1"),
    )
    for i, (label, per_task, max_calls) in enumerate(modes):
        out = os.path.join(tmp, f"tiny-out-{i}")
        # Ray's workers import this checkout; VJP_ISOLATE_MAX_CALLS: calls a decoder child serves
        # (empty: the default, isolate.MAX_CALLS).
        env = {**os.environ, "PYTHONPATH": repo, "VJP_ISOLATE_MAX_CALLS": max_calls}
        code = _OVERHEAD_RUN.format(repo=repo, per_task=per_task, warm=warm, src=src, out=out)
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False, cwd=repo
        )
        if res.returncode:
            print(f"{label}: failed\n{res.stderr[-2000:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        if not r["videos"] == n == r["ok"]:
            print(f"{label}: {r['ok']} of {r['videos']} videos ok (expected {n}): see {out}")
        per = {k: 1e3 * v / n for k, v in r["cpu"].items()}
        total = sum(per.values())
        cols = (1e3 * r["wall"] / n, total, total - 1e3 * work / n, total - 1e3 * decode / n)
        cols += tuple(per.get(k, 0.0) for k in ("decoder", "driver", "ray_worker", "ray_system"))
        print(f"{label:36s}" + "".join(f"{c:11.1f}" for c in cols))
    print(
        "(CPU = every process of the run; fixed = CPU - in-process work, goal <= 20 ms; decoders = the "
        "isolated children, where the work runs: the other three columns are overhead)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", default=None, help="glob of videos (default: generated + ../shared/videos)")
    ap.add_argument("--no-shared", action="store_true")
    ap.add_argument("--hd", action="store_true", help="add a generated 1920x1080 20 s video (Pixabay-like)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive pipeline (the slow part)")
    ap.add_argument("--overhead", type=int, default=200, help="tiny videos for the fixed-cost run (0: skip)")
    ap.add_argument("--no-repro", action="store_true", help="skip the reproducibility check")
    args = ap.parse_args()
    cfg = CurateConfig()
    vec_cfg = cfg.model_copy(update={"analysis": cfg.analysis.model_copy(update={"flow": "auto"})})
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
    h264 = []
    small: list[str] = []
    pipe_out = os.path.join(tmp, "pipeline-out")
    # A run starts its decoder children once, not per video: start this process's before measuring.
    pipeline(tiny_corpus(os.path.join(tmp, "warm"), 1)[0], cfg, os.path.join(tmp, "warm-out"))
    for v in videos:
        try:
            info = probe(v)
            dur = info.duration_s or plain_decode(v)
        except Exception as e:
            print(f"skip {v}: {e}")
            continue
        if info.codec == "h264":
            h264.append(v)
        if min(info.width, info.height) <= 480:
            small.append(os.path.basename(v))
        d = timed(lambda v=v: plain_decode(v))
        d1 = timed(lambda v=v: plain_decode(v, threads=1))
        o = timed(lambda v=v: ours(v, cfg))
        m = timed(lambda v=v: ours(v, vec_cfg))
        b = timed(lambda v=v: before(v, vec_cfg))
        n = float("nan") if args.no_naive else timed(lambda v=v: naive(v))
        p = pipeline(v, cfg, pipe_out)
        rows.append((os.path.basename(v), dur, d, o, m, b, n, p, d1))
        print(
            f"{os.path.basename(v):32s} {dur:6.1f}s  decode {d / dur:6.3f}  ours {o / dur:6.3f}  "
            f"vectors {m / dur:6.3f}  before {b / dur:6.3f}  naive {n / dur:6.3f}  pipeline {p / dur:6.3f}  "
            f"ours/decode {o / d:5.2f}  pipeline/decode {p / d:5.2f}  naive/ours {n / o:5.2f}  "
            f"decode 1 thr/decode {d1 / d:5.2f}",
            flush=True,
        )
    tot = [sum(r[i] for r in rows) for i in range(1, 9)]
    dur, d, o, m, b, n, p, d1 = tot
    print("-" * 100)
    label = f"TOTAL ({len(rows)} videos)"
    print(
        f"{label:32s} {dur:6.1f}s  decode {d / dur:6.3f}  ours {o / dur:6.3f}  vectors {m / dur:6.3f}  "
        f"before {b / dur:6.3f}  naive {n / dur:6.3f}  pipeline {p / dur:6.3f}  ours/decode {o / d:5.2f}  "
        f"pipeline/decode {p / d:5.2f}  before/decode {b / d:5.2f}  naive/ours {n / o:5.2f}  "
        f"decode 1 thr/decode {d1 / d:5.2f}"
    )
    shared = {p.name for p in SHARED.iterdir()} if SHARED.exists() else set()
    subsets = (
        ("small real videos (<= 480p)", [r for r in rows if r[0] in shared and r[0] in small]),
        ("1080p subset (Pixabay-like sizes)", [r for r in rows if r[0] in ("hd.mp4", "cockatoo_1080p.mp4")]),
    )
    for name, sub in subsets:
        if sub:
            d, o, b, p, d1 = (sum(r[i] for r in sub) for i in (2, 3, 5, 7, 8))
            ratios = (
                f"ours/decode {o / d:5.2f}  pipeline/decode {p / d:5.2f}  before/decode {b / d:5.2f}  "
                f"decode 1 thr/decode {d1 / d:5.2f}"
            )
            print(f"{name:32s} {ratios}")
    print(
        "(CPU seconds per second of source video; goals: ours/decode <= 1.3, naive/ours >= 3; "
        "pipeline/decode <= 1.3 small real, <= 1.1 at 1080p)"
    )
    if args.overhead:
        overhead(args.overhead, tmp)
    if args.no_repro:
        return

    print("\nreproducibility (H.264): sampled frames whose scores differ between runs")
    for v in h264:
        name = os.path.basename(v)
        a = differing([ours(v, cfg) for _ in range(3)])
        vec = differing([ours(v, vec_cfg) for _ in range(2)])
        old = [before(v, vec_cfg) for _ in range(2)]
        one, two, three = vector_digests(v, False), vector_digests(v, True), vector_digests(v, True)
        raced = sum(x != y or x != z for x, y, z in zip(one, two, three, strict=True))
        print(
            f"{name:32s} samples {len(old[0]):4d}  ours x3 {a:3d}  vectors x2 {vec:3d}  before x2 "
            f"{differing(old):3d}  | frames {len(one):5d}, frame-threaded vectors != exact: {raced}",
            flush=True,
        )


if __name__ == "__main__":
    main()
