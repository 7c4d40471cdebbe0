"""OpenAI backend against a misbehaving server on loopback: timeouts, 500, 429 + backoff, dropped
connections, malformed JSON, bounded concurrency. All traffic stays on 127.0.0.1, bounded in count."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from captioning.backends.base import GenRequest, Sampling
from captioning.backends.openai_client import OpenAIBackend, backoff_delay, chat_url, parse_completion
from captioning.config import CaptionConfig
from captioning.frames import FrameSample
from captioning.prompts import build_messages
from captioning.runner import ClipWork, RunContext, caption_batch

JA = "青い背景の上を赤い四角がゆっくりと右へ動き、カメラは固定されている。"


def completion(text: str = JA, finish: str = "stop") -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            ],
            "usage": {"prompt_tokens": 321, "completion_tokens": 17, "total_tokens": 338},
        }
    ).encode()


class FlakyServer:
    """Behaviour per request is chosen by a MODE=<mode> marker in the prompt, else the `model` field:
    ok, http500, http429, timeout, close, malformed, wrongshape, http400, slow (concurrency bound).
    `<mode>-then-ok-<n>` fails n times first."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.times: dict[str, list[float]] = {}
        self.counts: Counter[str] = Counter()
        self.inflight = 0
        self.max_inflight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                # The mode comes from a MODE=... marker in the prompt (clip hints) or the model name.
                found = re.search(r"MODE=([\w-]+)", raw.decode())
                model = found.group(1) if found else body["model"]
                with server.lock:
                    server.bodies.append(body)
                    server.counts[model] += 1
                    n = server.counts[model]
                    server.times.setdefault(model, []).append(time.monotonic())
                mode = model
                if "-then-ok-" in model:
                    mode, _, fails = model.partition("-then-ok-")
                    if n > int(fails):
                        mode = "ok"
                server.handle(self, mode)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def handle(self, h: BaseHTTPRequestHandler, mode: str) -> None:
        def send(code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(payload)

        if mode == "ok":
            send(200, completion())
        elif mode == "http500":
            send(500, b'{"error": "internal"}')
        elif mode == "http429":
            send(429, b'{"error": "rate limited"}', {"Retry-After": "0.2"})
        elif mode == "http400":
            send(400, b'{"error": "bad request: video_url"}')
        elif mode == "malformed":
            send(200, b'{"choices": [ {"message": ')
        elif mode == "wrongshape":
            send(200, b'{"choices": []}')
        elif mode == "timeout":
            time.sleep(1.0)  # longer than the client's timeout
            with contextlib.suppress(OSError):
                send(200, completion())
        elif mode == "close":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
        elif mode == "slow":
            with self.lock:
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
            time.sleep(0.15)
            with self.lock:
                self.inflight -= 1
            send(200, completion())
        else:
            send(404, b"{}")

    def __enter__(self) -> FlakyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FlakyServer]:
    with FlakyServer() as s:
        yield s


def config(url: str, **openai) -> CaptionConfig:
    base = {
        "endpoint": url,
        "timeout_s": 0.4,
        "max_attempts": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.5,
    }
    return CaptionConfig.model_validate({"openai": {**base, **openai}})


def frames() -> FrameSample:
    rng = np.random.default_rng(0)
    return FrameSample(rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8), 2.0, 8.0, [0, 2, 4, 6], 0.0)


def request(cfg: CaptionConfig, key: str = "c_0_1/short") -> GenRequest:
    msgs = build_messages(cfg.system_prompt, cfg.prompts["short_ja"], ["タイトル: test"])
    return GenRequest(key, msgs, frames(), Sampling(0.2, 0.9, 1.05, 64, 0))


def backend_for(cfg: CaptionConfig, model: str) -> OpenAIBackend:
    b = OpenAIBackend(cfg)
    b.served_model = model
    return b


def test_chat_url_and_parse() -> None:
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    r = parse_completion(completion("x", "length"))
    assert (r.text, r.finish_reason, r.tokens_in, r.tokens_out) == ("x", "length", 321, 17)


def test_backoff_delay_honours_retry_after_and_caps() -> None:
    assert backoff_delay(1, 1.0, 30.0, "2") == 2.0
    assert backoff_delay(1, 1.0, 5.0, "120") == 5.0
    for attempt in range(1, 6):
        assert 0 <= backoff_delay(attempt, 0.5, 3.0) <= min(3.0, 0.5 * 2 ** (attempt - 1))


def test_ok_request_body_carries_video_url_data_mp4(server: FlakyServer) -> None:
    cfg = config(server.url)
    (res,) = backend_for(cfg, "ok").generate([request(cfg)])
    assert res.error is None and res.text == JA and res.attempts == 1 and res.tokens_in == 321
    body = server.bodies[0]
    parts = body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["text", "video_url", "text"]
    url = parts[1]["video_url"]["url"]
    assert url.startswith("data:video/mp4;base64,")
    mp4 = base64.b64decode(url.split(",", 1)[1])
    assert mp4[4:8] == b"ftyp"  # a real mp4 container
    assert body["max_tokens"] == 64 and body["repetition_penalty"] == 1.05
    assert body["messages"][0] == {"role": "system", "content": cfg.system_prompt}


@pytest.mark.parametrize(
    ("model", "attempts", "needle"),
    [
        ("http500", 3, "HTTP 500"),
        ("timeout", 3, "timeout"),
        ("close", 3, "connection error"),
        ("malformed", 3, "malformed response"),
        ("wrongshape", 3, "malformed response"),
        ("http400", 1, "HTTP 400"),  # not retryable
    ],
)
def test_failures_become_errors_with_attempts_counted(
    server: FlakyServer, model: str, attempts: int, needle: str
):
    cfg = config(server.url)
    t0 = time.monotonic()
    (res,) = backend_for(cfg, model).generate([request(cfg)])
    assert res.error is not None and needle in res.error
    assert res.attempts == attempts and server.counts[model] == attempts
    assert time.monotonic() - t0 < 10


def test_429_backs_off_per_retry_after_then_succeeds(server: FlakyServer) -> None:
    cfg = config(server.url)
    (res,) = backend_for(cfg, "http429-then-ok-2").generate([request(cfg)])
    assert res.error is None and res.text == JA and res.attempts == 3
    t = server.times["http429-then-ok-2"]
    assert all(b - a >= 0.18 for a, b in itertools.pairwise(t))  # Retry-After: 0.2 was honoured


def test_transient_500_then_ok_counts_attempts(server: FlakyServer) -> None:
    cfg = config(server.url)
    (res,) = backend_for(cfg, "http500-then-ok-1").generate([request(cfg)])
    assert res.error is None and res.attempts == 2


def test_concurrency_is_bounded(server: FlakyServer) -> None:
    cfg = config(server.url, max_concurrency=2, timeout_s=5.0)
    results = backend_for(cfg, "slow").generate([request(cfg, f"c{i}_0_1/short") for i in range(6)])
    assert all(r.error is None for r in results)
    assert server.max_inflight == 2


def test_error_statuses_in_caption_rows(server: FlakyServer, tmp_path: Path) -> None:
    """Through the runner: the failing clip gets status=error with the reason, the others go on."""
    cfg = config(server.url)
    modes = {"good_0_1": "ok", "down_0_1": "http500", "flaky_0_1": "close-then-ok-1"}
    works = [
        ClipWork(
            {"clip_id": cid, "caption_types": ["short"], "clip_path": None, "source_caption": f"MODE={mode}"},
            frames(),
        )
        for cid, mode in modes.items()
    ]
    ctx = RunContext("openai", cfg.model.id, None, "run", "h", "0.1.0")
    rows = {r.clip_id: r for r in caption_batch(works, OpenAIBackend(cfg), cfg, ctx, tmp_path)}
    assert rows["good_0_1"].status == "ok" and rows["good_0_1"].backend_attempts == 1
    assert rows["down_0_1"].status == "error" and "HTTP 500" in rows["down_0_1"].reason
    assert rows["down_0_1"].backend_attempts == 3 and rows["down_0_1"].tries == 1
    assert rows["flaky_0_1"].status == "ok" and rows["flaky_0_1"].backend_attempts == 2


def test_clip_transport_needs_a_path(server: FlakyServer) -> None:
    cfg = config(server.url, video_transport="clip")
    (res,) = backend_for(cfg, "ok").generate([request(cfg)])
    assert res.error is not None and "clip path" in res.error and res.attempts == 0
