"""Every score is a pure function of the file and the config, whatever the decode thread count.

FFmpeg's frame-threaded H.264 decoder exported motion vectors that changed from run to run (see
curation.decode.thread_type); the real Sintel trailer has the B-frames that showed it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from curation.analyze import analyze_clips, analyze_video
from curation.config import AnalysisConfig, CurateConfig
from curation.decode import iter_frames, motion_vectors
from curation.probe import probe
from tests.conftest import shared_video

CFG = CurateConfig()
SINTEL = "moviepy_sintel_trailer_480p.mp4"
# An explicit count, not 0 (FFmpeg's choice = the machine's cores): frame threads must be in use
# even on a one-core runner.
MANY = 4


def _run(path: str, analysis: AnalysisConfig) -> tuple[list[Any], list[dict[str, Any]]]:
    info = probe(path)
    a = analyze_video(path, info, CFG.split, analysis)
    samples = [(s.index, s.scores, s.borders, s.phash) for s in a.samples]
    return samples, analyze_clips(a, CFG.split)


def _threads(n: int, **kw: Any) -> AnalysisConfig:
    return CFG.analysis.model_copy(update={"decode_threads": n, **kw})


@pytest.mark.slow
def test_real_h264_analysed_three_times_gives_identical_scores() -> None:
    path = shared_video(SINTEL)
    runs = [_run(path, CFG.analysis) for _ in range(3)]
    samples, clips = runs[0]
    assert len(samples) > 100
    assert all(s[1].get("motion") is not None for s in samples)
    assert clips and all(c["motion"] is not None for c in clips if c["n_samples"])
    for other in runs[1:]:
        assert other == runs[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        SINTEL,  # H.264 with B-frames
        "moviepy_big_buck_bunny_0_30.webm",  # VP8
        "imageio_cockatoo.mp4",  # H.264 4:4:4
        "torchcodec_av1_video.mkv",
        "torchcodec_h265_10bits.mp4",
        "torchcodec_nasa_13013.mp4",
    ],
)
def test_scores_do_not_depend_on_decode_threads(name: str) -> None:
    path = shared_video(name)
    assert _run(path, _threads(1)) == _run(path, _threads(MANY))


def _vector_digests(path: str, threads: int) -> list[str | None]:
    info = probe(path)
    out: list[str | None] = []
    for _, _, frame in iter_frames(path, info.stream_index, export_mvs=True, threads=threads):
        mvs = motion_vectors(frame)
        # Field by field: the struct's padding bytes are uninitialised and differ between runs.
        out.append(
            None
            if mvs is None
            else hashlib.sha256(b"".join(mvs[k].tobytes() for k in mvs.dtype.names)).hexdigest()
        )
    return out


@pytest.mark.slow
def test_exported_motion_vectors_are_exact_with_threads() -> None:
    # With frame threads ~28 of the trailer's B-frames came out with different vectors each run.
    path = shared_video(SINTEL)
    one = _vector_digests(path, 1)
    assert sum(d is not None for d in one) > 1000
    assert _vector_digests(path, MANY) == one


@pytest.mark.slow
def test_codec_vector_mode_is_reproducible() -> None:
    path = shared_video(SINTEL)
    samples, clips = _run(path, _threads(MANY, flow="auto"))
    assert sum("motion_mv" in s[1] for s in samples) > 50
    assert (samples, clips) == _run(path, _threads(1, flow="auto"))


def test_generated_video_scores_do_not_depend_on_threads(corpus_dir: Path) -> None:
    path = str(corpus_dir / "cuts.mp4")
    assert _run(path, _threads(1)) == _run(path, _threads(MANY))
