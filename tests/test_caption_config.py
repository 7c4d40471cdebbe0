"""Caption config: YAML loading, unknown keys named by path, pixel bounds, hash, JSON schemas."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from captioning.config import CaptionConfig, ConfigError, config_from_dict, load_config
from captioning.manifest import json_schemas
from captioning.prompts import build_messages, hint_lines, render_chatml

REPO = Path(__file__).resolve().parents[1]
YAML = REPO / "jobs" / "configs" / "caption.yaml"


def test_shipped_yaml_loads_and_matches_defaults() -> None:
    cfg = load_config(YAML)
    assert cfg.model.id == "Qwen/Qwen2-VL-7B-Instruct"
    assert cfg.enabled_types() == ["short", "dense"]
    # The pixel budget is explicit and fits Qwen2-VL-7B's 32k context with room for text.
    assert cfg.frames.total_pixels // (28 * 28) <= 24576
    assert cfg.content_hash() == CaptionConfig().content_hash()


def test_unknown_keys_are_errors_with_their_path(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text(yaml.safe_dump({"frames": {"fps": 1.0, "max_pixel": 5}, "vllm": {"gpus": 2}, "nope": 1}))
    with pytest.raises(ConfigError) as ei:
        load_config(bad)
    msg = str(ei.value)
    assert "frames.max_pixel: unknown key" in msg
    assert "vllm.gpus: unknown key" in msg
    assert "nope: unknown key" in msg


def test_pixel_and_frame_bounds_are_checked() -> None:
    with pytest.raises(ConfigError, match="min_pixels"):
        config_from_dict({"frames": {"min_pixels": 200000, "max_pixels": 100000}})
    with pytest.raises(ConfigError, match="min_frames"):
        config_from_dict({"frames": {"min_frames": 10, "max_frames": 4}})


def test_caption_type_must_name_a_known_prompt() -> None:
    with pytest.raises(ConfigError, match="prompt_id"):
        config_from_dict(
            {
                "caption_types": {
                    "x": {"prompt_id": "missing", "max_tokens": 8, "min_chars": 1, "max_chars": 9}
                }
            }
        )


def test_caption_section_and_dotted_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"caption": {"sampling": {"temperature": 0.5}}}))
    cfg = load_config(f, {"retry.max_tries": 5, "model.id": "/models/x"})
    assert cfg.sampling.temperature == 0.5 and cfg.retry.max_tries == 5 and cfg.model.id == "/models/x"


def test_content_hash_ignores_transport_but_not_prompts() -> None:
    base = CaptionConfig()
    moved = base.model_copy(update={"openai": base.openai.model_copy(update={"endpoint": "http://x:1"})})
    assert moved.content_hash() == base.content_hash()
    edited = base.model_copy(deep=True)
    edited.prompts["short_ja"].text += "。"
    assert edited.content_hash() != base.content_hash()


def test_json_schemas_validate_a_dumped_config() -> None:
    schemas = json_schemas()
    assert set(schemas) == {"caption_row.v1", "caption_config.v1"}
    jsonschema.validate(CaptionConfig().model_dump(mode="json"), schemas["caption_config.v1"])


def test_hints_from_pixabay_and_finevideo_rows() -> None:
    lines = hint_lines(
        "A red car drives on a coast road.",
        '{"youtube_title": "Drive", "youtube_tags": ["car", "sea"], "content_fine_category": "Travel"}',
        use_caption=True,
        use_meta=True,
        meta_keys=["youtube_title", "youtube_tags", "content_fine_category"],
        max_chars=400,
    )
    assert lines == [
        "英語の説明: A red car drives on a coast road.",
        "タイトル: Drive",
        "タグ: car, sea",
        "カテゴリ: Travel",
    ]
    assert hint_lines("x", "{not json", use_caption=False, use_meta=True, meta_keys=["a"], max_chars=9) == []
    cut = hint_lines("y" * 50, None, use_caption=True, use_meta=False, meta_keys=[], max_chars=20)
    assert sum(len(line) for line in cut) == 20


def test_prompt_prefix_is_shared_and_chatml_matches_template() -> None:
    cfg = CaptionConfig()
    a = render_chatml(build_messages(cfg.system_prompt, cfg.prompts["dense_ja"], ["タイトル: A"]))
    b = render_chatml(build_messages(cfg.system_prompt, cfg.prompts["dense_ja"], []))
    video = "<|vision_start|><|video_pad|><|vision_end|>"
    # Everything up to the video is identical across clips of one caption type (prefix caching).
    assert a.split(video)[0] == b.split(video)[0]
    assert a.startswith("<|im_start|>system\n" + cfg.system_prompt + "<|im_end|>\n<|im_start|>user\n")
    assert a.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_main_venv_code_never_imports_vllm_at_import_time() -> None:
    import subprocess
    import sys

    code = (
        "import sys, captioning.backends.vllm_engine, captioning.runner, captioning.ray_runner, jobs.caption;"
        "assert 'vllm' not in sys.modules and 'ray' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_vllm_engine_kwargs_from_config() -> None:
    from captioning.backends.vllm_engine import engine_kwargs

    kw = engine_kwargs(CaptionConfig())
    assert kw["model"] == "Qwen/Qwen2-VL-7B-Instruct" and kw["max_model_len"] == 32768
    assert kw["limit_mm_per_prompt"] == {"image": 0, "video": 1} and kw["enable_prefix_caching"] is True
    assert kw["mm_processor_kwargs"] == {"min_pixels": 128 * 28 * 28, "max_pixels": 360 * 420}
    assert "revision" not in kw  # None values are left to vLLM's defaults
    extra = CaptionConfig.model_validate({"vllm": {"extra_engine_kwargs": {"mm_processor_cache_gb": 4}}})
    assert engine_kwargs(extra)["mm_processor_cache_gb"] == 4
