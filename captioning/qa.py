"""Caption post-processing and QA: pure functions over one string.

Every score is stored in the manifest; `evaluate` turns them into pass/fail with reasons so that a
failing caption is retried and, in the end, kept as status=rejected with the first reason.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field

from captioning.config import CaptionTypeConfig, PostprocessConfig, QAConfig


def _is_hiragana(ch: str) -> bool:
    return "\u3041" <= ch <= "\u309f"


def _is_katakana(ch: str) -> bool:
    # Katakana, phonetic extensions, half-width katakana; the long-vowel mark ー is in U+30FC.
    return "\u30a0" <= ch <= "\u30ff" or "\u31f0" <= ch <= "\u31ff" or "\uff66" <= ch <= "\uff9d"


def _is_kanji(ch: str) -> bool:
    return (
        "\u4e00" <= ch <= "\u9fff"
        or "\u3400" <= ch <= "\u4dbf"
        or "\uf900" <= ch <= "\ufaff"
        or ch in "々〆ヶ"
    )


def _is_latin(ch: str) -> bool:
    return (
        ("a" <= ch <= "z")
        or ("A" <= ch <= "Z")
        or ("\uff21" <= ch <= "\uff3a")
        or ("\uff41" <= ch <= "\uff5a")
    )


def _is_letter(ch: str) -> bool:
    # Kana marks such as ー and ゛ are not category L*, count them as letters of the script.
    return ch.isalpha() or _is_hiragana(ch) or _is_katakana(ch) or _is_kanji(ch)


@dataclass(frozen=True)
class ScriptCounts:
    hiragana: int
    katakana: int
    kanji: int
    latin: int
    letters: int

    @property
    def kana(self) -> int:
        return self.hiragana + self.katakana


def script_counts(text: str) -> ScriptCounts:
    h = k = j = lat = letters = 0
    for ch in text:
        if not _is_letter(ch):
            continue
        letters += 1
        if _is_hiragana(ch):
            h += 1
        elif _is_katakana(ch):
            k += 1
        elif _is_kanji(ch):
            j += 1
        elif _is_latin(ch):
            lat += 1
    return ScriptCounts(h, k, j, lat, letters)


_SENTENCE_SPLIT = re.compile(r"(?<=[。！？!?\.])\s*|\n+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text) if s and s.strip()]


def repetition_score(text: str, n: int = 6) -> float:
    """0 = no repetition, towards 1 = degenerate loop.

    Max of (a) the share of character n-grams that repeat an earlier one (Japanese has no spaces,
    so characters are the unit), and (b) the share of sentences that duplicate an earlier one.
    Normal Japanese prose of a few sentences scores well under 0.2.
    """
    compact = re.sub(r"\s+", "", text)
    ngram_rep = 0.0
    if len(compact) >= n + 1:
        grams = [compact[i : i + n] for i in range(len(compact) - n + 1)]
        ngram_rep = 1.0 - len(set(grams)) / len(grams)
    sentences = [re.sub(r"[\s。！？!?\.、,]", "", s) for s in split_sentences(text)]
    sentences = [s for s in sentences if s]
    sent_rep = 0.0
    if len(sentences) >= 2:
        counts = Counter(sentences)
        sent_rep = sum(c - 1 for c in counts.values()) / len(sentences)
    return round(max(ngram_rep, sent_rep), 4)


def garbled_chars(text: str) -> int:
    """Replacement characters and control characters (other than newline/tab): broken decoding."""
    return sum(
        1
        for ch in text
        if ch == "\ufffd" or (unicodedata.category(ch) in ("Cc", "Co", "Cs") and ch not in "\n\t")
    )


def find_refusal(text: str, patterns: list[str]) -> str | None:
    low = text.lower()
    for pat in patterns:
        if pat.lower() in low:
            return pat
    return None


def _strip_re(prefixes: list[str]) -> re.Pattern[str] | None:
    if not prefixes:
        return None
    alts = "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
    return re.compile(rf"^(?:{alts})[、，,：:\s]*")


_QUOTES = [("「", "」"), ("『", "』"), ('"', '"'), ("“", "”"), ("'", "'")]


def postprocess(text: str, cfg: PostprocessConfig) -> str:
    """Normalise (NFKC width of ASCII only), drop labels, wrapping quotes and boilerplate openers."""
    out = text.strip()
    # Models sometimes answer 'キャプション：...' or wrap the answer in quotes.
    if cfg.strip_labels:
        labels = "|".join(re.escape(lbl) for lbl in cfg.strip_labels)
        out = re.sub(rf"^(?:{labels})\s*[：:]\s*", "", out, flags=re.IGNORECASE).strip()
    for left, right in _QUOTES:
        if len(out) >= 2 and out.startswith(left) and out.endswith(right) and out.count(left) == 1:
            out = out[len(left) : -len(right)].strip()
    if cfg.strip_openers:
        pat = _strip_re(cfg.openers)
        if pat is not None:
            stripped = pat.sub("", out, count=1).strip()
            # Keep the original when stripping would leave nothing meaningful.
            if len(stripped) >= 2:
                out = stripped
    return out


@dataclass
class QAResult:
    japanese_ratio: float
    kana_ratio: float
    has_kana: bool
    latin_ratio: float
    length: int
    repetition: float
    refusal: bool
    truncated: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def scores(self) -> dict[str, float | int | bool]:
        d = asdict(self)
        d.pop("reasons")
        return d


def evaluate(text: str, finish_reason: str | None, ct: CaptionTypeConfig, qa: QAConfig) -> QAResult:
    """Score one post-processed caption. Reasons are ordered from most to least telling."""
    norm = unicodedata.normalize("NFKC", text)
    c = script_counts(norm)
    letters = max(c.letters, 1)
    japanese = c.kana + c.kanji
    jp_ratio = round(japanese / letters, 4) if c.letters else 0.0
    kana_ratio = round(c.kana / japanese, 4) if japanese else 0.0
    latin_ratio = round(c.latin / letters, 4) if c.letters else 0.0
    length = len(text.strip())
    rep = repetition_score(norm, qa.repetition_ngram)
    refusal_hit = find_refusal(norm, qa.refusal_patterns)
    truncated = finish_reason == "length"

    reasons: list[str] = []
    if not text.strip():
        reasons.append("empty")
    if garbled_chars(text):
        reasons.append("garbled")
    if refusal_hit is not None:
        reasons.append(f"refusal:{refusal_hit}")
    if truncated:
        reasons.append("truncated")
    if text.strip():
        if jp_ratio < qa.min_japanese_ratio:
            reasons.append(f"japanese_ratio<{qa.min_japanese_ratio}")
        if japanese and kana_ratio < qa.min_kana_ratio:
            # Kanji without kana reads as Chinese, the usual drift of Qwen models.
            reasons.append("no_kana" if c.kana == 0 else f"kana_ratio<{qa.min_kana_ratio}")
        if latin_ratio > qa.max_latin_ratio:
            reasons.append(f"latin_ratio>{qa.max_latin_ratio}")
        if rep > qa.max_repetition:
            reasons.append(f"repetition>{qa.max_repetition}")
        # Characters, not bytes or tokens: a Japanese character carries 2-3 Latin letters' worth, so
        # minimums are set for Japanese (dense: 40 = two full sentences; see CaptionConfig).
        if length < ct.min_chars:
            reasons.append(f"too_short<{ct.min_chars}")
        if length > ct.max_chars:
            reasons.append(f"too_long>{ct.max_chars}")
    return QAResult(
        japanese_ratio=jp_ratio,
        kana_ratio=kana_ratio,
        has_kana=c.kana > 0,
        latin_ratio=latin_ratio,
        length=length,
        repetition=rep,
        refusal=refusal_hit is not None,
        truncated=truncated,
        reasons=reasons,
    )
