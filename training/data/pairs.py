"""Video-DPO preference pairs (prompt, chosen video, rejected video) from the two sources:

    read_pair_jsonl("pairs.jsonl")            # users bring {"prompt", "chosen", "rejected"} per line
    pairs_from_votes("STUDY", "alignment")    # `vjp compare` votes: the raters' majority per pair

Both return (pairs, errors): a bad line or a missing video is one error naming the file, the line
and the reason, and the rest go on. Relative video paths are relative to the JSONL's folder and may
not leave it. The order is the input order (JSONL) or the study's key order (votes), so the pairs
are deterministic. Writing them as pair shards for the trainer is not done yet (see README).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

from pydantic import BaseModel, ConfigDict, ValidationError


class Preference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    chosen: str  # absolute path of the preferred video
    rejected: str
    source: str  # file:line, or STUDY:key with the vote count
    votes: int = 1  # raters behind it (votes); 1 for a user pair


class _Line(BaseModel):
    model_config = ConfigDict(extra="allow")  # extra fields (ids, scores) are kept out of the pair

    prompt: str
    chosen: str
    rejected: str


def _resolve(root: str, path: str) -> str:
    """A video path inside root (a relative one is joined to it); an escape is refused."""
    full = os.path.realpath(os.path.join(root, path))
    if os.path.isabs(path):
        return full
    if os.path.commonpath([full, os.path.realpath(root)]) != os.path.realpath(root):
        raise ValueError(f"{path!r} leaves {root}")
    return full


def read_pair_jsonl(path: str) -> tuple[list[Preference], list[str]]:
    """Pairs from a JSONL of {"prompt", "chosen", "rejected"} (video paths), in file order."""
    root = os.path.dirname(os.path.abspath(path))
    pairs: list[Preference] = []
    errors: list[str] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = _Line.model_validate(json.loads(line))
                chosen, rejected = _resolve(root, row.chosen), _resolve(root, row.rejected)
                for side, p in (("chosen", chosen), ("rejected", rejected)):
                    if not os.path.isfile(p):
                        raise ValueError(f"{side} video {p} does not exist")
                if chosen == rejected:
                    raise ValueError("chosen and rejected are the same video")
                if not row.prompt.strip():
                    raise ValueError("empty prompt")
            except (ValueError, ValidationError) as e:  # json errors are ValueErrors too
                errors.append(f"{where}: {str(e).splitlines()[0]}")
                continue
            pairs.append(Preference(prompt=row.prompt, chosen=chosen, rejected=rejected, source=where))
    return pairs, errors


def pairs_from_votes(study: str, question: str = "alignment") -> tuple[list[Preference], list[str]]:
    """One pair per study pair with a strict majority of its raters on `question` (ties are errors:
    no preference), chosen = the majority's video. Reads STUDY/votes.jsonl through the study's own
    reader (first vote per rater and pair)."""
    from training.eval.study import QUESTIONS, read_votes

    if question not in QUESTIONS:
        raise ValueError(f"question {question!r}: one of {QUESTIONS}")
    by_key: dict[str, list[dict[str, str]]] = defaultdict(list)
    prompts: dict[str, str] = {}
    for v in read_votes(study):
        answer = v.get(question)
        if answer:
            by_key[v["key"]].append(answer)
            prompts[v["key"]] = v["prompt"]
    pairs: list[Preference] = []
    errors: list[str] = []
    for key in sorted(by_key):
        counts = Counter((a["chosen"], a["rejected"]) for a in by_key[key])
        (best, n), *rest = counts.most_common()
        if rest and rest[0][1] == n:
            errors.append(f"{study}:{key}: {question} votes tie {n}-{n}: no preference")
            continue
        pairs.append(
            Preference(
                prompt=prompts[key], chosen=best[0], rejected=best[1], source=f"{study}:{key}", votes=n
            )
        )
    return pairs, errors
