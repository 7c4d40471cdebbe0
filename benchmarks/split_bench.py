"""Shot detection on real videos against hand-labelled hard cuts (tests/data/cuts), in one run.

Every labelled video in ../shared/videos is decoded once, as the analysis pass decodes it (same
small BGR detection frames); then every detector runs on the same frames:

  content      PySceneDetect ContentDetector, the project's settings before issue 8 (min scene 0.5 s)
  adaptive     PySceneDetect AdaptiveDetector, the default before issue 8 (min scene 0.5 s)
  hardcut      the default now (curation/shots.py)
  transnetv2   TransNetV2 on 48x27 frames, one CPU thread
  fused        hardcut's and TransNetV2's cuts together (their two measured costs added)

P/R/F1: 0.15 s tolerance, hard cuts only, detections inside labelled fades/dissolves ignored;
"tune" is what the thresholds were chosen on, "heldout" was not looked at while choosing.
CPU: detection seconds per second of video (decode not included; the decode pass itself is
printed for scale). --analysis adds the whole analysis pass (decode, shots, every score) with
the default config against the same pass with the old default detector. With a GPU, TransNetV2
is also timed there.

Usage: python benchmarks/split_bench.py [--no-transnet] [--analysis] [--videos DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation import cut_eval
from curation.analyze import DETECT_SHORT_SIDE, analyze_video
from curation.config import AnalysisConfig, SplitConfig
from curation.decode import iter_frames, small_bgr, step_for
from curation.probe import probe
from curation.shots import ShotDetector, combine

SHARED = Path(os.environ.get("VJP_SHARED_VIDEOS", Path(__file__).resolve().parents[2] / "shared" / "videos"))
BEFORE = {"min_scene_len_s": 0.5}  # the split settings of the default before issue 8
DETECTORS = {
    "content": SplitConfig(detector="content", **BEFORE),
    "adaptive": SplitConfig(detector="adaptive", **BEFORE),
    "hardcut": SplitConfig(),
    "transnetv2": SplitConfig(detector="transnetv2", transnet_device="cpu"),
}


class Video:
    def __init__(self, path: Path, labels: cut_eval.CutLabels) -> None:
        self.labels = labels
        self.path = str(path)
        self.info = probe(self.path)
        step = step_for(self.info.coded_width, self.info.coded_height, DETECT_SHORT_SIDE)
        acfg = AnalysisConfig()
        t0 = time.process_time()
        frames, times = [], []
        for _, t, frame in iter_frames(self.path, self.info.stream_index, False, 0, acfg.skip_loop_filter):
            frames.append(small_bgr(frame, step, self.info.rotation))
            times.append(t)
        self.decode_cpu = time.process_time() - t0
        self.frames = frames
        self.times = np.asarray(times)
        self.duration = float(self.times[-1] + np.median(np.diff(self.times)))

    def run(self, cfg: SplitConfig) -> tuple[list[int], float, ShotDetector]:
        t0 = time.process_time()
        det = ShotDetector(cfg, self.info.fps)
        for i, f in enumerate(self.frames):
            det.process(i, f)
        cuts = det.finish()
        return cuts, time.process_time() - t0, det


def _row(name: str, which: str, s: cut_eval.Score, cpu: float, dur: float) -> str:
    prf = f"{s.precision:6.3f} {s.recall:6.3f} {s.f1:6.3f}"
    return f"{name:12s} {which:8s} {s.tp + s.fn:5d} {prf} {cpu / dur:10.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", default=str(SHARED), help="folder holding the labelled videos")
    ap.add_argument("--no-transnet", action="store_true", help="skip transnetv2 and fused (~1 CPU s/video s)")
    ap.add_argument("--analysis", action="store_true", help="also time the whole analysis pass")
    args = ap.parse_args()
    folder = Path(args.videos)
    videos = []
    for labels in cut_eval.load_all():
        path = folder / labels.video
        if not path.exists():
            print(f"skip {labels.video}: not in {folder}")
            continue
        videos.append(Video(path, labels))
    if not videos:
        sys.exit(f"no labelled video found in {folder}")
    dets = {k: v for k, v in DETECTORS.items() if not (args.no_transnet and k == "transnetv2")}
    scores = {(d, w): cut_eval.Score() for d in [*dets, "fused"] for w in (*cut_eval.SETS, "all")}
    cpu = {d: 0.0 for d in [*dets, "fused"]}
    dur = {w: 0.0 for w in (*cut_eval.SETS, "all")}
    decode_cpu = sum(v.decode_cpu for v in videos)
    for v in videos:
        t = v.times - v.times[0]
        raw: dict[str, list[int]] = {}
        for name, cfg in dets.items():
            cuts, c, _ = v.run(cfg)
            raw[name] = cuts
            cpu[name] += c
        if "transnetv2" in raw:
            gap = max(1, round(SplitConfig().min_scene_len_s * v.info.fps))
            raw["fused"] = combine(raw["hardcut"], raw["transnetv2"], gap, len(v.frames) - 1)
            cpu["fused"] = cpu["hardcut"] + cpu["transnetv2"]
        for seg in v.labels.segments:
            lo, hi = max(0.0, seg.start_s), min(v.duration, seg.end_s)
            dur[seg.set] += hi - lo
            dur["all"] += hi - lo
        for name, cuts in raw.items():
            det_s = [float(t[c]) for c in cuts]
            for which in cut_eval.SETS:
                s = cut_eval.score(v.labels, det_s, which)
                scores[(name, which)].add(s)
                scores[(name, "all")].add(s)
        print(f"  {v.labels.video}: " + "  ".join(f"{k}={len(c)}" for k, c in raw.items()), flush=True)
    names = [n for n in [*dets, "fused"] if scores[(n, "all")].tp + scores[(n, "all")].fp > 0 or n in dets]
    total = dur["all"]
    print(
        f"\n{len(videos)} videos, {total:.1f} s; one decode pass: {decode_cpu / total:.4f} CPU s per video s"
    )
    print(f"{'detector':12s} {'set':8s} {'cuts':>5s} {'P':>6s} {'R':>6s} {'F1':>6s} {'CPU s/vs':>10s}")
    for which in (*cut_eval.SETS, "all"):
        for name in names:
            if name == "fused" and "transnetv2" not in dets:
                continue
            print(_row(name, which, scores[(name, which)], cpu[name], total))
    for name in names:
        s = scores[(name, "all")]
        if s.misses or s.false_alarms:
            miss = ", ".join(f"{v.split('.')[0]}@{t:.2f}" for v, t in s.misses)
            fa = ", ".join(f"{v.split('.')[0]}@{t:.2f}" for v, t in s.false_alarms)
            print(f"  {name}: missed [{miss}] false [{fa}]")
    if "transnetv2" in dets:
        print(f"transnetv2 / one decode pass: {cpu['transnetv2'] / decode_cpu:.1f}x CPU")
        _gpu(videos)
    if args.analysis:
        _analysis(videos)


def _gpu(videos: list[Video]) -> None:
    import torch

    if not torch.cuda.is_available():
        print("no GPU: TransNetV2 GPU timing skipped")
        return
    cfg = SplitConfig(detector="transnetv2", transnet_device="cuda")
    videos[0].run(cfg)  # CUDA start-up and model load out of the timing
    wall = cpu_s = 0.0
    for v in videos:
        w0 = time.perf_counter()
        _, c, _ = v.run(cfg)
        torch.cuda.synchronize()
        wall += time.perf_counter() - w0
        cpu_s += c
    total = sum(v.duration for v in videos)
    print(
        f"transnetv2 on {torch.cuda.get_device_name()}: {wall / total:.4f} wall s, "
        f"{cpu_s / total:.4f} CPU s per video s"
    )


def _analysis(videos: list[Video], repeats: int = 3) -> None:
    """Whole pass, old default split vs new: interleaved runs, fastest of each per video (the
    machine is shared, so the minimum is the least disturbed measurement)."""
    acfg = AnalysisConfig()
    cfgs = {"before": SplitConfig(detector="adaptive", **BEFORE), "now": SplitConfig()}
    best = {k: 0.0 for k in cfgs}
    for v in videos:
        runs: dict[str, list[float]] = {k: [] for k in cfgs}
        for _ in range(repeats):
            for key, cfg in cfgs.items():
                t0 = time.process_time()
                analyze_video(v.path, v.info, cfg, acfg)
                runs[key].append(time.process_time() - t0)
        for key in cfgs:
            best[key] += min(runs[key])
    total = sum(v.duration for v in videos)
    print(
        f"whole analysis pass (decode, shots, every score), CPU s per video s: old default "
        f"{best['before'] / total:.4f}, now {best['now'] / total:.4f}, "
        f"ratio {best['now'] / best['before']:.3f}"
    )


if __name__ == "__main__":
    main()
