"""The in-process vLLM engine (`vllm.LLM`): many clips per generate call, one GPU per Ray actor.

vllm is imported inside the constructor only: it lives in its own venv (it pins its own torch), and
the rest of captioning must import without it.
"""

from __future__ import annotations

import time
from typing import Any

from captioning.backends.base import GenRequest, GenResult, model_family
from captioning.config import CaptionConfig
from captioning.prompts import render_chatml


def engine_kwargs(cfg: CaptionConfig) -> dict[str, Any]:
    """Arguments of vllm.LLM for this config (pure, tested without vllm)."""
    vc, fr = cfg.vllm, cfg.frames
    kw: dict[str, Any] = {
        "model": cfg.model.id,
        "revision": cfg.model.revision,
        "tokenizer_revision": cfg.model.revision,
        "trust_remote_code": cfg.model.trust_remote_code,
        "dtype": cfg.model.dtype,
        "max_model_len": vc.max_model_len,
        "gpu_memory_utilization": vc.gpu_memory_utilization,
        "enforce_eager": vc.enforce_eager,
        "enable_prefix_caching": vc.enable_prefix_caching,
        "tensor_parallel_size": vc.tensor_parallel_size,
        "limit_mm_per_prompt": {"image": 0, "video": 1},
        # Frames arrive resized by qwen-vl-utils; the same bounds make the HF processor inside
        # vLLM keep their size instead of re-deriving its own (larger) default budget.
        "mm_processor_kwargs": {"min_pixels": fr.min_pixels, "max_pixels": fr.max_pixels},
        "seed": cfg.sampling.seed,
    }
    if vc.max_num_seqs is not None:
        kw["max_num_seqs"] = vc.max_num_seqs
    if vc.max_num_batched_tokens is not None:
        kw["max_num_batched_tokens"] = vc.max_num_batched_tokens
    kw.update(vc.extra_engine_kwargs)
    return {k: v for k, v in kw.items() if v is not None}


class VLLMEngineBackend:
    name = "vllm"

    def __init__(self, cfg: CaptionConfig) -> None:
        from vllm import LLM, SamplingParams

        self.cfg = cfg
        self.model_id = cfg.model.id
        self.model_revision = cfg.model.revision
        self.family = model_family(cfg)
        self._SamplingParams = SamplingParams
        self.llm = LLM(**engine_kwargs(cfg))
        self.tokenizer = self.llm.get_tokenizer()

    def render(self, messages: list[dict[str, Any]]) -> str:
        # The model's own chat template when it ships one; ChatML (Qwen's format) otherwise.
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return render_chatml(messages)

    def _prompt(self, req: GenRequest) -> dict[str, Any]:
        prompt: dict[str, Any] = {
            "prompt": self.render(req.messages),
            "multi_modal_data": {"video": req.frames.frames},
        }
        if self.family == "qwen2_5_vl":
            # Qwen2.5-VL encodes absolute time: without the sampling fps it assumes 2 fps.
            prompt["mm_processor_kwargs"] = {"fps": req.frames.sample_fps}
        return prompt

    def _params(self, req: GenRequest) -> Any:
        sp = req.sampling
        return self._SamplingParams(
            temperature=sp.temperature,
            top_p=sp.top_p,
            repetition_penalty=sp.repetition_penalty,
            max_tokens=sp.max_tokens,
            seed=sp.seed,
        )

    @staticmethod
    def _result(out: Any, gen_s: float) -> GenResult:
        comp = out.outputs[0]
        return GenResult(
            text=comp.text,
            finish_reason=comp.finish_reason,
            tokens_in=len(out.prompt_token_ids or []),
            tokens_out=len(comp.token_ids),
            gen_s=gen_s,
        )

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        t0 = time.perf_counter()
        prompts, params, slots = [], [], []
        results: list[GenResult | None] = [None] * len(requests)
        for i, req in enumerate(requests):
            try:
                prompts.append(self._prompt(req))
                params.append(self._params(req))
                slots.append(i)
            except Exception as e:
                results[i] = GenResult(error=f"vllm: prompt: {type(e).__name__}: {e}"[:500])
        try:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
            per = (time.perf_counter() - t0) / max(len(outs), 1)
            for i, out in zip(slots, outs, strict=True):
                results[i] = self._result(out, per)
        except Exception:
            # One bad request (e.g. a prompt over max_model_len) fails the whole call: isolate it
            # by running the requests one by one, so only the culprit gets an error row.
            for i, prompt, param in zip(slots, prompts, params, strict=True):
                t1 = time.perf_counter()
                try:
                    out = self.llm.generate([prompt], [param], use_tqdm=False)[0]
                    results[i] = self._result(out, time.perf_counter() - t1)
                except Exception as e:
                    results[i] = GenResult(error=f"vllm: {type(e).__name__}: {e}"[:500])
        return [r if r is not None else GenResult(error="vllm: no output") for r in results]

    def close(self) -> None:
        self.llm = None
