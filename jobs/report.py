"""`vjp report`: one self-contained HTML page a data engineer would rather see than read:
the filter funnel, score histograms with their thresholds, and a contact sheet of clips."""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import av
import numpy as np

from curation.config import CurateConfig
from curation.decide import REASONS
from curation.manifest import VIDEO_SCHEMA, read_one, read_rows
from curation.pipeline import Layout

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder of `vjp curate`")
    p.add_argument("--max-thumbs", type=int, default=60)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _funnel(videos: list[dict[str, Any]], clips: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    remaining = len(clips)
    labels, values = ["candidates"], [remaining]
    for r in (*REASONS, "extract_failed"):
        n = sum(1 for c in clips if c["reason"] == r)
        if n:
            remaining -= n
            labels.append(f"- {r} ({n})")
            values.append(remaining)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1))
    ax.barh(labels[::-1], values[::-1], color="#4a7ab5")
    n_err = sum(v["status"] == "error" for v in videos)
    ax.set_title(f"clip funnel ({len(videos)} videos, {n_err} unreadable)")
    ax.set_xlabel("clips remaining")
    out = _png(fig)
    plt.close(fig)
    return out


def _histograms(clips: list[dict[str, Any]], cfg: CurateConfig) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    thresholds = cfg.filters.model_dump()
    for ax, (col, ths) in zip(axes.flat, HISTOGRAMS, strict=True):
        vals = [c[col] for c in clips if c.get(col) is not None]
        if vals and col in LOG_SCALE:
            # Motion and sharpness span orders of magnitude; thresholds sit in the low tail.
            lo = max(min(v for v in vals if v > 0) if any(v > 0 for v in vals) else 1e-6, 1e-6)
            bins = np.geomspace(lo, max(max(vals), lo * 10), 30)
            ax.hist([max(v, lo) for v in vals], bins=bins, color="#888")
            ax.set_xscale("log")
        elif vals:
            ax.hist(vals, bins=30, color="#888")
        for t in ths:
            ax.axvline(thresholds[t], color="#c33", linestyle="--")
            ax.text(
                thresholds[t], ax.get_ylim()[1] * 0.95, t, rotation=90, fontsize=7, color="#c33", va="top"
            )
        ax.set_title(col)
    fig.tight_layout()
    out = _png(fig)
    plt.close(fig)
    return out


def _data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def _thumb(path: str) -> str | None:
    """The middle frame of a clip file as a small JPEG (data URL)."""
    try:
        with av.open(path) as c:
            frames = [f for _, f in zip(range(1000), c.decode(video=0), strict=False)]
        if not frames:
            return None
        img = frames[len(frames) // 2].to_image()
        img.thumbnail((240, 240))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        return _data_url(buf.getvalue())
    except (av.error.FFmpegError, OSError):
        return None


def _captions(out: str) -> dict[str, str]:
    """Japanese captions when the caption step has run (first ok caption per clip)."""
    rows = read_rows(os.path.join(out, "manifests", "captions"))
    caps: dict[str, str] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("caption"):
            caps.setdefault(r["clip_id"], r["caption"])
    return caps


def write_report(out: str, max_thumbs: int = 60) -> str:
    layout = Layout(out)
    videos = read_rows(layout.videos, VIDEO_SCHEMA)
    clips = read_one(layout.clips_manifest) if os.path.exists(layout.clips_manifest) else []
    cfg_path = os.path.join(out, "manifests", "config.json")
    cfg = (
        CurateConfig.model_validate_json(Path(cfg_path).read_text())
        if os.path.exists(cfg_path)
        else CurateConfig()
    )
    captions = _captions(out)
    thumbs = {r["clip_id"]: r["jpeg"] for r in read_rows(layout.thumbs)}
    rng = np.random.default_rng(0)
    cards = []
    for status in ("kept", "rejected"):
        pool = [c for c in clips if c["status"] == status]
        pick = sorted(rng.choice(len(pool), min(len(pool), max_thumbs // 2), replace=False)) if pool else []
        for i in pick:
            c = pool[int(i)]
            if c["clip_id"] in thumbs:
                src: str | None = _data_url(thumbs[c["clip_id"]])
            else:  # runs from before thumbnails: decode the clip file when there is one
                folder = layout.clips if status == "kept" else layout.staging
                src = _thumb(os.path.join(folder, f"{c['clip_id']}.mp4"))
            img = f'<img src="{src}">' if src else '<div class="noimg">not extracted</div>'
            cap = captions.get(c["clip_id"]) or c.get("source_caption") or ""
            cards.append(
                f'<div class="card {status}">{img}<b>{html.escape(c["clip_id"])}</b><br>'
                f"{status}{': ' + html.escape(c['reason']) if c['reason'] else ''} · {c['duration_s']:.1f}s"
                f'<br><span class="cap">{html.escape(cap[:200])}</span></div>'
            )
    errors = "".join(
        f"<tr><td>{html.escape(v['uri'])}</td><td>{html.escape(v['error_stage'] or '')}</td>"
        f"<td>{html.escape(v['error'] or '')}</td></tr>"
        for v in videos
        if v["status"] == "error"
    )
    summary_path = os.path.join(out, "manifests", "summary.json")
    summary = json.loads(Path(summary_path).read_text()) if os.path.exists(summary_path) else {}
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>videojp curation report</title>
<style>body{{font-family:sans-serif;margin:20px}} .grid{{display:flex;flex-wrap:wrap;gap:8px}}
.card{{width:250px;font-size:11px;border:2px solid #ccc;padding:4px}} .kept{{border-color:#3a3}}
.rejected{{border-color:#c33}} .card img{{width:240px}} .noimg{{height:60px;background:#eee}}
.cap{{color:#555}} td{{border-bottom:1px solid #ddd;padding:2px 6px;font-size:12px}}</style></head><body>
<h1>Curation report</h1><pre>{html.escape(json.dumps(summary, indent=1, sort_keys=True))}</pre>
<h2>Filter funnel</h2><img src="data:image/png;base64,{_funnel(videos, clips)}">
<h2>Scores and thresholds</h2><img src="data:image/png;base64,{_histograms(clips, cfg)}">
<h2>Contact sheet</h2><div class="grid">{"".join(cards)}</div>
<h2>Unreadable videos</h2><table><tr><th>video</th><th>stage</th><th>reason</th></tr>{errors}</table>
</body></html>"""
    path = os.path.join(out, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def run(args: argparse.Namespace) -> int:
    print(write_report(args.out, args.max_thumbs))
    return 0
