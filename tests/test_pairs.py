"""Video-DPO preference pairs from a user JSONL and from `vjp compare` votes (training/data/pairs.py)."""

from __future__ import annotations

import json
from pathlib import Path

from training.data.pairs import pairs_from_votes, read_pair_jsonl


def _videos(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"not decoded here " + n.encode())


def test_user_jsonl_pairs_in_order_with_errors_named(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _videos(root / "v", ["a.mp4", "b.mp4", "c.mp4"])
    (tmp_path / "outside.mp4").write_bytes(b"x")
    lines = [
        {"prompt": "海辺の波", "chosen": "v/a.mp4", "rejected": "v/b.mp4", "id": 7},
        {"prompt": "森", "chosen": "v/c.mp4", "rejected": str(root / "v" / "a.mp4")},
        {"prompt": "夜", "chosen": "v/a.mp4", "rejected": "v/missing.mp4"},
        {"prompt": "夜", "chosen": "v/a.mp4", "rejected": "v/a.mp4"},
        {"prompt": "夜", "chosen": "v/a.mp4"},
        {"prompt": "夜", "chosen": "../outside.mp4", "rejected": "v/a.mp4"},
    ]
    f = root / "p.jsonl"
    f.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n{torn", encoding="utf-8")
    pairs, errors = read_pair_jsonl(str(f))
    assert [(p.prompt, Path(p.chosen).name, Path(p.rejected).name) for p in pairs] == [
        ("海辺の波", "a.mp4", "b.mp4"),
        ("森", "c.mp4", "a.mp4"),
    ]
    assert pairs[0].source == f"{f}:1"
    assert len(errors) == 5
    assert errors[0].startswith(f"{f}:3: rejected video") and "does not exist" in errors[0]
    assert "same video" in errors[1] and f"{f}:5" in errors[2] and "leaves" in errors[3]
    assert errors[4].startswith(f"{f}:8:")


def test_compare_votes_give_majority_pairs(tmp_path: Path) -> None:
    from training.eval.study import VoteLog, open_study

    a, b = tmp_path / "A", tmp_path / "B"
    keys = ["k0", "k1", "k2"]
    _videos(a, [f"{k}.mp4" for k in keys])
    _videos(b, [f"{k}.mp4" for k in keys])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"key": k, "prompt": f"波 {k}"}, ensure_ascii=False) + "\n"
                               for k in keys), encoding="utf-8")  # fmt: skip
    study_dir = tmp_path / "STUDY"
    study = open_study(str(study_dir), str(a), str(b), str(prompts))
    log = VoteLog(str(study_dir), study)
    by_key = {p["key"]: p for p in study["pairs"]}

    def vote(rater: str, key: str, winner: str) -> None:
        p = by_key[key]
        side = "left" if p["left"] == winner else "right"
        log.add(rater, p["id"], {"alignment": side, "quality": "left"})

    vote("r1", "k0", "a"), vote("r2", "k0", "a"), vote("r3", "k0", "b")  # A wins 2-1
    vote("r1", "k1", "b")  # B, one vote
    vote("r1", "k2", "a"), vote("r2", "k2", "b")  # tie: no preference
    vote("r1", "k0", "b")  # a second vote of r1 on k0 is ignored
    pairs, errors = pairs_from_votes(str(study_dir), "alignment")
    got = [(Path(p.chosen).parent.name, Path(p.rejected).parent.name, p.prompt, p.votes) for p in pairs]
    assert got == [("A", "B", "波 k0", 2), ("B", "A", "波 k1", 1)]
    assert len(errors) == 1 and "k2" in errors[0] and "tie" in errors[0]
