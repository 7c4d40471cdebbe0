"""Scoring shot detection against hand-labelled hard cuts (tests/data/cuts/*.json).

A detected cut matches at most one labelled cut within the tolerance. Detections left unmatched
inside a labelled transition (fade, dissolve) count neither way: the labels only judge hard cuts.
Each label file splits its video into segments that belong to the tune or the held-out set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

LABELS_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "cuts"
TOLERANCE_S = 0.15
SETS = ("tune", "heldout")


@dataclass(frozen=True)
class Segment:
    set: str
    start_s: float
    end_s: float

    def __contains__(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True)
class CutLabels:
    video: str
    cuts: tuple[float, ...]
    transitions: tuple[tuple[float, float], ...]
    segments: tuple[Segment, ...]


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    misses: list[tuple[str, float]] = field(default_factory=list)
    false_alarms: list[tuple[str, float]] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def add(self, other: Score) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.misses += other.misses
        self.false_alarms += other.false_alarms


def _num(value: object, path: Path, key: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{path}: {key} must be a number, got {value!r}")
    return float(value)


def load_labels(path: str | Path) -> CutLabels:
    """One label file; a malformed one raises ValueError naming the file and the bad key."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        video = data["video"]
        cuts = tuple(sorted(_num(c["t"], path, "cuts[].t") for c in data["cuts"]))
        transitions = tuple(
            (_num(tr["t"][0], path, "transitions[].t"), _num(tr["t"][1], path, "transitions[].t"))
            for tr in data.get("transitions", [])
        )
        segments = tuple(
            Segment(
                s["set"],
                -1.0 if s.get("start_s") is None else _num(s["start_s"], path, "segments[].start_s"),
                float("inf") if s.get("end_s") is None else _num(s["end_s"], path, "segments[].end_s"),
            )
            for s in data["segments"]
        )
    except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a cut label file ({type(e).__name__}: {e})") from None
    if not isinstance(video, str) or not video:
        raise ValueError(f"{path}: video must be a file name")
    bad = [s.set for s in segments if s.set not in SETS]
    if bad or not segments:
        raise ValueError(f"{path}: segments[].set must be one of {SETS}, got {bad or 'no segments'}")
    return CutLabels(video, cuts, transitions, segments)


def load_all(folder: str | Path = LABELS_DIR) -> list[CutLabels]:
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no cut label files (*.json) in {folder}")
    return [load_labels(p) for p in files]


def score(labels: CutLabels, detected_s: list[float], which: str, tolerance_s: float = TOLERANCE_S) -> Score:
    """P/R counts for the parts of one video that belong to set `which` ('tune' or 'heldout')."""
    segs = [s for s in labels.segments if s.set == which]
    truth = [t for t in labels.cuts if any(t in s for s in segs)]
    dets = sorted(t for t in detected_s if any(t in s for s in segs))
    out = Score()
    used = [False] * len(dets)
    for t in truth:
        # The earliest unused detection in reach: on a line with equal windows this greedy
        # finds the largest matching (cuts 5 frames apart share candidates).
        hit = next((i for i, d in enumerate(dets) if not used[i] and abs(d - t) <= tolerance_s + 1e-9), -1)
        if hit >= 0:
            used[hit] = True
            out.tp += 1
        else:
            out.fn += 1
            out.misses.append((labels.video, t))
    for i, d in enumerate(dets):
        if used[i] or any(a <= d <= b for a, b in labels.transitions):
            continue
        out.fp += 1
        out.false_alarms.append((labels.video, d))
    return out
