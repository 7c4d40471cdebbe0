"""The report's plots (matplotlib, Agg), each returned as a PNG data URL. Labels may be Japanese:
every figure is drawn under report_fonts.plot_rc()."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from curation.decide import REASONS
from jobs.report_fonts import plot_rc
from jobs.report_media import data_url

# (score column, threshold fields of FilterConfig drawn on its histogram)
HISTOGRAMS = (
    ("motion", ("static_motion_max", "shaky_motion_min")),
    ("luma_mean", ("black_luma_max", "dark_luma_max", "washed_luma_min")),
    ("sharpness", ("blur_min",)),
    ("text_fraction", ("text_fraction_max",)),
    ("border_fraction", ("border_fraction_max",)),
    ("duration_s", ()),
)
LOG_SCALE = ("motion", "sharpness")
BLUE, GREY, RED, GREEN = "#4a7ab5", "#888888", "#cc3333", "#33aa33"


def _draw(make: Callable[[Any], Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(plot_rc()):
        fig = make(plt)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
    return data_url(buf.getvalue(), "image/png")


def _threshold(ax: Any, x: float, label: str) -> None:
    ax.axvline(x, color=RED, linestyle="--")
    ax.text(x, ax.get_ylim()[1] * 0.95, label, rotation=90, fontsize=7, color=RED, va="top")


def funnel(videos: list[dict[str, Any]], clips: list[dict[str, Any]]) -> str:
    remaining = len(clips)
    labels, values = ["candidates"], [remaining]
    for r in (*REASONS, "extract_failed"):
        n = sum(1 for c in clips if c["reason"] == r)
        if n:
            remaining -= n
            labels.append(f"- {r} ({n})")
            values.append(remaining)

    def make(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1))
        ax.barh(labels[::-1], values[::-1], color=BLUE)
        n_err = sum(v["status"] == "error" for v in videos)
        ax.set_title(f"clip funnel ({len(videos)} videos, {n_err} unreadable)")
        ax.set_xlabel("clips remaining")
        return fig

    return _draw(make)


def score_histograms(clips: list[dict[str, Any]], thresholds: dict[str, float]) -> str:
    def make(plt: Any) -> Any:
        fig, axes = plt.subplots(2, 3, figsize=(12, 6))
        for ax, (col, ths) in zip(axes.flat, HISTOGRAMS, strict=True):
            vals = [c[col] for c in clips if c.get(col) is not None]
            if vals and col in LOG_SCALE:
                # Motion and sharpness span orders of magnitude; thresholds sit in the low tail.
                pos = [v for v in vals if v > 0]
                lo = max(min(pos) if pos else 1e-6, 1e-6)
                bins = np.geomspace(lo, max(max(vals), lo * 10), 30)
                ax.hist([max(v, lo) for v in vals], bins=bins, color=GREY)
                ax.set_xscale("log")
            elif vals:
                ax.hist(vals, bins=30, color=GREY)
            for t in ths:
                _threshold(ax, thresholds[t], t)
            ax.set_title(col)
        fig.tight_layout()
        return fig

    return _draw(make)


def caption_histograms(captions: list[dict[str, Any]], caption_cfg: Any) -> str:
    """Caption length per type with its QA bounds, and the Japanese share with its minimum."""
    types = sorted({c["caption_type"] for c in captions})

    def make(plt: Any) -> Any:
        fig, axes = plt.subplots(1, len(types) + 1, figsize=(4.2 * (len(types) + 1), 3.4))
        for ax, ctype in zip(axes, types, strict=False):
            for status, color in (("ok", GREEN), ("rejected", RED)):
                vals = [
                    len(c["caption"])
                    for c in captions
                    if c["caption_type"] == ctype and c["status"] == status and c["caption"]
                ]
                if vals:
                    ax.hist(vals, bins=20, color=color, alpha=0.7, label=f"{status} ({len(vals)})")
            ct = caption_cfg.caption_types.get(ctype)
            if ct is not None:
                _threshold(ax, ct.min_chars, "min_chars")
                _threshold(ax, ct.max_chars, "max_chars")
            ax.set_title(f"{ctype} キャプションの長さ (文字)")
            ax.legend(fontsize=8)
        ax = axes[-1]
        vals = [c["japanese_ratio"] for c in captions if c.get("japanese_ratio") is not None]
        ax.hist(vals, bins=20, range=(0, 1), color=BLUE)
        _threshold(ax, caption_cfg.qa.min_japanese_ratio, "min_japanese_ratio")
        ax.set_title("日本語の割合 (japanese_ratio)")
        fig.tight_layout()
        return fig

    return _draw(make)


def per_source(videos: list[dict[str, Any]], clips: list[dict[str, Any]]) -> str:
    sources = sorted({v.get("source") or "?" for v in videos} | {c.get("source") or "?" for c in clips})
    vids = Counter(v.get("source") or "?" for v in videos)
    kept = Counter(c.get("source") or "?" for c in clips if c["status"] == "kept")
    rejected = Counter(c.get("source") or "?" for c in clips if c["status"] != "kept")

    def make(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(sources) + 2), 3))
        x = np.arange(len(sources))
        for i, (label, counts, color) in enumerate(
            (("videos", vids, BLUE), ("clips kept", kept, GREEN), ("clips rejected", rejected, RED))
        ):
            ax.bar(x + (i - 1) * 0.27, [counts[s] for s in sources], 0.27, label=label, color=color)
        ax.set_xticks(x, sources)
        ax.set_title("per source")
        ax.legend(fontsize=8)
        return fig

    return _draw(make)


def shard_sizes(stages: list[Any]) -> str:
    """Bytes and samples of every shard, one bar per shard, per stage and split."""
    bars = []
    for st in stages:
        for split, index in st.splits.items():
            for sh in index.shards:
                bars.append((f"{st.kind}/{st.name}/{split}/{sh.name}", sh.bytes, sh.samples))

    def make(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(bars) + 1.2))
        ax.barh([b[0] for b in bars][::-1], [b[1] / 1e6 for b in bars][::-1], color=BLUE)
        for y, b in enumerate(bars[::-1]):
            ax.text(b[1] / 1e6, y, f" {b[2]} samples", va="center", fontsize=7)
        ax.set_xlabel("MB")
        ax.set_title("shard sizes")
        return fig

    return _draw(make)


def loss_curve(metrics: list[dict[str, Any]]) -> str:
    steps = [m["step"] for m in metrics if m.get("loss") is not None and not m.get("skipped")]
    loss = [m["loss"] for m in metrics if m.get("loss") is not None and not m.get("skipped")]

    def make(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.plot(steps, loss, marker="o" if len(steps) < 50 else None, color=BLUE, label="loss")
        if len(loss) >= 20:
            k = max(5, len(loss) // 20)
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, color=RED, label=f"mean of {k}")
        ax.set_xlabel("step")
        ax.set_ylabel("flow-matching loss")
        ax.set_title("training loss")
        ax.legend(fontsize=8)
        return fig

    return _draw(make)
