"""Qwen2-VL / Qwen2.5-VL through transformers: small CPU or single-GPU runs, and the tests."""

from __future__ import annotations

import time
from typing import Any

from captioning.backends.base import GenRequest, GenResult, model_family
from captioning.config import CaptionConfig


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, Any]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        # bfloat16 matmuls on CPU are slow and imprecise; the CPU path is for tests and tiny runs.
        return device, torch.bfloat16 if device.startswith("cuda") else torch.float32
    return device, getattr(torch, dtype)


class TransformersBackend:
    name = "transformers"

    def __init__(self, cfg: CaptionConfig) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg = cfg
        self.model_id = cfg.model.id
        self.model_revision = cfg.model.revision
        self.family = model_family(cfg)
        self.device, dtype = resolve_device_dtype(cfg.transformers.device, cfg.model.dtype)
        common: dict[str, Any] = {
            "revision": cfg.model.revision,
            "trust_remote_code": cfg.model.trust_remote_code,
        }
        self.processor = AutoProcessor.from_pretrained(cfg.model.id, **common)
        extra: dict[str, Any] = {}
        if cfg.transformers.attn_implementation:
            extra["attn_implementation"] = cfg.transformers.attn_implementation
        # AutoModelForImageTextToText maps qwen2_vl and qwen2_5_vl configs to their
        # *ForConditionalGeneration classes, so one code path serves both families.
        self.model = AutoModelForImageTextToText.from_pretrained(cfg.model.id, dtype=dtype, **common, **extra)
        self.model.to(self.device).eval()
        self._torch = torch
        gen_eos = self.model.generation_config.eos_token_id
        eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        tok = self.processor.tokenizer
        eos += [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>") if t in tok.get_vocab()]
        self.eos_ids = sorted({int(e) for e in eos if e is not None})

    def _video_kwargs(self, req: GenRequest) -> dict[str, Any]:
        fr = self.cfg.frames
        # Frames come resized by qwen-vl-utils to multiples of 28 inside the same pixel bounds, so
        # the processor's own smart_resize keeps them as they are; it must not resample frames.
        kw: dict[str, Any] = {
            "do_sample_frames": False,
            "size": {"shortest_edge": fr.min_pixels, "longest_edge": fr.max_pixels},
        }
        if hasattr(self.processor.video_processor, "cap_pixels_per_frame"):
            # qwen-vl-utils already applied the whole-video budget; say so (and silence the warning).
            kw["cap_pixels_per_frame"] = False
        # Qwen2.5-VL derives second_per_grid_ts (absolute time in M-RoPE) from the metadata's
        # sampled fps; describe the frames as what they are: every frame of a sample_fps sequence.
        n = req.frames.shape[0]
        kw["video_metadata"] = [
            {"total_num_frames": n, "fps": req.frames.sample_fps, "frames_indices": list(range(n))}
        ]
        return kw

    def _one(self, req: GenRequest) -> GenResult:
        torch = self._torch
        t0 = time.perf_counter()
        prompt = self.processor.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        video = torch.from_numpy(req.frames.frames.copy()).permute(0, 3, 1, 2)  # T, C, H, W uint8
        inputs = self.processor(
            text=[prompt], videos=[video], return_tensors="pt", videos_kwargs=self._video_kwargs(req)
        ).to(self.device)
        sp = req.sampling
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": sp.max_tokens,
            "repetition_penalty": sp.repetition_penalty,
            "eos_token_id": self.eos_ids,
            "pad_token_id": self.eos_ids[0] if self.eos_ids else None,
        }
        if sp.temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=sp.temperature, top_p=sp.top_p)
        else:
            gen_kwargs.update(do_sample=False)
        torch.manual_seed(sp.seed)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **gen_kwargs)
        n_in = int(inputs["input_ids"].shape[1])
        gen_ids = out[0, n_in:].tolist()
        hit_eos = any(t in self.eos_ids for t in gen_ids)
        finish = "length" if (not hit_eos and len(gen_ids) >= sp.max_tokens) else "stop"
        text = self.processor.batch_decode([gen_ids], skip_special_tokens=True)[0]
        return GenResult(
            text=text,
            finish_reason=finish,
            tokens_in=n_in,
            tokens_out=len(gen_ids),
            gen_s=time.perf_counter() - t0,
        )

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        results = []
        for req in requests:
            try:
                results.append(self._one(req))
            except Exception as e:  # one bad request must not sink the batch
                results.append(GenResult(error=f"transformers: {type(e).__name__}: {e}"[:500]))
        return results

    def close(self) -> None:
        self.model = None
