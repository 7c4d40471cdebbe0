from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from curation.synth import write_sample_corpus

# Real public test videos from the steering side; optional (VJP_SHARED_VIDEOS overrides).
SHARED_VIDEOS = Path(
    os.environ.get("VJP_SHARED_VIDEOS", Path(__file__).resolve().parents[1].parent / "shared" / "videos")
)


def shared_video(name: str) -> str:
    path = SHARED_VIDEOS / name
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is optional)")
    return str(path)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(str(folder))
    return folder


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        st = out.add_stream("aac", rate=16000)
        st.layout = "mono"
        for i in range(10):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate = 16000
            f.pts = i * 1024
            out.mux(st.encode(f))
        out.mux(st.encode(None))


@pytest.fixture(scope="session")
def bad_dir(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Path:
    """Files that must each become an error row with a readable reason."""
    folder = tmp_path_factory.mktemp("bad")
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n" * 50)
    data = (corpus_dir / "short.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    _audio_only(folder / "audio_only.mp4")
    # An unknown codec tag: the container opens, no decoder exists for the stream.
    (folder / "unknown_codec.mp4").write_bytes(data.replace(b"avc1", b"zzzz").replace(b"avcC", b"zzzC"))
    shutil.copy(corpus_dir / "short.mp4", folder / "good.mp4")
    # FFmpeg opens these as "video": a text file via its tty demuxer, an image via image2/png_pipe.
    (folder / "notes.txt").write_text("a plain text file that FFmpeg would render as ANSI art\n" * 20)
    cv2.imwrite(str(folder / "still.png"), np.zeros((64, 64, 3), np.uint8))
    return folder


def parquet_rows(path: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist() if os.path.exists(path) else []


@pytest.fixture(scope="session")
def local_ray() -> Iterator[Any]:
    """One local Ray for the whole session: tests that run jobs on Ray share it (the jobs join a
    running Ray instead of starting their own), and it is shut down once at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
