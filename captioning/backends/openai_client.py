"""Any OpenAI-compatible chat endpoint, e.g. `vllm serve Qwen/Qwen2-VL-7B-Instruct`.

Bounded concurrency, per-request timeout, retries with exponential backoff (+ jitter, honouring
Retry-After) on 429, 5xx, timeouts, dropped connections and malformed bodies; other 4xx fail at
once. The video goes as a `video_url` content part (vLLM rejects `{"type": "video"}`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import httpx

from captioning.backends.base import GenRequest, GenResult
from captioning.config import CaptionConfig
from captioning.frames import data_url, frames_to_mp4

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class TransientError(Exception):
    """Worth another attempt."""


class PermanentError(Exception):
    """Retrying cannot help (bad request, unknown model, ...)."""


def chat_url(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if not base.endswith("/v1"):
        base += "/v1"
    return base + "/chat/completions"


def backoff_delay(attempt: int, base: float, cap: float, retry_after: str | None = None) -> float:
    """Delay before attempt `attempt + 1` (attempt counts from 1): full jitter, Retry-After wins."""
    if retry_after:
        try:
            return min(float(retry_after), cap)
        except ValueError:
            pass
    return random.uniform(0, min(cap, base * (2 ** (attempt - 1))))


def parse_completion(body: bytes) -> GenResult:
    """A chat.completion body -> result; anything off-shape is a TransientError (garbage reply)."""
    try:
        data = json.loads(body)
        choice = data["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("message.content is not a string")
        usage = data.get("usage") or {}
        return GenResult(
            text=text,
            finish_reason=choice.get("finish_reason"),
            tokens_in=usage.get("prompt_tokens"),
            tokens_out=usage.get("completion_tokens"),
        )
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise TransientError(f"malformed response: {type(e).__name__}: {e}"[:300]) from e


class OpenAIBackend:
    name = "openai"

    def __init__(self, cfg: CaptionConfig) -> None:
        self.cfg = cfg
        self.oc = cfg.openai
        self.model_id = cfg.model.id
        self.model_revision = cfg.model.revision
        self.served_model = self.oc.model or cfg.model.id
        self.url = chat_url(self.oc.endpoint)
        key = os.environ.get(self.oc.api_key_env, "")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    # ---- request body -------------------------------------------------------------------------
    def _video_part(self, req: GenRequest) -> dict[str, Any]:
        mode = self.oc.video_transport
        if mode == "frames_mp4":
            url = data_url(frames_to_mp4(req.frames.frames, req.frames.sample_fps))
        elif mode == "clip":
            if not req.clip_path:
                raise PermanentError("video_transport=clip needs the clip path")
            url = data_url(Path(req.clip_path).read_bytes())
        else:
            if not req.clip_path:
                raise PermanentError("video_transport=file_url needs the clip path")
            url = Path(req.clip_path).resolve().as_uri()
        return {"type": "video_url", "video_url": {"url": url}}

    def body(self, req: GenRequest) -> dict[str, Any]:
        video = self._video_part(req)
        messages = []
        for msg in req.messages:
            content = msg["content"]
            if isinstance(content, list):
                content = [video if p.get("type") == "video" else p for p in content]
            messages.append({"role": msg["role"], "content": content})
        sp = req.sampling
        fr = self.cfg.frames
        body: dict[str, Any] = {
            "model": self.served_model,
            "messages": messages,
            "max_tokens": sp.max_tokens,
            "temperature": sp.temperature,
            "top_p": sp.top_p,
            "seed": sp.seed,
            # vLLM extension; other servers ignore unknown fields.
            "repetition_penalty": sp.repetition_penalty,
        }
        if self.oc.send_mm_processor_kwargs:
            # vLLM >= 0.3x refuses these unless the server runs with --trust-request-mm-kwargs;
            # by default the server gets the same bounds once, via --mm-processor-kwargs.
            body["mm_processor_kwargs"] = {"min_pixels": fr.min_pixels, "max_pixels": fr.max_pixels}
        body.update(self.oc.extra_body)
        return body

    # ---- transport ------------------------------------------------------------------------------
    async def _post_once(self, client: httpx.AsyncClient, payload: bytes) -> GenResult:
        try:
            resp = await client.post(
                self.url, content=payload, headers={**self.headers, "Content-Type": "application/json"}
            )
        except httpx.TimeoutException as e:
            raise TransientError(f"timeout after {self.oc.timeout_s}s ({type(e).__name__})") from e
        except (httpx.TransportError, httpx.RemoteProtocolError) as e:
            raise TransientError(f"connection error: {type(e).__name__}: {e}"[:300]) from e
        if resp.status_code in RETRY_STATUS:
            err = TransientError(f"HTTP {resp.status_code}: {resp.text[:200]}")
            err.retry_after = resp.headers.get("retry-after")  # type: ignore[attr-defined]
            raise err
        if resp.status_code >= 400:
            raise PermanentError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        return parse_completion(resp.content)

    async def _one(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, req: GenRequest) -> GenResult:
        t0 = time.perf_counter()
        try:
            payload = json.dumps(self.body(req), ensure_ascii=False).encode()
        except Exception as e:  # e.g. frames that cannot be encoded, a missing clip
            return GenResult(error=f"openai: request: {type(e).__name__}: {e}"[:500], attempts=0)
        attempt = 0
        last = ""
        async with sem:
            while attempt < self.oc.max_attempts:
                attempt += 1
                try:
                    res = await self._post_once(client, payload)
                    res.attempts = attempt
                    res.gen_s = time.perf_counter() - t0
                    return res
                except PermanentError as e:
                    return GenResult(error=f"openai: {e}", attempts=attempt, gen_s=time.perf_counter() - t0)
                except TransientError as e:
                    last = str(e)
                    if attempt < self.oc.max_attempts:
                        delay = backoff_delay(
                            attempt,
                            self.oc.backoff_base_s,
                            self.oc.backoff_max_s,
                            getattr(e, "retry_after", None),
                        )
                        await asyncio.sleep(delay)
        return GenResult(
            error=f"openai: gave up after {attempt} attempts: {last}"[:500],
            attempts=attempt,
            gen_s=time.perf_counter() - t0,
        )

    async def agenerate(self, requests: list[GenRequest]) -> list[GenResult]:
        sem = asyncio.Semaphore(self.oc.max_concurrency)
        limits = httpx.Limits(
            max_connections=self.oc.max_concurrency, max_keepalive_connections=self.oc.max_concurrency
        )
        timeout = httpx.Timeout(self.oc.timeout_s, connect=min(10.0, self.oc.timeout_s))
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            return list(await asyncio.gather(*(self._one(client, sem, r) for r in requests)))

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests))
        # Called from inside a running loop (e.g. an async Ray actor): run on a private loop thread.
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.agenerate(requests)).result()

    def close(self) -> None:
        pass
