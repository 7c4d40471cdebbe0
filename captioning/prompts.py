"""Japanese prompt templates (id + version, recorded on every caption row) and message building.

Message layout: system prompt, then the fixed instruction text, then the video, then the per-clip
hints. The fixed part comes first so that every request of one caption type shares the longest
possible token prefix, which vLLM's prefix caching reuses across the batch.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SYSTEM_PROMPT = (
    "あなたは映像の内容を正確に日本語で記述するアシスタントです。"
    "見えているものだけを、自然で簡潔な日本語で書きます。"
)

HINT_HEADER = "参考情報（映像と一致する内容だけを使い、一致しない内容は書かないでください）："
META_LABELS = {
    "source_caption": "英語の説明",
    "youtube_title": "タイトル",
    "youtube_tags": "タグ",
    "content_fine_category": "カテゴリ",
    "content_parent_category": "大分類",
}


class PromptTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    version: int = Field(ge=1, description="Bump on any change of text: rows record id + version.")
    text: str = Field(description="Instruction placed before the video.")
    suffix: str = Field("", description="Text placed after the video and hints.")


DEFAULT_TEMPLATES: dict[str, PromptTemplate] = {
    "short_ja": PromptTemplate(
        id="short_ja",
        version=1,
        text=(
            "次の動画を、テキストから動画を生成するモデルの学習データ用キャプションとして、"
            "自然な日本語の一文で説明してください。主な被写体、その動作、場所や背景、カメラの動きを含めてください。"
            "「この動画は」のような前置き、見出し、箇条書きは使わず、説明文だけを出力してください。"
        ),
        suffix="日本語の一文だけを出力してください。",
    ),
    "dense_ja": PromptTemplate(
        id="dense_ja",
        version=1,
        text=(
            "次の動画を、テキストから動画を生成するモデルの学習データ用の詳しいキャプションとして、"
            "自然な日本語の3〜6文で説明してください。次の順に書いてください："
            "主な被写体とその見た目、動作や出来事の流れ、場所・背景・時間帯、"
            "カメラの動き（固定、パン、ティルト、ズーム、追従、空撮など）、"
            "映像のスタイル（実写・アニメ・CG、色調、照明、スローモーションなど）。"
            "見えていることだけを書き、推測や感想、前置き、見出し、箇条書きは書かないでください。"
        ),
        suffix="日本語の文章だけを出力してください。",
    ),
}

VIDEO_PART: dict[str, str] = {"type": "video"}


def _as_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value if v not in (None, ""))
    return str(value).strip()


def hint_lines(
    source_caption: str | None,
    source_meta: str | dict[str, Any] | None,
    *,
    use_caption: bool,
    use_meta: bool,
    meta_keys: list[str],
    max_chars: int,
) -> list[str]:
    """Hint lines from the clip row. Bad JSON in source_meta is ignored, never fatal."""
    lines: list[str] = []
    if use_caption and source_caption and source_caption.strip():
        lines.append(f"{META_LABELS['source_caption']}: {source_caption.strip()}")
    if use_meta and source_meta:
        meta: Any = source_meta
        if isinstance(source_meta, str):
            try:
                meta = json.loads(source_meta)
            except ValueError:
                meta = {}
        if isinstance(meta, dict):
            for key in meta_keys:
                text = _as_text(meta.get(key, "")) if meta.get(key) is not None else ""
                if text:
                    lines.append(f"{META_LABELS.get(key, key)}: {text}")
    out, used = [], 0
    for line in lines:
        if used + len(line) > max_chars:
            line = line[: max(0, max_chars - used)]
        if line:
            out.append(line)
            used += len(line)
        if used >= max_chars:
            break
    return out


def build_messages(system_prompt: str, template: PromptTemplate, hints: list[str]) -> list[dict[str, Any]]:
    """Chat messages with one video placeholder part ({"type": "video"}) that backends fill in."""
    content: list[dict[str, Any]] = [{"type": "text", "text": template.text}, dict(VIDEO_PART)]
    tail = "\n".join([HINT_HEADER, *hints]) if hints else ""
    if template.suffix:
        tail = f"{tail}\n{template.suffix}" if tail else template.suffix
    if tail:
        content.append({"type": "text", "text": tail})
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": content},
    ]


VIDEO_TOKENS = "<|vision_start|><|video_pad|><|vision_end|>"


def render_chatml(messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """Qwen2-VL's chat format without a tokenizer; used when a model ships no chat template.

    Matches the Qwen2-VL template for the messages build_messages makes (tests check this).
    """
    parts: list[str] = []
    if messages and messages[0]["role"] != "system":
        parts.append("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    for msg in messages:
        parts.append(f"<|im_start|>{msg['role']}\n")
        content = msg["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            for part in content:
                if part.get("type") == "video" or "video" in part:
                    parts.append(VIDEO_TOKENS)
                elif "text" in part:
                    parts.append(part["text"])
        parts.append("<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)
