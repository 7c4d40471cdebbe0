"""FVD protocol presets, external-video conforming, and the intervals of the evaluation's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from training.eval.protocol import conform, crop_aspect, make_preset, resample_fps, select_frames
from training.eval.stats import bootstrap_fvd, wilson


def _counting(t: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.stack([np.full((h, w, 3), i, np.uint8) for i in range(t)])


def test_presets_state_their_settings_and_take_the_first_consecutive_frames() -> None:
    p16, stage = make_preset("fvd16", 48), make_preset("stage", 48)
    assert (p16.frames, stage.frames, p16.resolution) == (16, 48, 224) and p16.standard
    assert not make_preset("fvd16", 48, resolution=32).standard and not stage.standard
    d = p16.describe()
    assert d["frame_offset"] == 0 and d["frame_stride"] == 1 and "centre crop" in d["resize"]
    assert d["feature_dim"] == 400 and "never padded" in d["short_clips"]
    v = _counting(20)
    assert [int(f[0, 0, 0]) for f in select_frames(v, p16)] == list(range(16))
    assert select_frames(v, stage) is None  # 20 < 48: left out, not stretched
    with pytest.raises(ValueError, match="unknown FVD preset"):
        make_preset("fvd2048", 48)


def test_resampling_to_the_stage_fps_and_cropping_to_its_aspect() -> None:
    v = _counting(24)  # 24 frames = 3 s at 8 fps
    up = resample_fps(v, 8.0, 24.0)  # CogVideoX-style 8 fps to a 24 fps stage: each frame 3 times
    assert len(up) == 72 and [int(f[0, 0, 0]) for f in up[:7]] == [0, 0, 0, 1, 1, 1, 2]
    down = resample_fps(_counting(72), 24.0, 8.0)
    assert [int(f[0, 0, 0]) for f in down[:4]] == [0, 3, 6, 9] and len(down) == 24
    assert resample_fps(v, 8.0, 8.0) is v
    wide = np.zeros((2, 480, 720, 3), np.uint8)
    assert crop_aspect(wide, 256, 256).shape == (2, 480, 480, 3)
    assert crop_aspect(wide, 848, 480).shape == (2, 408, 720, 3)
    stage = {"fps": 24.0, "width": 256, "height": 256, "frames": 48}
    out = conform(np.zeros((24, 480, 720, 3), np.uint8), 8.0, stage, to_fps=True, to_aspect=True)
    assert out.shape == (72, 480, 480, 3)
    with pytest.raises(ValueError, match="no frame rate"):
        conform(wide, None, stage, to_fps=True, to_aspect=False)


def test_wilson_interval_matches_known_values() -> None:
    iv = wilson(423, 441)  # the seed's alignment result
    assert iv.value == pytest.approx(0.9592, abs=1e-4)
    assert iv.low == pytest.approx(0.9362, abs=1e-3) and iv.high == pytest.approx(0.9741, abs=1e-3)
    zero = wilson(0, 10)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.2775, abs=1e-3)
    assert wilson(0, 0) is None
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(0)
    small_a, small_b = rng.normal(size=(40, 8)), rng.normal(0.3, 1, size=(40, 8))
    big_a, big_b = rng.normal(size=(400, 8)), rng.normal(0.3, 1, size=(400, 8))
    s = bootstrap_fvd(small_a, small_b, reps=100, seed=1)
    b = bootstrap_fvd(big_a, big_b, reps=100, seed=1)
    assert s.low <= s.value <= s.high and b.low <= b.value <= b.high
    assert (b.high - b.low) < (s.high - s.low)
    assert bootstrap_fvd(small_a, small_b, reps=100, seed=1) == s  # seeded
    none = bootstrap_fvd(small_a, small_b, reps=0)
    assert none.low == none.value == none.high
