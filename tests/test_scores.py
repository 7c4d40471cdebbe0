"""Per-frame curation scores on synthetic frames with known ground truth.

Run ``python tests/test_scores.py`` to print per-function timings on 256x144 frames (not asserted here).
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable

import cv2
import numpy as np
import pytest

from curation.scores.blur import BLUR_MIN, frame_sharpness
from curation.scores.exposure import exposure_verdict, frame_exposure
from curation.scores.letterbox import aggregate_crop, edge_support, frame_borders, video_bars
from curation.scores.motion import STATIC_FLOW_MAX, flow_magnitude, mv_magnitude
from curation.scores.phash import hamming, near_duplicates, phash64
from curation.scores.text import TEXT_FRACTION_MAX, frame_text_fraction

H, W = 144, 256


# ---------------------------------------------------------------- synthetic frames


def texture(
    h: int = H, w: int = W, seed: int = 0, beta: float = 1.8, lo: float = 20, hi: float = 230
) -> np.ndarray:
    """1/f^beta noise: a natural-image-like texture (uint8)."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (beta / 2)
    img = np.fft.irfft2(spec, s=(h, w))
    return cv2.normalize(img, None, lo, hi, cv2.NORM_MINMAX).astype(np.uint8)


def jpeg(gray: np.ndarray, quality: int = 70) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def add_noise(gray: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(gray.astype(np.float32) + rng.normal(0, sigma, gray.shape), 0, 255).astype(np.uint8)


def with_subtitle(bg: np.ndarray, lines: list[str], scale: int = 4) -> np.ndarray:
    """Outlined white subtitle lines rendered at ``scale``x and area-downscaled, like a decoded frame."""
    h, w = bg.shape
    big = cv2.resize(bg, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, text in enumerate(lines):
        (tw, _), _ = cv2.getTextSize(text, font, 1.6, 3)
        org = ((w * scale - tw) // 2, h * scale - 36 - 60 * (len(lines) - 1 - i))
        cv2.putText(big, text, org, font, 1.6, 0, 9, cv2.LINE_AA)  # dark outline
        cv2.putText(big, text, org, font, 1.6, 255, 3, cv2.LINE_AA)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)


def with_japanese_subtitle(bg: np.ndarray, text: str, scale: int = 4) -> np.ndarray | None:
    """Same with Japanese text via OpenCV 5's built-in Unicode font; None on OpenCV 4 (no CJK glyphs)."""
    if not hasattr(cv2, "FontFace"):
        return None
    h, w = bg.shape
    big = cv2.resize(bg, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
    face = cv2.FontFace("uni")
    org = (80, h * scale - 28)
    for dx in (-4, -2, 0, 2, 4):
        for dy in (-4, -2, 0, 2, 4):
            cv2.putText(big, text, (org[0] + dx, org[1] + dy), (0,), face, 40)
    cv2.putText(big, text, org, (255,), face, 40)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)


def letterboxed(top: int, bottom: int, left: int = 0, right: int = 0, seed: int = 0) -> np.ndarray:
    img = texture(seed=seed)
    img[:top] = 0
    img[H - bottom :] = 0
    img[:, :left] = 0
    img[:, W - right :] = 0
    return jpeg(add_noise(img, 2.0, seed=seed + 7), 60)


# ---------------------------------------------------------------- exposure


def test_exposure_black_dark_normal_washed() -> None:
    black = add_noise(np.zeros((H, W), np.uint8), 2.0)
    dark = texture(lo=5, hi=60)
    normal = texture()
    washed = texture(lo=185, hi=235)  # low contrast around a high mean
    blown = normal.copy()
    blown[:, : int(W * 0.6)] = 252  # mostly clipped

    s = frame_exposure(black)
    assert s["luma_mean"] < 5 and s["dark_fraction"] > 0.99 and s["bright_fraction"] == 0.0
    assert exposure_verdict(s) == "black"
    assert exposure_verdict(frame_exposure(dark)) == "dark"
    s = frame_exposure(normal)
    assert 80 < s["luma_mean"] < 180 and s["luma_std"] > 15
    assert exposure_verdict(s) == "ok"
    assert exposure_verdict(frame_exposure(washed)) == "washed"
    s = frame_exposure(blown)
    assert s["bright_fraction"] == pytest.approx(0.6, abs=0.01)
    assert exposure_verdict(s) == "washed"


def test_limited_range_luma_is_mapped_to_full_range() -> None:
    black_tv = add_noise(np.full((H, W), 16, np.uint8), 1.0)  # limited-range black: code 16
    s = frame_exposure(black_tv, full_range=False)
    assert s["luma_mean"] < 2 and s["dark_fraction"] > 0.99
    assert exposure_verdict(s) == "black"
    assert frame_exposure(black_tv)["luma_mean"] > 15  # read as full range, black would be grey 16
    white_tv = np.full((H, W), 235, np.uint8)
    assert frame_exposure(white_tv, full_range=False)["luma_mean"] == pytest.approx(255.0)


def test_lit_subject_in_dark_frame_is_not_too_dark() -> None:
    # A low-key shot: a dark room (mean ~10) with a lit face covering a few percent of the frame.
    room = texture(lo=0, hi=25, seed=11)
    face = room.copy()
    cv2.ellipse(face, (128, 60), (18, 24), 0, 0, 360, 170, -1)
    lit = frame_exposure(face)
    assert lit["luma_mean"] < 25 and lit["luma_p99"] > 150
    assert exposure_verdict(lit) == "ok"
    # The same room with nothing lit is underexposed.
    s = frame_exposure(room)
    assert s["luma_p99"] < 30 and exposure_verdict(s) == "dark"


def test_exposure_p99_matches_numpy() -> None:
    g = texture(seed=12)
    assert frame_exposure(g)["luma_p99"] == pytest.approx(float(np.percentile(g, 99)), abs=1.0)


def test_exposure_matches_numpy() -> None:
    g = texture(seed=3)
    s = frame_exposure(g)
    assert s["luma_mean"] == pytest.approx(float(g.mean()), abs=1e-6)
    assert s["luma_std"] == pytest.approx(float(g.std()), abs=1e-4)
    assert s["dark_fraction"] == pytest.approx(float((g < 16).mean()))
    assert s["bright_fraction"] == pytest.approx(float((g > 240).mean()))


# ---------------------------------------------------------------- blur


def test_sharpness_drops_with_blur() -> None:
    yy, xx = np.indices((H, W))
    checker = (((yy // 8 + xx // 8) % 2) * 200 + 28).astype(np.uint8)
    soft = cv2.GaussianBlur(checker, (0, 0), 2.0)
    assert frame_sharpness(checker) > 5 * frame_sharpness(soft)
    sharp = jpeg(texture(seed=2), 85)
    soft = cv2.GaussianBlur(sharp, (0, 0), 2.0)
    assert frame_sharpness(sharp) > 5 * frame_sharpness(soft)
    assert frame_sharpness(soft) < BLUR_MIN < frame_sharpness(sharp)


def test_sharpness_comparable_across_resolutions() -> None:
    src = texture(h=720, w=1280, seed=5, beta=1.6)
    small = cv2.resize(src, (256, 144), interpolation=cv2.INTER_AREA)
    large = cv2.resize(src, (640, 360), interpolation=cv2.INTER_AREA)
    ratio = frame_sharpness(large) / frame_sharpness(small)
    assert 0.6 < ratio < 1.6


def test_sharpness_ignores_letterbox_edges() -> None:
    soft = cv2.GaussianBlur(texture(seed=4), (0, 0), 2.5)
    soft[:18] = 0
    soft[H - 18 :] = 0
    # The bar/picture edges alone make the frame look sharp; the crop removes them.
    assert frame_sharpness(soft, crop=(18, 18, 0, 0)) < BLUR_MIN < frame_sharpness(soft)


# ---------------------------------------------------------------- letterbox


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_letterbox_bars_detected(seed: int) -> None:
    top, bottom, left, right = frame_borders(letterboxed(18, 19, seed=seed))
    assert abs(top - 18) <= 2 and abs(bottom - 19) <= 2
    assert left == 0 and right == 0


def test_pillarbox_and_windowbox() -> None:
    t, b, left, right = frame_borders(letterboxed(0, 0, 32, 32))
    assert t == 0 and b == 0 and abs(left - 32) <= 2 and abs(right - 32) <= 2
    t, b, left, right = frame_borders(letterboxed(12, 12, 20, 20))
    assert all(abs(v - e) <= 2 for v, e in zip((t, b, left, right), (12, 12, 20, 20), strict=True))


def test_no_bars_on_plain_or_dark_textured_scene() -> None:
    assert frame_borders(jpeg(texture(seed=3))) == (0, 0, 0, 0)
    dark = jpeg(add_noise(texture(seed=4, lo=0, hi=45), 2.0))  # night scene: dark but textured
    assert frame_borders(dark) == (0, 0, 0, 0)


def test_black_frames_give_no_bars() -> None:
    assert frame_borders(np.zeros((H, W), np.uint8)) == (0, 0, 0, 0)
    assert frame_borders(add_noise(np.full((H, W), 16, np.uint8), 2.0)) == (0, 0, 0, 0)  # limited-range black
    fade = np.zeros((H, W), np.uint8)
    cv2.putText(fade, "THE END", (80, 80), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2)  # title on black
    assert frame_borders(fade) == (0, 0, 0, 0)


def test_logo_in_bar_does_not_break_it() -> None:
    img = letterboxed(20, 20)
    cv2.putText(img, "tv", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 220, 1)  # small logo inside the top bar
    top, bottom, _, _ = frame_borders(img)
    assert abs(top - 20) <= 2 and abs(bottom - 20) <= 2


def test_edge_support_real_bar_vs_dark_content() -> None:
    boxed = letterboxed(18, 18)
    support = edge_support(boxed, frame_borders(boxed))
    assert support[0] > 0.8 and support[1] > 0.8 and support[2] == support[3] == 0.0
    # Dark picture content at the left: a vignette fading in, no straight edge.
    scene = texture(seed=5).astype(np.float32)
    ramp = np.clip((np.arange(W, dtype=np.float32) - 30) / 80, 0, 1)[None, :] ** 2
    vignette = jpeg(add_noise((scene * ramp).astype(np.uint8), 1.0))
    borders = frame_borders(vignette)
    assert borders[2] > 10  # one frame alone reads it as a pillarbox ...
    assert edge_support(vignette, borders)[2] < 0.35  # ... whose edge is not straight


def test_dark_content_is_not_a_bar_unless_the_video_shares_it() -> None:
    # A clip whose frames all show a 40 px dark "pillar" with a ragged edge, in a video without bars.
    frames = [(0, 0, 40, 0)] * 8
    ragged = [(0.0, 0.0, 0.1, 0.0)] * 8
    crop = aggregate_crop(frames, H, W, edges=ragged, video=(0, 0, 0, 0))
    assert crop["crop_left"] == 0.0 and crop["border_fraction"] == 0.0
    # The same bar with a straight edge is kept: a 4:3 insert in a 16:9 video.
    straight = [(0.0, 0.0, 0.9, 0.0)] * 8
    assert aggregate_crop(frames, H, W, edges=straight, video=(0, 0, 0, 0))["crop_left"] == pytest.approx(
        40 / W
    )
    # ... and so is a ragged one every frame of the video shares (a letterbox next to dark scenes).
    assert aggregate_crop(frames, H, W, edges=ragged, video=(0, 0, 40, 0))["crop_left"] == pytest.approx(
        40 / W
    )
    # An unsteady bar (content moving) is not a bar even with straight edges.
    wobbly = [(0, 0, 20 + 6 * i, 0) for i in range(8)]
    assert aggregate_crop(wobbly, H, W, edges=straight, video=(0, 0, 0, 0))["crop_left"] == 0.0


def test_video_bars_is_what_every_frame_shares() -> None:
    borders = [(20, 19, 0, 0)] * 18 + [(0, 0, 0, 0)] * 4 + [(56, 19, 0, 24)] * 2
    black = [False] * 18 + [True] * 4 + [False] * 2
    assert video_bars(borders, black) == (20, 19, 0, 0)
    shots = [(8, 8, 57, 44)] * 10 + [(0, 0, 1, 0)] * 5 + [(0, 0, 55, 28)] * 10  # NASA-like: differs by shot
    assert video_bars(shots)[2:] == (1, 0)
    assert video_bars([]) == (0, 0, 0, 0)


def test_aggregate_crop_is_robust() -> None:
    frames = [(18, 18, 0, 0)] * 6 + [(30, 25, 0, 0), (18, 40, 0, 0), (12, 18, 0, 0)] + [(0, 0, 0, 0)] * 2
    black = [False] * 9 + [True] * 2
    crop = aggregate_crop(frames, H, W, skip=black)
    assert crop["crop_top"] == pytest.approx(18 / H)
    assert crop["crop_bottom"] == pytest.approx(18 / H)
    assert crop["crop_left"] == 0.0 and crop["crop_right"] == 0.0
    assert crop["border_fraction"] == pytest.approx(36 / H)
    # Without flags a minority of black frames still leaves the median at the bar size.
    assert aggregate_crop(frames, H, W)["crop_top"] == pytest.approx(18 / H)
    empty = aggregate_crop([], H, W)
    assert empty["border_fraction"] == 0.0
    box = aggregate_crop([(10, 10, 20, 20)], 100, 200)
    assert box["border_fraction"] == pytest.approx(1 - 0.8 * 0.8)


# ---------------------------------------------------------------- text


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subtitles_detected_plain_texture_not(seed: int) -> None:
    bg = texture(seed=seed)
    plain = frame_text_fraction(jpeg(bg))
    one = frame_text_fraction(jpeg(with_subtitle(bg, ["Where are you going tonight?"])))
    two = frame_text_fraction(jpeg(with_subtitle(bg, ["I told you already,", "we have no time left!"])))
    assert plain < TEXT_FRACTION_MAX / 2
    assert one > TEXT_FRACTION_MAX
    assert two > one


def test_japanese_subtitle_detected() -> None:
    bg = texture(seed=7)
    img = with_japanese_subtitle(bg, "今日はいい天気ですね、散歩に行こう")
    if img is None:
        pytest.skip("OpenCV < 5 has no CJK font")
    assert frame_text_fraction(jpeg(img)) > TEXT_FRACTION_MAX
    assert frame_text_fraction(jpeg(bg)) < TEXT_FRACTION_MAX / 2


def test_title_card_detected() -> None:
    card = cv2.GaussianBlur(texture(seed=8), (0, 0), 4) // 2
    cv2.putText(card, "CHAPTER ONE", (40, 75), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 250, 2, cv2.LINE_AA)
    assert frame_text_fraction(jpeg(card)) > 3 * TEXT_FRACTION_MAX


def _spaced_title(bg: np.ndarray, word: str, scale: int = 4) -> np.ndarray:
    """Thin capitals as wide apart as they are tall, with an underline: a film's title card."""
    h, w = bg.shape
    big = cv2.resize(bg, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
    x, y, step = 300, 320, 110
    for i, ch in enumerate(word):
        cv2.putText(big, ch, (x + i * step, y), cv2.FONT_HERSHEY_COMPLEX_SMALL, 2.6, 235, 2, cv2.LINE_AA)
    cv2.line(big, (x - 20, y + 14), (x + step * len(word), y + 10), 235, 3, cv2.LINE_AA)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)


def test_letter_spaced_title_detected() -> None:
    on_black = _spaced_title(np.full((H, W), 16, np.uint8), "SINTEL")
    over_scene = _spaced_title(cv2.GaussianBlur(texture(seed=13, lo=40, hi=120), (0, 0), 3), "SINTEL")
    for img in (on_black, over_scene):
        assert frame_text_fraction(jpeg(img, 85)) > TEXT_FRACTION_MAX
    # The same strokes scattered, not in a line of letters, are not text.
    scattered = np.full((H, W), 16, np.uint8)
    for i, ch in enumerate("SINTEL"):
        cv2.putText(scattered, ch, (20 + 37 * i, 20 + 21 * i), cv2.FONT_HERSHEY_COMPLEX_SMALL, 0.65, 235, 1)
    assert frame_text_fraction(jpeg(scattered, 85)) < TEXT_FRACTION_MAX / 2


def test_no_text_on_busy_textures() -> None:
    from curation.synth import texture as shapes

    for seed in range(6):
        busy = cv2.resize(cv2.cvtColor(shapes(360, 640, seed), cv2.COLOR_RGB2GRAY), (W, H), cv2.INTER_AREA)
        assert frame_text_fraction(jpeg(busy)) < TEXT_FRACTION_MAX / 2
        grainy = jpeg(add_noise(texture(seed=seed, beta=1.2), 4.0))
        assert frame_text_fraction(grainy) < TEXT_FRACTION_MAX / 2


def test_no_text_on_noise_water_and_flat() -> None:
    rng = np.random.default_rng(0)
    noise = np.clip(rng.normal(128, 50, (H, W)), 0, 255).astype(np.uint8)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    waves = sum(
        np.sin(k * (x * np.cos(t) + y * np.sin(t)) + p)
        for k, t, p in rng.uniform(0.1, 0.6, (8, 3)) * (1, 5, 10)
    )
    water = cv2.normalize(waves, None, 40, 220, cv2.NORM_MINMAX).astype(np.uint8)
    for img in (noise, water, np.full((H, W), 90, np.uint8), letterboxed(18, 18)):
        assert frame_text_fraction(jpeg(img)) < TEXT_FRACTION_MAX / 2


def test_text_fraction_resolution_independent() -> None:
    src = with_subtitle(texture(h=360, w=640, seed=9), ["Where are you going tonight?"], scale=2)
    small = cv2.resize(src, (256, 144), interpolation=cv2.INTER_AREA)
    a, b = frame_text_fraction(small), frame_text_fraction(src)
    assert a > TEXT_FRACTION_MAX and b > TEXT_FRACTION_MAX
    assert 0.5 < a / b < 2.0


# ---------------------------------------------------------------- phash


def test_phash_robust_and_discriminative() -> None:
    img = texture(seed=10)
    h = phash64(img)
    assert -(2**63) <= h < 2**63
    variants = [
        cv2.resize(cv2.resize(img, (640, 360)), (256, 144), interpolation=cv2.INTER_AREA),
        cv2.resize(img, (128, 72), interpolation=cv2.INTER_AREA),
        jpeg(img, 20),
        np.clip(img.astype(np.int16) + 30, 0, 255).astype(np.uint8),
        cv2.GaussianBlur(img, (0, 0), 1.0),
    ]
    for v in variants:
        assert hamming(h, phash64(v)) <= 6
    for seed in range(11, 16):
        assert hamming(h, phash64(texture(seed=seed))) >= 16


def test_hamming_handles_signed_values() -> None:
    assert hamming(-1, 0) == 64
    assert hamming(-(2**63), 0) == 1
    assert hamming(5, 5) == 0
    assert hamming(0b1011, 0b0001) == 2


# ---------------------------------------------------------------- near duplicates


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def _flip(h: int, bits: list[int]) -> int:
    u = h & ((1 << 64) - 1)
    for b in bits:
        u ^= 1 << b
    return _signed(u)


def _brute_force(items: list[tuple[str, list[int]]], d: int) -> dict[str, str]:
    ids = sorted(cid for cid, _ in items)
    hashes = dict(items)
    parent = {cid: cid for cid in ids}

    def find(c: str) -> str:
        while parent[c] != c:
            c = parent[c]
        return c

    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            if all(hamming(x, y) <= d for x, y in zip(hashes[a], hashes[b], strict=True)):
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    return {c: find(c) for c in ids if find(c) != c}


def test_near_duplicates_groups_and_survivors() -> None:
    rng = random.Random(0)
    base = [_signed(rng.getrandbits(64)) for _ in range(3)]
    other = [_signed(rng.getrandbits(64)) for _ in range(3)]
    items = [
        ("clip_b", base),
        ("clip_a", [_flip(h, [1, 20, 40]) for h in base]),  # 3 bits away on every frame
        ("clip_c", [_flip(h, [5, 9]) for h in base]),
        ("zzz", other),
        ("clip_x", [_flip(base[0], [2]), base[1], _signed(rng.getrandbits(64))]),  # one frame differs
    ]
    out = near_duplicates(items, 4)
    assert out == {"clip_b": "clip_a", "clip_c": "clip_a"}
    for _ in range(5):
        shuffled = items[:]
        rng.shuffle(shuffled)
        assert near_duplicates(shuffled, 4) == out


def test_near_duplicates_transitive_chain() -> None:
    rng = random.Random(1)
    h0 = [_signed(rng.getrandbits(64)) for _ in range(2)]
    h1 = [_flip(h, [0, 1, 2, 3]) for h in h0]  # 4 from h0
    h2 = [_flip(h, [4, 5, 6, 7]) for h in h1]  # 4 from h1, 8 from h0
    items = [("m", h1), ("z", h0), ("k", h2)]
    assert hamming(h0[0], h2[0]) == 8
    assert near_duplicates(items, 4) == {"m": "k", "z": "k"}


def test_near_duplicates_matches_brute_force() -> None:
    rng = random.Random(2)
    for trial in range(12):
        n_frames = 1 + trial % 3
        d = [0, 2, 5, 9][trial % 4]
        items: list[tuple[str, list[int]]] = []
        for i in range(60):
            hs = [_signed(rng.getrandbits(64)) for _ in range(n_frames)]
            items.append((f"c{rng.getrandbits(32):08x}_{i}", hs))
            for j in range(rng.choice([0, 0, 1, 2])):  # planted near-duplicates, some beyond d
                flips = [[rng.randrange(64) for _ in range(rng.randint(0, d + 2))] for _ in hs]
                items.append(
                    (
                        f"d{rng.getrandbits(32):08x}_{i}_{j}",
                        [_flip(h, f) for h, f in zip(hs, flips, strict=True)],
                    )
                )
        items.append((f"exact_{trial}", list(items[0][1])))  # exact copy
        assert near_duplicates(items, d) == _brute_force(items, d)


def test_near_duplicates_no_false_merges_and_validation() -> None:
    rng = random.Random(3)
    items = [(f"c{i:05d}", [_signed(rng.getrandbits(64)) for _ in range(3)]) for i in range(3000)]
    assert near_duplicates(items, 6) == {}
    assert near_duplicates([], 6) == {}
    with pytest.raises(ValueError):
        near_duplicates([("a", [1, 2]), ("b", [1])], 4)
    with pytest.raises(ValueError):
        near_duplicates([("a", [1]), ("a", [2])], 4)
    with pytest.raises(ValueError):
        near_duplicates([("a", [1])], -1)
    assert near_duplicates([("b", [0]), ("a", [-1]), ("c", [5])], 64) == {"b": "a", "c": "a"}


# ---------------------------------------------------------------- motion


def _pan_pair(dx: int, dy: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    big = texture(h=H + 80, w=W + 120, seed=seed, beta=1.4)
    a = big[40 : 40 + H, 60 : 60 + W]
    b = big[40 - dy : 40 - dy + H, 60 - dx : 60 - dx + W]  # content moves by (+dx, +dy)
    return add_noise(a, 1.5, seed=1), add_noise(b, 1.5, seed=2)


@pytest.mark.parametrize(("dx", "dy"), [(3, 0), (6, 3), (0, -8), (24, 10)])
def test_flow_measures_known_shift(dx: int, dy: int) -> None:
    a, b = _pan_pair(dx, dy)
    expected = np.hypot(dx, dy) / np.hypot(W, H)
    r = flow_magnitude(a, b)
    assert r["flow_mean"] == pytest.approx(expected, rel=0.2)
    assert r["flow_global"] == pytest.approx(expected, rel=0.2)
    assert r["flow_p90"] >= r["flow_global"] * 0.9


def test_flow_static_is_near_zero() -> None:
    a = texture(seed=3)
    r = flow_magnitude(add_noise(a, 2.0, seed=1), add_noise(a, 2.0, seed=2))
    assert r["flow_mean"] < STATIC_FLOW_MAX / 2 and r["flow_global"] < STATIC_FLOW_MAX / 2
    flat = np.full((H, W), 100, np.uint8)  # flat and noisy: no texture to track, must not invent motion
    r = flow_magnitude(add_noise(flat, 3.0, seed=1), add_noise(flat, 3.0, seed=2))
    assert r["flow_mean"] < STATIC_FLOW_MAX


def test_flow_global_picks_the_pan() -> None:
    a, b = _pan_pair(5, 0, seed=4)
    a, b = a.copy(), b.copy()
    obj = texture(h=40, w=40, seed=5)
    a[20:60, 30:70] = obj
    b[30:70, 30:70] = obj  # a small object moving down by 10 px against a 5 px pan to the right
    r = flow_magnitude(a, b)
    assert r["flow_global"] == pytest.approx(5 / np.hypot(W, H), rel=0.2)


def test_flow_resolution_independent() -> None:
    a, b = _pan_pair(8, 4, seed=6)
    small = flow_magnitude(
        cv2.resize(a, (160, 90), interpolation=cv2.INTER_AREA),
        cv2.resize(b, (160, 90), interpolation=cv2.INTER_AREA),
    )
    full = flow_magnitude(a, b)
    assert small["flow_mean"] == pytest.approx(full["flow_mean"], rel=0.15)


def _encode_square_video(step: int, n: int = 12) -> bytes:
    av = pytest.importorskip("av")
    buf = io.BytesIO()
    out = av.open(buf, "w", format="mp4")
    stream = out.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
    stream.options = {"preset": "ultrafast", "bf": "0"}
    bg = (texture(h=96, w=128, seed=1) // 3 + 40).astype(np.uint8)
    for i in range(n):
        frame = np.repeat(bg[:, :, None], 3, axis=2)
        frame[30:62, 10 + step * i : 42 + step * i] = 230
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return buf.getvalue()


def _decoded_mv_magnitudes(data: bytes) -> list[float]:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        values = []
        for frame in container.decode(stream):
            side = frame.side_data.get("MOTION_VECTORS")
            if side is None:  # I-frame
                continue
            mvs = side.to_ndarray()
            assert {"source", "w", "h", "motion_x", "motion_y", "motion_scale"} <= set(mvs.dtype.names)
            values.append(mv_magnitude(mvs, frame.width, frame.height))
        return values


def test_mv_magnitude_on_real_h264() -> None:
    moving = _decoded_mv_magnitudes(_encode_square_video(step=4))
    static = _decoded_mv_magnitudes(_encode_square_video(step=0))
    assert moving and max(moving) > 1e-3
    assert static and max(static) < 1e-4
    assert mv_magnitude(None, 128, 96) == 0.0


def test_mv_magnitude_weighting() -> None:
    dtype = np.dtype(
        [
            ("source", "<i4"),
            ("w", "u1"),
            ("h", "u1"),
            ("src_x", "<i2"),
            ("src_y", "<i2"),
            ("dst_x", "<i2"),
            ("dst_y", "<i2"),
            ("flags", "<u8"),
            ("motion_x", "<i4"),
            ("motion_y", "<i4"),
            ("motion_scale", "<u2"),
        ]
    )
    mvs = np.zeros(2, dtype)
    mvs["w"], mvs["h"] = (16, 8), (16, 8)
    mvs["source"] = (-1, 1)
    mvs["motion_scale"] = 4
    mvs["motion_x"] = (4 * 12, 0)  # 12 px on a 256-px block, 0 on a 64-px block
    mvs["motion_y"] = (4 * 5, 0)  # magnitude 13 px
    assert mv_magnitude(mvs, 30, 40) == pytest.approx(13 * 256 / 320 / 50)
    assert mv_magnitude(mvs[:0], 30, 40) == 0.0


# ---------------------------------------------------------------- timings (not a test)


def _time_ms(fn: Callable[..., object], *args: object, repeat: int = 300) -> float:

    fn(*args)
    start = time.perf_counter()
    for _ in range(repeat):
        fn(*args)
    return (time.perf_counter() - start) / repeat * 1e3


if __name__ == "__main__":
    cv2.setNumThreads(1)  # what a Ray worker with one CPU gets
    frame = jpeg(with_subtitle(texture(seed=0), ["Where are you going tonight?"]))
    a, b = _pan_pair(6, 3)
    print(f"frame_exposure      {_time_ms(frame_exposure, frame):.3f} ms")
    print(f"frame_sharpness     {_time_ms(frame_sharpness, frame):.3f} ms")
    print(f"frame_borders       {_time_ms(frame_borders, letterboxed(18, 18)):.3f} ms")
    print(f"frame_text_fraction {_time_ms(frame_text_fraction, frame):.3f} ms")
    print(f"phash64             {_time_ms(phash64, frame):.3f} ms")
    print(f"flow_magnitude      {_time_ms(flow_magnitude, a, b):.3f} ms (256x144 in, 128 working)")
    small_a, small_b = (cv2.resize(x, (160, 90), interpolation=cv2.INTER_AREA) for x in (a, b))
    print(f"flow_magnitude      {_time_ms(flow_magnitude, small_a, small_b):.3f} ms (160x90 in)")
    big_a, big_b = _pan_pair(24, 10)
    print(f"flow_magnitude      {_time_ms(flow_magnitude, big_a, big_b):.3f} ms (large pan, seeded)")
