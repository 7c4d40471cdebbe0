"""A real GCS JSON-API server on loopback for tests (gcp-storage-emulator, PyPI): gs:// through gcsfs.

    from tests.gcs_fixtures import gcs, gcs_server  # noqa: F401  (pytest finds fixtures by name)

    def test_x(gcs: GcsEnv) -> None:
        url = gcs.bucket("out")                    # "gs://out-<hex>", created empty
        fs = gcs.fs()                              # gcsfs.GCSFileSystem on the server

`gcs_server` (once per session) runs the emulator in a subprocess bound to 127.0.0.1 on a free port.
`gcs` (per test) points the environment at it with monkeypatch, so subprocesses (`vjp`, Ray
workers) reach it too:
- STORAGE_EMULATOR_HOST: gcsfs sends every request there (it reads it per filesystem instance);
- FSSPEC_GS_TOKEN (+ FETCH_RAW_TOKEN_EXPIRY=false): the credential, from the environment as in
  production; "anon" by default, a test may set a raw bearer token instead (the emulator accepts
  any) to check that it is never written;
- GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: gcsfs >= 2025.x by default builds ExtendedGcsFileSystem,
  which asks the Storage Control API over gRPC for each bucket's layout (zonal / hierarchical
  namespace) before reads and writes; the emulator serves only the JSON API over HTTP, so every
  probe waits for its gRPC timeout. The variable is gcsfs's own switch, read when gcsfs is
  imported, and selects the plain JSON-API GCSFileSystem (what real flat-namespace buckets use).
Skips cleanly when gcsfs or the emulator is not installed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
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
def gcs_server() -> Iterator[str]:
    """The endpoint URL of a GCS emulator on loopback, for the whole session."""
    for mod in ("gcsfs", "gcp_storage_emulator"):  # not imported here: see GCSFS_EXPERIMENTAL_... above
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} not installed")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "gcp_storage_emulator", "start",
           "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
                raise RuntimeError(f"GCS emulator did not start on {url}: {err[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class GcsEnv:
    endpoint_url: str
    buckets: list[str] = field(default_factory=list)

    def fs(self) -> Any:
        import gcsfs.core

        return gcsfs.core.GCSFileSystem(
            skip_instance_cache=True, token="anon", endpoint_url=self.endpoint_url
        )

    def bucket(self, prefix: str = "test") -> str:
        """A new empty bucket; returns its URL (gs://name)."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.fs().mkdir(name)
        self.buckets.append(name)
        return f"gs://{name}"


def set_token(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    """The credential every gs:// filesystem of this process and its children uses."""
    import fsspec.config

    monkeypatch.setenv("FSSPEC_GS_TOKEN", token)  # children: fsspec reads it at import
    monkeypatch.setitem(fsspec.config.conf, "gs", {**fsspec.config.conf.get("gs", {}), "token": token})


@pytest.fixture
def gcs(gcs_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[GcsEnv]:
    """The emulator's endpoint and an anonymous token in the environment (this process and its children)."""
    for k, v in {
        "STORAGE_EMULATOR_HOST": gcs_server,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "FETCH_RAW_TOKEN_EXPIRY": "false",
    }.items():
        monkeypatch.setenv(k, v)
    for k in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "FSSPEC_GS", "FSSPEC_GCS"):
        monkeypatch.delenv(k, raising=False)
    import gcsfs
    import gcsfs.core

    if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:  # gcsfs was imported before the switch
        registry = importlib.import_module("fsspec.registry")  # the module; fsspec.registry is a view
        monkeypatch.setitem(registry._registry, "gs", gcsfs.core.GCSFileSystem)
    set_token(monkeypatch, "anon")
    env = GcsEnv(gcs_server)
    yield env
    fs = env.fs()
    for b in env.buckets:
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.rm(b, recursive=True)
