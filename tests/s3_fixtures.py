"""A real S3-protocol server on loopback for tests (moto's server mode, which s3fs tests against).

    from tests.s3_fixtures import s3, s3_server  # noqa: F401  (pytest finds fixtures by name)

    def test_x(s3: S3Env) -> None:
        url = s3.bucket("shards")                 # "s3://shards", created empty
        fs = s3.fs()                               # s3fs.S3FileSystem on the server
        ... pass s3.storage_options to fsspec, or rely on the environment set below

`s3_server` (once per session) starts `ThreadedMotoServer` bound to 127.0.0.1 on a free port.
`s3` (per test) points the usual variables at it with monkeypatch (fake AWS keys, region, and
AWS_ENDPOINT_URL / FSSPEC_S3_ENDPOINT_URL), so subprocesses (torchrun, `vjp`) reach it too, and
yields the endpoint and fsspec `storage_options`. Buckets are per test (unique names). Skips
cleanly when moto or s3fs is not installed.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server on loopback, for the whole session."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class S3Env:
    endpoint_url: str
    storage_options: dict[str, Any]
    buckets: list[str] = field(default_factory=list)

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def bucket(self, prefix: str = "test") -> str:
        """A new empty bucket; returns its URL (s3://name)."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.fs().mkdir(name)
        self.buckets.append(name)
        return f"s3://{name}"


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Env]:
    """Fake credentials and the endpoint in the environment (this process and its children)."""
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
        "FSSPEC_S3_ENDPOINT_URL": s3_server,
    }.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(k, raising=False)
    env = S3Env(s3_server, {"client_kwargs": {"endpoint_url": s3_server}})
    yield env
    fs = env.fs()
    for b in env.buckets:
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.rm(b, recursive=True)
