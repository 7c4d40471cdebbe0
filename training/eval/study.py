"""The seed report's human study as data: a blind A/B study of two folders of videos.

    study = open_study(STUDY, a_dir, b_dir, prompts)   # creates STUDY/study.json once, then reuses it
    log = VoteLog(STUDY, study)                        # STUDY/votes.jsonl, one JSON line per vote
    tally(STUDY)                                       # win shares with Wilson intervals, raters, agreement

The seed asked 49 Japanese speakers two questions per pair of videos: which fits the prompt better
(alignment) and which looks better (quality), and reports alignment 423 vs 18 won and quality 69 vs
372 lost against its baseline. Here every pair is one prompt with one video from folder A and one
from folder B, shown left/right by a per-pair coin flip fixed at study creation. STUDY/study.json
holds that mapping (the seal): it is never served, and the page only ever sees pair ids and
"left"/"right". A vote names the pair and the side chosen for each question; the server maps sides
to A/B and appends one line to votes.jsonl:

    {"rater", "pair", "key", "prompt", "left": "a"|"b", "a": PATH_A, "b": PATH_B, "time",
     "alignment": {"winner": "a"|"b", "chosen": PATH, "rejected": PATH}, "quality": {...}}

so each question's vote is directly a (prompt, chosen, rejected) preference pair, the record a
Video-DPO step reads. A rater votes on a pair once: a second submit of the same (rater, pair)
returns the first vote and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from curation.atomic import atomic_output
from training.eval.stats import wilson
from training.eval.videos import VIDEO_EXTENSIONS, inside, read_prompt_rows

STUDY = "study.json"
VOTES = "votes.jsonl"
TALLY = "tally.json"
QUESTIONS = ("alignment", "quality")
SIDES = ("left", "right")
RATER = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class StudyError(ValueError):
    """Bad input to the study: names what and why (the server answers it as a 4xx)."""


@dataclass(frozen=True)
class Pair:
    id: str
    key: str
    prompt: str
    left: str  # "a" or "b": which folder's video is shown on the left
    a: str  # absolute paths, checked to lie inside their folder
    b: str


def _find(folder: str, key: str) -> str | None:
    for ext in VIDEO_EXTENSIONS:
        path = inside(folder, key + ext)
        if path is not None and os.path.isfile(path):
            return path
    return None


def _read_prompts(path: str) -> list[tuple[str, str]]:
    """(key, prompt) rows of a prompts JSONL; a study refuses a file with an unreadable row."""
    if not os.path.isfile(path):
        raise StudyError(f"prompts file not found: {path}")
    rows = []
    for row in read_prompt_rows(path):
        if isinstance(row, str):
            raise StudyError(f"{row} (expected a JSON object with key and prompt)")
        rows.append((row.key, row.prompt))
    return rows


def open_study(
    out: str,
    a_dir: str | None = None,
    b_dir: str | None = None,
    prompts: str | None = None,
    labels: tuple[str, str] = ("A", "B"),
) -> dict[str, Any]:
    """STUDY/study.json: created from the two folders and the prompts on the first call, read back
    (and checked against the folders given) on every later one, so raters resume the same study."""
    path = os.path.join(out, STUDY)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            study = json.load(f)
        for side, folder in (("a", a_dir), ("b", b_dir)):
            if folder and os.path.realpath(folder) != study[side]["dir"]:
                raise StudyError(f"{path} was made for {side.upper()} = {study[side]['dir']}, not {folder}")
        return study
    if not (a_dir and b_dir and prompts):
        raise StudyError(f"{path} does not exist: give --a, --b and --prompts to create it")
    for folder in (a_dir, b_dir):
        if not os.path.isdir(folder):
            raise StudyError(f"video folder not found: {folder}")
    seed = secrets.randbits(64)
    rng = random.Random(seed)
    pairs, skipped = [], []
    for key, prompt in _read_prompts(prompts):
        a, b = _find(a_dir, key), _find(b_dir, key)
        if not prompt or a is None or b is None:
            why = "empty prompt" if not prompt else f"no video in {'A' if a is None else 'B'}"
            skipped.append(f"{key}: {why}")
            continue
        pid = f"p{len(pairs) + 1:04d}"
        pairs.append({"id": pid, "key": key, "prompt": prompt, "left": rng.choice("ab"), "a": a, "b": b})
    if not pairs:
        raise StudyError(f"no key of {prompts} has a video in both {a_dir} and {b_dir}")
    study = {
        "version": 1,
        "a": {"dir": os.path.realpath(a_dir), "label": labels[0]},
        "b": {"dir": os.path.realpath(b_dir), "label": labels[1]},
        "prompts": os.path.abspath(prompts),
        "seed": seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pairs": pairs,
        "skipped": skipped,
    }
    os.makedirs(out, exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(study, f, ensure_ascii=False, indent=1)
    os.chmod(path, 0o600)  # the seal: readable by the study's owner only
    return study


def pairs_of(study: dict[str, Any]) -> dict[str, Pair]:
    return {p["id"]: Pair(p["id"], p["key"], p["prompt"], p["left"], p["a"], p["b"]) for p in study["pairs"]}


def rater_order(study: dict[str, Any], rater: str) -> list[str]:
    """Pair ids in this rater's order: shuffled per rater (no order effect shared by everyone), the
    same on every visit, so a rater resumes where they left off."""
    ids = [p["id"] for p in study["pairs"]]
    digest = hashlib.sha256(f"{study['seed']}:{rater}".encode()).digest()
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(ids)
    return ids


def check_rater(rater: str) -> str:
    if not isinstance(rater, str) or not RATER.match(rater):
        raise StudyError("rater id: 1-64 letters, digits or _.@-")
    return rater


class VoteLog:
    """STUDY/votes.jsonl: append-only, one JSON line per vote, written whole under a lock and
    fsynced, so concurrent raters never interleave lines; (rater, pair) is unique."""

    def __init__(self, out: str, study: dict[str, Any]) -> None:
        self.path = os.path.join(out, VOTES)
        self.study = study
        self.pairs = pairs_of(study)
        self.lock = threading.Lock()
        self.votes: dict[tuple[str, str], dict[str, Any]] = {}
        self.done: dict[str, set[str]] = defaultdict(set)
        for v in read_votes(out):
            self._index(v)

    def _index(self, v: dict[str, Any]) -> None:
        self.votes[(v["rater"], v["pair"])] = v
        self.done[v["rater"]].add(v["pair"])

    def progress(self, rater: str) -> dict[str, int]:
        return {"done": len(self.done[rater]), "total": len(self.pairs)}

    def next_pair(self, rater: str) -> Pair | None:
        with self.lock:
            seen = set(self.done[rater])
        for pid in rater_order(self.study, rater):
            if pid not in seen:
                return self.pairs[pid]
        return None

    def add(self, rater: str, pair_id: str, answers: dict[str, str]) -> tuple[dict[str, Any], bool]:
        """Record a vote ({question: "left"|"right"}); returns (the vote, whether it is new)."""
        check_rater(rater)
        pair = self.pairs.get(pair_id) if isinstance(pair_id, str) else None
        if pair is None:
            raise StudyError(f"unknown pair {pair_id!r}")
        for q in QUESTIONS:
            if answers.get(q) not in SIDES:
                raise StudyError(f"{q}: answer 'left' or 'right', got {answers.get(q)!r}")
        right = "b" if pair.left == "a" else "a"
        vote: dict[str, Any] = {
            "rater": rater,
            "pair": pair.id,
            "key": pair.key,
            "prompt": pair.prompt,
            "left": pair.left,
            "a": pair.a,
            "b": pair.b,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        for q in QUESTIONS:
            winner = pair.left if answers[q] == "left" else right
            loser = "b" if winner == "a" else "a"
            vote[q] = {"winner": winner, "chosen": getattr(pair, winner), "rejected": getattr(pair, loser)}
        line = json.dumps(vote, ensure_ascii=False, sort_keys=True) + "\n"
        with self.lock:
            old = self.votes.get((rater, pair.id))
            if old is not None:
                return old, False
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._index(vote)
        return vote, True


def read_votes(out: str) -> list[dict[str, Any]]:
    """The votes of a study, first vote of each (rater, pair) only; a torn last line is skipped."""
    path = os.path.join(out, VOTES)
    votes, seen = [], set()
    if not os.path.exists(path):
        return votes
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if (v["rater"], v["pair"]) not in seen:
                seen.add((v["rater"], v["pair"]))
                votes.append(v)
    return votes


def _agreement(votes: list[dict[str, Any]], q: str) -> tuple[float | None, int]:
    """Pairwise rater agreement: over pairs rated by 2+ raters, the share of rater pairs that chose
    the same video (0.5 is chance for two options); and how many pairs had 2+ raters."""
    by_pair: dict[str, list[str]] = defaultdict(list)
    for v in votes:
        by_pair[v["pair"]].append(v[q]["winner"])
    agree = total = 0
    multi = 0
    for winners in by_pair.values():
        if len(winners) < 2:
            continue
        multi += 1
        for x, y in combinations(winners, 2):
            agree += x == y
            total += 1
    return (agree / total if total else None), multi


def tally(out: str, level: float = 0.95) -> dict[str, Any]:
    """Win counts and shares per question with Wilson intervals, per-rater counts and agreement;
    written to STUDY/tally.json."""
    study = open_study(out)
    votes = read_votes(out)
    questions = {}
    for q in QUESTIONS:
        wins = Counter(v[q]["winner"] for v in votes)
        iv = wilson(wins["a"], len(votes), level)
        agreement, multi = _agreement(votes, q)
        questions[q] = {
            "a": wins["a"],
            "b": wins["b"],
            "share_a": None
            if iv is None
            else {"value": iv.value, "low": iv.low, "high": iv.high, "level": level},
            "agreement": agreement,
            "pairs_with_2_or_more_raters": multi,
        }
    result = {
        "labels": {"a": study["a"]["label"], "b": study["b"]["label"]},
        "dirs": {"a": study["a"]["dir"], "b": study["b"]["dir"]},
        "pairs": len(study["pairs"]),
        "votes": len(votes),
        "raters": len({v["rater"] for v in votes}),
        "per_rater": dict(sorted(Counter(v["rater"] for v in votes).items())),
        "questions": questions,
    }
    with atomic_output(os.path.join(out, TALLY)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=2, sort_keys=True)
    return result
