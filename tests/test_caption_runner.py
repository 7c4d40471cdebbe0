"""Per-batch caption logic with a fake backend: retries, rejections, errors, manifest parts, reruns."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from captioning.backends.base import GenRequest, GenResult, sampling_for_try
from captioning.config import CaptionConfig
from captioning.frames import FrameSample
from captioning.manifest import (
    json_schemas,
    pending_work,
    read_captions,
    read_kept_clips,
    write_part,
)
from captioning.runner import (
    ClipWork,
    RunContext,
    caption_batch,
    error_rows,
    missing_keys,
    prepare_clip,
    run_local,
)
from tests.caption_fixtures import make_clip_manifest

GOOD = {
    "short": "青い背景の上を赤い四角がゆっくりと右へ動き、カメラは固定されている。",
    "dense": (
        "青い背景の上を赤い四角形がゆっくりと左から右へ移動している。"
        "四角形は一定の速さで進み、形や大きさは変わらない。"
        "カメラは固定されたままで、シンプルなCGアニメーションの映像である。"
    ),
}
BAD = "This is a caption in English, not Japanese at all."


class FakeBackend:
    """Scripted backend: `script[key]` is the list of replies for tries 1, 2, ... (last repeats)."""

    name = "fake"
    model_id = "fake/model"
    model_revision = "abc123"

    def __init__(self, script: dict[str, list[str | Exception]]) -> None:
        self.script = script
        self.calls: list[list[GenRequest]] = []
        self.seen: dict[str, int] = {}

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        self.calls.append(requests)
        out = []
        for r in requests:
            n = self.seen.get(r.key, 0)
            self.seen[r.key] = n + 1
            replies = self.script.get(r.key) or self.script["*"]
            reply = replies[min(n, len(replies) - 1)]
            if isinstance(reply, Exception):
                out.append(GenResult(error=f"fake: {reply}", attempts=3))
            else:
                out.append(GenResult(text=reply, finish_reason="stop", tokens_in=100, tokens_out=len(reply)))
        return out

    def close(self) -> None:
        pass


def frames() -> FrameSample:
    return FrameSample(np.zeros((4, 56, 56, 3), np.uint8), 2.0, 8.0, [0, 5, 10, 15], 0.01)


def clip(cid: str, types: list[str] | None = None) -> dict:
    return {
        "clip_id": cid,
        "video_id": cid.split("_")[0],
        "clip_path": f"clips/{cid}.mp4",
        "source_caption": "A red square.",
        "source_meta": "{}",
        "caption_types": types or ["short", "dense"],
    }


def ctx() -> RunContext:
    return RunContext("fake", "fake/model", "abc123", "run1", "hash0123456789ab", "0.1.0")


def by_key(rows):
    return {(r.clip_id, r.caption_type): r for r in rows}


def test_sampling_schedule_changes_each_try() -> None:
    cfg = CaptionConfig()
    s = [sampling_for_try(cfg.sampling, cfg.retry.schedule, 64, i) for i in range(4)]
    assert [x.temperature for x in s] == [0.2, 0.7, 1.0, 1.0]
    assert [x.seed for x in s] == [0, 1, 2, 3]
    assert s[2].top_p == 0.95 and s[1].top_p == 0.9 and all(x.max_tokens == 64 for x in s)


def test_bad_then_good_caption_is_retried_and_kept(tmp_path: Path) -> None:
    cfg = CaptionConfig()
    fake = FakeBackend({"c1_0_1/short": [BAD, GOOD["short"]], "c1_0_1/dense": [GOOD["dense"]], "*": [BAD]})
    rows = by_key(caption_batch([ClipWork(clip("c1_0_1"), frames())], fake, cfg, ctx(), tmp_path))
    short, dense = rows[("c1_0_1", "short")], rows[("c1_0_1", "dense")]
    assert short.status == "ok" and short.tries == 2 and short.caption == GOOD["short"]
    assert json.loads(short.sampling_params)["temperature"] == 0.7  # the retry used the schedule
    assert dense.status == "ok" and dense.tries == 1
    # The second call only re-asked the failing caption: batching survives retries.
    assert [len(c) for c in fake.calls] == [2, 1]
    assert short.tokens_in == 200 and short.prompt_id == "short_ja" and short.prompt_version == 1


def test_always_bad_caption_is_rejected_after_max_tries(tmp_path: Path) -> None:
    cfg = CaptionConfig()
    fake = FakeBackend({"*": [BAD]})
    rows = caption_batch([ClipWork(clip("c2_0_1", ["short"]), frames())], fake, cfg, ctx(), tmp_path)
    (row,) = rows
    assert row.status == "rejected" and row.tries == cfg.retry.max_tries
    assert row.reason and "japanese_ratio<" in row.reason and "latin_ratio>" in row.reason
    assert row.caption == BAD  # kept for inspection, never passed as good
    assert row.latin_ratio and row.latin_ratio > 0.9 and row.has_kana is False


def test_boilerplate_opener_is_stripped_before_qa(tmp_path: Path) -> None:
    cfg = CaptionConfig()
    fake = FakeBackend({"*": ["この動画は、" + GOOD["short"]]})
    (row,) = caption_batch([ClipWork(clip("c3_0_1", ["short"]), frames())], fake, cfg, ctx(), tmp_path)
    assert row.status == "ok" and row.caption == GOOD["short"] and row.raw_caption.startswith("この動画は")


def test_backend_error_and_unreadable_frames_become_error_rows(tmp_path: Path) -> None:
    cfg = CaptionConfig()
    fake = FakeBackend({"ok_0_1/short": [GOOD["short"]], "*": [TimeoutError("server timed out")]})
    works = [
        ClipWork(clip("ok_0_1", ["short"]), frames()),
        ClipWork(clip("to_0_1", ["short"]), frames()),
        ClipWork(clip("bad_0_1", ["short", "dense"]), error="frames: moov atom not found"),
    ]
    rows = by_key(caption_batch(works, fake, cfg, ctx(), tmp_path))
    assert rows[("ok_0_1", "short")].status == "ok"
    to = rows[("to_0_1", "short")]
    assert to.status == "error" and "timed out" in to.reason and to.tries == 1 and to.backend_attempts == 3
    for t in ("short", "dense"):
        bad = rows[("bad_0_1", t)]
        assert bad.status == "error" and bad.reason.startswith("frames:") and bad.tries == 0
    # The unreadable clip never reached the backend.
    assert all(not r.key.startswith("bad_") for call in fake.calls for r in call)


def test_rows_validate_against_the_json_schema(tmp_path: Path) -> None:
    cfg = CaptionConfig()
    fake = FakeBackend({"*": [BAD]})
    rows = caption_batch(
        [ClipWork(clip("s_0_1"), frames()), ClipWork(clip("e_0_1"), error="frames: x")],
        fake,
        cfg,
        ctx(),
        tmp_path,
    )
    schema = json_schemas()["caption_row.v1"]
    for r in rows:
        jsonschema.validate(r.model_dump(mode="json"), schema)


def test_backend_returning_wrong_count_is_a_bug(tmp_path: Path) -> None:
    class Short(FakeBackend):
        def generate(self, requests):
            return super().generate(requests)[:-1]

    with pytest.raises(RuntimeError, match="results for"):
        caption_batch(
            [ClipWork(clip("w_0_1"), frames())], Short({"*": [BAD]}), CaptionConfig(), ctx(), tmp_path
        )


def test_parts_are_atomic_and_reruns_do_only_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    ids = ["a_0_1", "b_0_1", "c_0_1", "d_0_1"]
    make_clip_manifest(out, [{"clip_id": c} for c in ids] + [{"clip_id": "r_0_1", "status": "rejected"}])
    clips = read_kept_clips(out / "manifests" / "clips")
    assert [c["clip_id"] for c in clips] == ids  # rejected clips are not captioned

    # Frames are faked: this test is about bookkeeping, not decoding.
    monkeypatch.setattr("captioning.runner.sample_frames", lambda path, cfg: frames())
    cfg = CaptionConfig()
    cap_dir = out / "manifests" / "captions"
    script = {
        "a_0_1/short": [GOOD["short"]],
        "a_0_1/dense": [GOOD["dense"]],
        "b_0_1/short": [GOOD["short"]],
        "b_0_1/dense": [BAD],
        "c_0_1/short": [RuntimeError("HTTP 500")],
        "*": [GOOD["dense"]],
    }
    todo = pending_work(clips, read_captions(cap_dir), cfg.enabled_types(), retry_rejected=False)
    assert len(todo) == 4
    stats = run_local(todo, FakeBackend(script), cfg, ctx(), out, cap_dir, batch_size=2, progress=False)
    assert len(stats.parts) == 2 and stats.status == {"ok": 6, "rejected": 1, "error": 1}
    assert not list(cap_dir.glob(".*.tmp-*"))

    # Rerun: only c/short (error) is pending; b/dense (rejected) only with retry_rejected.
    latest = read_captions(cap_dir)
    todo = pending_work(clips, latest, cfg.enabled_types(), retry_rejected=False)
    assert [(w["clip_id"], w["caption_types"]) for w in todo] == [("c_0_1", ["short"])]
    todo_r = pending_work(clips, latest, cfg.enabled_types(), retry_rejected=True)
    assert [(w["clip_id"], w["caption_types"]) for w in todo_r] == [
        ("b_0_1", ["dense"]),
        ("c_0_1", ["short"]),
    ]

    ctx2 = RunContext("fake", "fake/model", "abc123", "run2", "hash0123456789ab", "0.1.0")
    run_local(
        todo_r,
        FakeBackend({"*": [GOOD["short"]], "b_0_1/dense": [GOOD["dense"]]}),
        cfg,
        ctx2,
        out,
        cap_dir,
        batch_size=8,
        progress=False,
    )
    latest = read_captions(cap_dir)
    assert latest.num_rows == 8 and set(latest.column("status").to_pylist()) == {"ok"}
    assert read_captions(cap_dir, latest=False).num_rows == 8 + 2  # old rows stay, newest wins
    assert pending_work(clips, latest, cfg.enabled_types(), retry_rejected=True) == []


def test_write_part_skips_empty_batches(tmp_path: Path) -> None:
    assert write_part([], tmp_path / "captions", "run", "k") is None
    assert not (tmp_path / "captions").exists()


def test_a_crashing_batch_becomes_error_rows_and_the_run_goes_on(tmp_path: Path, monkeypatch) -> None:
    class Crashy(FakeBackend):
        def generate(self, requests):
            if any(r.key.startswith("boom") for r in requests):
                raise MemoryError("engine died")
            return super().generate(requests)

    monkeypatch.setattr("captioning.runner.sample_frames", lambda path, cfg: frames())
    cfg = CaptionConfig()
    work = [clip("boom_0_1", ["short"]), clip("fine_0_1", ["short"])]
    stats = run_local(
        work,
        Crashy({"*": [GOOD["short"]]}),
        cfg,
        ctx(),
        tmp_path,
        tmp_path / "cap",
        batch_size=1,
        progress=False,
    )
    rows = {r["clip_id"]: r for r in read_captions(tmp_path / "cap").to_pylist()}
    assert rows["boom_0_1"]["status"] == "error" and "MemoryError: engine died" in rows["boom_0_1"]["reason"]
    assert rows["fine_0_1"]["status"] == "ok" and stats.status == {"ok": 1, "error": 1}


def test_clips_lost_by_dead_workers_are_found_and_recorded() -> None:
    cfg = CaptionConfig()
    work = [clip("a_0_1"), clip("b_0_1", ["dense"])]
    lost = missing_keys(work, {("a_0_1", "short")}, cfg)
    assert [(w["clip_id"], w["caption_types"]) for w in lost] == [("a_0_1", ["dense"]), ("b_0_1", ["dense"])]
    rows = error_rows(lost, "worker: batch lost", cfg, ctx())
    assert [(r.clip_id, r.caption_type, r.status, r.tries) for r in rows] == [
        ("a_0_1", "dense", "error", 0),
        ("b_0_1", "dense", "error", 0),
    ]


@pytest.mark.parametrize(
    "bad", ["../outside.mp4", "/etc/passwd", "s3://other-bucket/x.mp4", "clips/../../x.mp4"]
)
def test_clip_paths_that_leave_out_become_error_rows_unopened(tmp_path: Path, bad: str) -> None:
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"not opened")
    c = {**clip("u_0_1", ["short"]), "clip_path": bad}
    work = prepare_clip(c, tmp_path / "out", CaptionConfig())
    assert work.frames is None and work.error is not None
    assert work.error.startswith("frames: unsafe_path:") and repr(bad) in work.error and "u_0_1" in work.error
    rows = caption_batch([work], FakeBackend({}), CaptionConfig(), ctx(), tmp_path)
    assert [(r.status, r.reason.split(":")[1].strip()) for r in rows] == [("error", "unsafe_path")]
