"""Transformers backend end to end on CPU: tiny random Qwen2-VL loaded through from_pretrained,
clip file -> qwen-vl-utils frames -> prompt -> generate -> QA -> manifest row (JSON Schema)."""

from __future__ import annotations

import os
from pathlib import Path

import jsonschema
import pytest

from captioning.config import CaptionConfig, FramesConfig
from captioning.frames import FrameError, sample_frames
from captioning.manifest import json_schemas, read_captions
from captioning.prompts import build_messages, render_chatml
from curation.configfile import package_version
from jobs import caption as caption_job
from tests.caption_fixtures import make_clip, make_dataset, tiny_cli_args, tiny_frames_config, tiny_model_dir


def rows_of(out: Path, latest: bool = True) -> list[dict]:
    return read_captions(out / "manifests" / "captions", latest=latest).to_pylist()


def test_frames_through_qwen_vl_utils_with_explicit_budget(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "c.mp4", size=112, frames=16, fps=8)
    fs = sample_frames(clip, FramesConfig(**tiny_frames_config()))
    assert fs.frames.shape == (4, 112, 112, 3) and fs.frames.dtype.name == "uint8"
    assert fs.frame_indices == [0, 5, 10, 15] and fs.sample_fps == pytest.approx(2.0)
    assert fs.frames.std() > 5  # real pixels, not a blank tensor
    # The per-frame cap is honoured: 56x56 frames when max_pixels says so.
    small = FramesConfig(**{**tiny_frames_config(), "max_pixels": 56 * 56})
    assert sample_frames(clip, small).frames.shape[1:3] == (56, 56)


def test_unreadable_clip_raises_frame_error_with_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"x" * 100)
    with pytest.raises(FrameError, match="decord"):
        sample_frames(bad, FramesConfig(**tiny_frames_config()))
    with pytest.raises(FrameError, match="not found"):
        sample_frames(tmp_path / "missing.mp4", FramesConfig(**tiny_frames_config()))


def test_tiny_model_has_qwen2_vl_tokens_and_template() -> None:
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_model_dir())
    cfg = CaptionConfig()
    msgs = build_messages(cfg.system_prompt, cfg.prompts["short_ja"], ["タイトル: x"])
    # Our tokenizer-free renderer (used when a model ships no template) matches Qwen2-VL's template.
    assert proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == render_chatml(msgs)
    tok = proc.tokenizer
    for t in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|video_pad|>", "<|vision_end|>"):
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id


def test_cli_end_to_end_rejects_garbage_and_reruns_only_errors(tmp_path: Path) -> None:
    out = make_dataset(tmp_path / "out", n_kept=2, corrupt=True, rejected=True)
    model = tiny_model_dir()
    argv = ["--clips", str(out / "manifests"), "--backend", "transformers", *tiny_cli_args(model)]
    assert caption_job.main(argv) == 1  # the corrupt clip leaves error rows

    rows = rows_of(out)
    assert len(rows) == 3 * 2  # 3 kept clips x (short, dense); the rejected clip is not captioned
    schema = json_schemas()["caption_row.v1"]
    for r in rows:
        r["created_at"] = r["created_at"].isoformat()
        jsonschema.validate(r, schema)
        assert r["backend"] == "transformers" and r["model_id"] == str(model)
        assert r["package_version"] == package_version() and len(r["config_hash"]) == 16
    good = [r for r in rows if not r["clip_id"].startswith("pixbad")]
    bad = [r for r in rows if r["clip_id"].startswith("pixbad")]
    for r in good:
        # Random weights write garbage: QA must reject it after every try, never pass it as good.
        assert r["status"] == "rejected" and r["reason"] and r["tries"] == 3
        assert r["num_frames"] == 4 and (r["frame_height"], r["frame_width"]) == (112, 112)
        assert r["tokens_in"] > 3 * 32 and r["tokens_out"] > 0  # 32 video tokens per try, at least
        assert r["prompt_id"] in ("short_ja", "dense_ja") and r["prompt_version"] == 1
    for r in bad:
        assert r["status"] == "error" and r["reason"].startswith("frames:") and r["tries"] == 0

    parts_before = set((out / "manifests" / "captions").glob("*.parquet"))
    assert caption_job.main(argv) == 1  # rerun: only the errored clip is tried again
    new = rows_of(out, latest=False)
    assert len(new) == 6 + 2
    assert len(set((out / "manifests" / "captions").glob("*.parquet")) - parts_before) == 1

    assert caption_job.main([*argv, "--retry-rejected", "--limit", "1"]) == 0  # one rejected clip again
    assert len(rows_of(out, latest=False)) == 6 + 2 + 2

    # A changed prompt changes the config hash: --redo-stale recaptions, a plain rerun does not.
    changed = [*argv, "--set", "prompts.short_ja.version=2", "--set", "caption_types.dense.enabled=false"]
    assert caption_job.main([*changed, "--limit", "1"]) == 1  # only the errored clip
    assert caption_job.main([*changed, "--redo-stale", "--limit", "1"]) == 0
    fresh = [r for r in rows_of(out) if r["caption_type"] == "short" and r["prompt_version"] == 2]
    assert len(fresh) == 2  # the errored clip (above) and the first stale clip


def test_bad_config_and_paths_exit_2(tmp_path: Path, capsys) -> None:
    out = make_dataset(tmp_path / "out", n_kept=1, rejected=False)
    base = ["--clips", str(out / "manifests"), "--backend", "transformers"]
    assert caption_job.main([*base, "--set", "frames.max_pixel=5"]) == 2
    assert "frames.max_pixel: unknown key" in capsys.readouterr().err
    assert caption_job.main(["--clips", str(tmp_path / "nowhere"), "--backend", "transformers"]) == 2


def test_qwen2_5_vl_through_the_same_code(tmp_path: Path) -> None:
    from captioning.backends.base import model_family

    out = make_dataset(tmp_path / "out", n_kept=1, rejected=False)
    model = tiny_model_dir("qwen2_5_vl")
    assert model_family(CaptionConfig.model_validate({"model": {"id": str(model)}})) == "qwen2_5_vl"
    argv = ["--clips", str(out / "manifests"), "--backend", "transformers", *tiny_cli_args(model)]
    assert caption_job.main([*argv, "--set", "caption_types.dense.enabled=false"]) == 0
    (row,) = rows_of(out)
    assert row["caption_type"] == "short" and row["status"] == "rejected" and row["tokens_out"] > 0


@pytest.mark.gpu
def test_transformers_backend_on_cuda(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = make_dataset(tmp_path / "out", n_kept=1, rejected=False)
    argv = ["--clips", str(out / "manifests"), "--backend", "transformers", *tiny_cli_args(tiny_model_dir())]
    assert caption_job.main([*argv, "--set", "transformers.device=cuda"]) == 0
    assert {r["status"] for r in rows_of(out)} == {"rejected"}


def test_model_ids_stay_hub_ids_by_default() -> None:
    # The real loading code takes hub ids; tests only swap in a local directory.
    assert CaptionConfig().model.id == "Qwen/Qwen2-VL-7B-Instruct"
    assert os.environ.get("HF_HUB_OFFLINE", "") in ("", "0", "1")
