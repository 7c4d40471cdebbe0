"""Caption QA and post-processing on real Japanese, Chinese, English, repetitive and refusal text."""

from __future__ import annotations

import pytest

from captioning.config import CaptionConfig, CaptionTypeConfig
from captioning.qa import evaluate, postprocess, repetition_score, script_counts

CFG = CaptionConfig()
SHORT = CFG.caption_types["short"]
DENSE = CFG.caption_types["dense"]

JA_SHORT = "夕暮れの海岸沿いの道を赤いスポーツカーが走り抜け、カメラは横から並走して追いかけている。"
JA_DENSE = (
    "都市部の空撮映像です。高層ビルが立ち並ぶ中心街を、ドローンがゆっくりと前進しながら撮影している。"
    "ビルの間には幅の広い川が流れ、夕日が水面にオレンジ色に反射している。"
    "道路には多くの車が行き交い、街の灯りが少しずつ点り始める。"
    "カメラは一定の高度を保ったまま滑らかに移動し、映像は実写で暖かい色調に仕上がっている。"
)
ZH_DENSE = (
    "这是一段城市的航拍视频。无人机在高楼林立的市中心缓慢前进，河流从建筑之间穿过，"
    "夕阳在水面上反射出橙色的光芒。道路上车辆川流不息，城市的灯光逐渐亮起。"
)
EN_SHORT = "A red sports car drives along a coastal road at sunset while the camera tracks it from the side."


def test_script_counts_japanese() -> None:
    c = script_counts("赤い車が走る。カメラ")
    assert c.hiragana == 3 and c.katakana == 3 and c.kanji == 3 and c.latin == 0


def test_real_japanese_passes() -> None:
    for text, ct in ((JA_SHORT, SHORT), (JA_DENSE, DENSE)):
        qa = evaluate(text, "stop", ct, CFG.qa)
        assert qa.passed, qa.reasons
        assert qa.has_kana and qa.japanese_ratio > 0.95 and qa.latin_ratio == 0.0
        assert qa.repetition < 0.2


def test_chinese_is_rejected_for_missing_kana() -> None:
    qa = evaluate(ZH_DENSE, "stop", DENSE, CFG.qa)
    assert not qa.has_kana
    assert qa.japanese_ratio == 1.0  # all Han characters: only the kana check can tell
    assert "no_kana" in qa.reasons
    # "无法" (simplified Chinese for "unable") is not in this text: the rejection is about script.
    assert not qa.refusal


def test_english_is_rejected() -> None:
    qa = evaluate(EN_SHORT, "stop", SHORT, CFG.qa)
    assert qa.latin_ratio > 0.9 and qa.japanese_ratio == 0.0
    assert any(r.startswith("japanese_ratio<") for r in qa.reasons)
    assert any(r.startswith("latin_ratio>") for r in qa.reasons)


def test_some_latin_words_are_tolerated() -> None:
    text = "東京タワーの前をSUVがゆっくり走り、カメラは固定されたまま夜景を映している。"
    qa = evaluate(text, "stop", SHORT, CFG.qa)
    assert qa.passed, qa.reasons
    assert 0 < qa.latin_ratio < CFG.qa.max_latin_ratio


@pytest.mark.parametrize(
    "text",
    [
        "赤い車が走っている。" * 8,
        "赤い車が走っている。青い空が広がっている。赤い車が走っている。青い空が広がっている。赤い車が走っている。",
        "カメラがゆっくりとゆっくりとゆっくりとゆっくりとゆっくりとゆっくりとゆっくりとゆっくりと動く。",
    ],
)
def test_repetition_is_rejected(text: str) -> None:
    qa = evaluate(text, "stop", DENSE, CFG.qa)
    assert qa.repetition > CFG.qa.max_repetition
    assert any(r.startswith("repetition>") for r in qa.reasons)


def test_repetition_score_bounds() -> None:
    assert repetition_score("") == 0.0
    assert repetition_score(JA_DENSE) < 0.15
    assert repetition_score("あいうえお" * 40) > 0.9


@pytest.mark.parametrize(
    "text",
    [
        "申し訳ありませんが、この動画の内容を確認することはできかねます。",
        "動画を見ることができませんので、説明できません。",
        "I'm sorry, but I can't view videos. Please describe it instead.",
        "As an AI language model, I cannot watch videos.",
        "AIとして、映像の内容をお伝えすることはお手伝いできません。",
        "抱歉，我无法观看这个视频。",
    ],
)
def test_refusals_are_rejected(text: str) -> None:
    qa = evaluate(text, "stop", DENSE, CFG.qa)
    assert qa.refusal
    assert any(r.startswith("refusal:") for r in qa.reasons)


def test_truncation_and_length_bounds() -> None:
    qa = evaluate(JA_SHORT, "length", SHORT, CFG.qa)
    assert qa.truncated and "truncated" in qa.reasons
    tiny = CaptionTypeConfig(prompt_id="short_ja", max_tokens=8, min_chars=200, max_chars=300)
    assert any(r.startswith("too_short") for r in evaluate(JA_SHORT, "stop", tiny, CFG.qa).reasons)
    narrow = CaptionTypeConfig(prompt_id="short_ja", max_tokens=8, min_chars=1, max_chars=20)
    assert any(r.startswith("too_long") for r in evaluate(JA_SHORT, "stop", narrow, CFG.qa).reasons)


def test_empty_and_garbled() -> None:
    assert "empty" in evaluate("   ", "stop", SHORT, CFG.qa).reasons
    qa = evaluate("赤い車が\ufffd\x11走っている様子を映した映像です。", "stop", SHORT, CFG.qa)
    assert "garbled" in qa.reasons


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("この画像は、都市部の空撮写真です。", "都市部の空撮写真です。"),
        ("この動画では、女性が台所で野菜を切っている。", "女性が台所で野菜を切っている。"),
        ("この映像は夕暮れの海を映している。", "夕暮れの海を映している。"),
        ("この動画には猫が二匹映っている。", "猫が二匹映っている。"),
        ("キャプション：この動画は、子どもが公園で遊ぶ様子。", "子どもが公園で遊ぶ様子。"),
        ("「赤い車が走る。」", "赤い車が走る。"),
        ("赤い車が走る。この動画は短い。", "赤い車が走る。この動画は短い。"),  # only at the start
    ],
)
def test_postprocess_strips_openers(raw: str, want: str) -> None:
    assert postprocess(raw, CFG.postprocess) == want


def test_postprocess_can_be_switched_off() -> None:
    pp = CFG.postprocess.model_copy(update={"strip_openers": False})
    assert postprocess("この動画は、海の映像です。", pp) == "この動画は、海の映像です。"


def test_postprocess_keeps_text_when_opener_is_all() -> None:
    assert postprocess("この動画は", CFG.postprocess) == "この動画は"
