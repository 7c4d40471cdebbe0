"""Tiny Qwen2-VL models built locally (no hub access): for the tests and for the demo pipeline.

`build_tiny_model` saves a random-weight Qwen2-VL / Qwen2.5-VL (real config classes, tiny sizes,
a small byte-level BPE tokenizer with the Qwen2-VL special tokens and chat template) that loads
back through from_pretrained like a real checkpoint. Random weights write garbage, which QA
rejects: right for tests of QA, useless for a demo whose shards need captions.

`build_demo_captioner` therefore trains that tiny model for a few dozen steps on generated
textured videos to write Japanese captions of such videos: the demo's captions are then real
model output, through the real prompts, frames and backend, that passes QA, at no download. In
that many steps it learns the language, not to tell videos apart: its captions are much alike.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

CORPUS = [
    "海辺の道を赤い車がゆっくり走り、カメラは横から追いかけている。",
    "都市部の空撮写真です。高層ビルの間を川が流れ、夕日が水面に反射している。",
    "女性が台所で野菜を切り、鍋に入れてかき混ぜる。固定カメラで撮影された実写映像。",
    "A red square moves across a blue background while the camera stays still.",
    "子どもたちが公園で遊んでいる。ズームインして笑顔を映す。アニメ風の色調。",
    "森の中を流れる小川、木漏れ日、スローモーション、ドローンによる空撮。",
    "The quick brown fox jumps over the lazy dog. 0123456789",
]


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = 600) -> Any:
    """A byte-level BPE Qwen2Tokenizer with Qwen2-VL's special tokens and chat template."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import Qwen2Tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        (corpus or CORPUS) * 4, vocab_size=vocab_size, min_frequency=1, show_progress=False
    )
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Ids 0.. are the BPE vocab; the special tokens follow, as in Qwen2-VL (151643 onwards).
    tok = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tok.add_tokens(SPECIAL_TOKENS, special_tokens=True)
    tok.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tok


def _token_ids(tok: Any) -> dict[str, int]:
    return {t: int(tok.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}


def _build(family: str, tok: Any) -> tuple[Any, Any]:
    """(model, processor) with random weights; text tower head_dim 64 (hidden 256, 4 heads)
    because vLLM's CPU attention kernels reject head_dim 16."""
    from transformers import GenerationConfig

    ids = _token_ids(tok)
    vocab = ((len(tok) + 63) // 64) * 64
    text = {
        "vocab_size": vocab,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    if family == "qwen2_vl":
        from transformers import (
            Qwen2VLConfig,
            Qwen2VLForConditionalGeneration,
            Qwen2VLImageProcessor,
            Qwen2VLProcessor,
            Qwen2VLVideoProcessor,
        )

        vision = {"depth": 2, "embed_dim": 128, "hidden_size": 256, "num_heads": 2, "mlp_ratio": 2}
        model = Qwen2VLForConditionalGeneration(
            Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        )
        processor = Qwen2VLProcessor(
            image_processor=Qwen2VLImageProcessor(),
            video_processor=Qwen2VLVideoProcessor(),
            tokenizer=tok,
            chat_template=QWEN2_VL_CHAT_TEMPLATE,
        )
    elif family == "qwen2_5_vl":
        from transformers import (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLProcessor,
            Qwen2VLImageProcessor,
            Qwen2VLVideoProcessor,
        )

        vision = {
            "depth": 2,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_heads": 2,
            "out_hidden_size": 256,
            "fullatt_block_indexes": [1],
            "window_size": 112,
        }
        model = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        )
        processor = Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(),
            video_processor=Qwen2VLVideoProcessor(),
            tokenizer=tok,
            chat_template=QWEN2_VL_CHAT_TEMPLATE,
        )
    else:
        raise ValueError(f"unknown tiny model family {family!r} (qwen2_vl | qwen2_5_vl)")
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"]
    )
    return model, processor


def _save(model: Any, processor: Any, tok: Any, out: Path) -> Path:
    """Save into a temporary sibling, then rename: a killed build never leaves half a model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        if any(out.iterdir()) and not (out / "config.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{out} exists and holds something other than a model")
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def build_tiny_model(out_dir: str | Path, family: str = "qwen2_vl", seed: int = 0) -> Path:
    """Save a tiny random model + processor to out_dir (about 2-3 MB) and return the path."""
    import torch

    torch.manual_seed(seed)
    tok = build_tokenizer()
    model, processor = _build(family, tok)
    return _save(model, processor, tok, Path(out_dir))


# ---- the demo captioner ------------------------------------------------------------------------
# What the generated sample videos show (textured backgrounds panning diagonally). A few variants
# per caption type, drawn at random in training: the model learns a distribution, so its
# captions are sampled text, not a lookup. It does not learn to tell videos apart in a few steps.
CAPTION_VARIANTS = {
    "short": (
        "色とりどりの模様が、ゆっくりと斜めに流れていく。",
        "丸や四角の模様が散らばった背景が、斜めにゆっくり動いていく。",
        "細かな模様の背景を、カメラがゆっくりと斜めにパンしていく。",
    ),
    "dense": (
        "色とりどりの丸や四角の模様が散らばった背景が映っている。模様は一定の速さで斜めに流れていく。"
        "人物は登場せず、シンプルなCGの映像である。",
        "細かな模様と大小の図形が画面いっぱいに広がっている。カメラはゆっくりと斜めにパンしている。"
        "人や動物は映っておらず、明るい色調のCG映像である。",
        "大小の丸や四角が散らばった模様の背景が、画面の中をゆっくりと斜めに動いていく。"
        "カメラの動きはなめらかで、人物は登場しない。色鮮やかなCGの映像である。",
    ),
}


def _training_video(rng: np.random.Generator, n_frames: int, h: int, w: int) -> np.ndarray:
    """Textured frames of a random tint panning diagonally, like the generated sample corpus."""
    from curation.synth import texture

    pad = 24
    base = texture(h + pad, w + pad, int(rng.integers(0, 2**31)))
    tint = rng.random(3) * 0.9 + 0.1
    if rng.random() < 0.15:
        tint = np.full(3, rng.random() * 0.6 + 0.4)  # some grey ones
    img = np.clip(base.astype(np.float32) * (tint / tint.max()), 0, 255).astype(np.uint8)
    step = int(rng.integers(1, 4))
    return np.stack([img[i * step : i * step + h, i * step : i * step + w] for i in range(n_frames)])


def build_demo_captioner(
    out_dir: str | Path,
    frame_hw: tuple[int, int] = (84, 140),
    n_frames: int = 4,
    steps: int = 40,
    batch: int = 4,
    seed: int = 0,
    cfg: Any = None,
    on_step: Any = None,
) -> Path:
    """Train the tiny Qwen2-VL on generated videos and save it to out_dir (about 15 s of one core).

    frame_hw must be what the caption step's frame sampling yields (multiples of 28) so training
    and captioning see the same number of video tokens. Deterministic for a seed on one machine.
    """
    import torch

    from captioning.config import CaptionConfig
    from captioning.prompts import build_messages

    cfg = cfg or CaptionConfig()  # its system prompt, prompts and caption types are trained on
    system_prompt, templates = cfg.system_prompt, cfg.prompts
    type_prompt = {ctype: templates[ct.prompt_id] for ctype, ct in cfg.caption_types.items()}
    corpus = [
        system_prompt,
        *(p.text for p in templates.values()),
        *(p.suffix or "" for p in templates.values()),
    ]
    corpus += [v for variants in CAPTION_VARIANTS.values() for v in variants]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same weights on every run of one machine
    try:
        torch.manual_seed(seed)
        tok = build_tokenizer(corpus + CORPUS, vocab_size=1200)
        model, processor = _build("qwen2_vl", tok)
        rng = np.random.default_rng(seed)
        h, w = frame_hw
        prompts_text = {
            ctype: processor.apply_chat_template(
                build_messages(system_prompt, tpl, []), tokenize=False, add_generation_prompt=True
            )
            for ctype, tpl in type_prompt.items()
        }
        eos = "<|im_end|>"
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
        model.train()
        ctypes = sorted(prompts_text)
        vk: dict[str, Any] = {
            "do_sample_frames": False,
            "size": {"shortest_edge": 28 * 28, "longest_edge": h * w},
        }
        if hasattr(processor.video_processor, "cap_pixels_per_frame"):
            vk["cap_pixels_per_frame"] = False  # the frames are already sized, as the backend says too
        blank = torch.zeros(n_frames, 3, h, w, dtype=torch.uint8)
        n_prompt = {
            ctype: len(processor(text=[text], videos=[blank], videos_kwargs=vk)["input_ids"][0])
            for ctype, text in prompts_text.items()
        }
        # qwen-vl-utils resizes frames to multiples of 28 within the pixel budget; the processor
        # must take them as they are, as the transformers backend does.
        for step in range(steps):
            # One caption type per step: equal prompts, so the batch only pads the answers.
            ctype = ctypes[step % len(ctypes)]
            videos = [_training_video(rng, n_frames, h, w) for _ in range(batch)]
            variants = CAPTION_VARIANTS.get(ctype, CAPTION_VARIANTS["dense"])
            texts = [prompts_text[ctype] + variants[int(rng.integers(len(variants)))] + eos for _ in videos]
            tensors = [torch.from_numpy(v).permute(0, 3, 1, 2) for v in videos]
            processor.tokenizer.padding_side = "right"
            inputs = processor(
                text=texts, videos=tensors, return_tensors="pt", padding=True, videos_kwargs=vk
            )
            labels = inputs["input_ids"].clone()
            labels[:, : n_prompt[ctype]] = -100
            labels[inputs["attention_mask"] == 0] = -100
            loss = model(**inputs, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if on_step is not None:
                on_step(step, float(loss.detach()))
        model.eval()
    finally:
        torch.set_num_threads(threads)
    return _save(model, processor, tok, Path(out_dir))
