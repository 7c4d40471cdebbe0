"""`vjp report OUT`: one self-contained HTML page for a whole run (also written at the end of
`vjp run` and `vjp curate`): a summary table first, then the filter funnel, score histograms with
their thresholds, caption lengths and Japanese share, counts per source, shard sizes, a contact
sheet of clips (several frames each) beside their Japanese captions, and, after training, the
loss curve and generated videos. Images are data URLs; the Japanese glyphs the captions need are
embedded as a font subset, so the page renders the same on any machine.

OUT may be an object-store URL (s3://bucket/prefix): the report reads the manifests and results
there and writes OUT/report.html there too (one object: thumbnails and plots are inside the page),
or into a local folder with --report-dir. The store's endpoint and credentials come from the
environment (FSSPEC_S3_ENDPOINT_URL, AWS_*), as for every other command."""

from __future__ import annotations

import argparse
import html
import json
import os
from collections import Counter
from typing import Any

from curation import atomic
from jobs import report_plots as plots
from jobs.report_data import RunData, read_run
from jobs.report_fonts import CSS_FAMILIES, font_face_css
from jobs.report_media import animated_url, clip_strip_url, data_url, read_video, video_strip_url

CAPTION_ORDER = ("short", "dense")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", nargs="?", default=None, help="output folder of `vjp run` or `vjp curate`")
    p.add_argument("--out", default=None, help="the same, as a flag (older spelling)")
    p.add_argument("--max-clips", type=int, default=24, help="clips on the contact sheet")
    p.add_argument(
        "--report-dir",
        default=None,
        help="write report.html into this folder (local or URL) instead of OUT; e.g. a local copy "
        "of the report of a run in a bucket",
    )


def esc(x: Any) -> str:
    return html.escape(str(x))


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "–"


def _caption_reason(reason: str | None) -> str:
    from jobs.run import caption_reason

    return caption_reason(reason)


# ---- sections ---------------------------------------------------------------------------------
def summary_rows(d: RunData) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    n_err = sum(v["status"] == "error" for v in d.videos)
    src_s = sum(v.get("duration_s") or 0 for v in d.videos if v["status"] != "error")
    rows.append(("videos", f"{len(d.videos)} ({n_err} unreadable), {src_s / 3600:.3f} h of source"))
    kept = [c for c in d.clips if c["status"] == "kept"]
    kept_s = sum(c["duration_s"] for c in kept)
    rejected = Counter(c["reason"] for c in d.clips if c["status"] != "kept")
    rows.append(
        (
            "clips",
            f"{len(d.clips)} candidates: {len(kept)} kept, {sum(rejected.values())} rejected "
            f"({_reasons(dict(rejected))})",
        )
    )
    rows.append(("kept hours", f"{kept_s / 3600:.3f} h ({kept_s:.1f} s)"))
    if d.captions:
        st = Counter(c["status"] for c in d.captions)
        rej = Counter(_caption_reason(c["reason"]) for c in d.captions if c["status"] == "rejected")
        types = sorted({c["caption_type"] for c in d.captions})
        rows.append(
            (
                "captions",
                f"{st.get('ok', 0)} ok, {st.get('rejected', 0)} rejected ({_reasons(dict(rej))}), "
                f"{st.get('error', 0)} errors; types {', '.join(types)}",
            )
        )
    for st in d.stages:
        parts = [f"{split} {ix.samples}" for split, ix in st.splits.items()]
        n_sh = sum(len(ix.shards) for ix in st.splits.values())
        mb = sum(ix.bytes for ix in st.splits.values()) / 1e6
        label = "samples" if st.kind == "shards" else "latent samples"
        left = Counter(r["reason"] for r in st.samples if r.get("reason"))
        extra = f"; left out: {_reasons(dict(left))}" if st.kind == "shards" else ""
        rows.append((f"{label} ({st.name})", f"{', '.join(parts)}{extra}"))
        rows.append((f"{st.kind} ({st.name})", f"{n_sh} tars, {mb:.1f} MB"))
    if d.train_summary or d.metrics:
        s = d.train_summary or {}
        steps = s.get("steps", d.metrics[-1]["step"] if d.metrics else 0)
        loss = s.get("final_loss", d.metrics[-1]["loss"] if d.metrics else None)
        loss_s = f"{loss:.4f}" if isinstance(loss, float) else "–"
        rows.append(
            ("training", f"{steps} steps, final loss {loss_s}, checkpoint {s.get('checkpoint') or '–'}")
        )
    if d.steps:
        total = sum(v.get("wall_s", 0) for v in d.steps.values())
        rows.append(
            (
                "time per step",
                ", ".join(
                    f"{k} {v.get('wall_s', 0):.0f} s ({100 * v.get('wall_s', 0) / total:.0f}%)"
                    for k, v in d.steps.items()
                    if total
                ),
            )
        )
    return rows


def _caption_block(caps: dict[str, dict[str, Any]], source_caption: str | None) -> str:
    out = []
    for ctype in sorted(caps, key=lambda t: (CAPTION_ORDER.index(t) if t in CAPTION_ORDER else 9, t)):
        c = caps[ctype]
        status = c["status"] if c["status"] == "ok" else f"{c['status']}: {_caption_reason(c['reason'])}"
        text = c.get("caption") or ""
        out.append(
            f'<div class="capline"><span class="tag {esc(c["status"])}">{esc(ctype)} · {esc(status)}</span>'
            f'<span class="ja" lang="ja">{esc(text)}</span></div>'
        )
    if source_caption:
        out.append(
            f'<div class="capline"><span class="tag">source</span><span>{esc(source_caption)}</span></div>'
        )
    return "".join(out) or '<div class="capline muted">no caption</div>'


def contact_sheet(d: RunData, max_clips: int) -> tuple[str, list[str]]:
    """Cards of kept clips (frames from the clip file) and some rejected ones (their stored
    thumbnail when the clip was never extracted); returns (html, caption texts)."""
    caps: dict[str, dict[str, dict[str, Any]]] = {}
    for c in d.captions:
        caps.setdefault(c["clip_id"], {})[c["caption_type"]] = c
    kept = sorted((c for c in d.clips if c["status"] == "kept"), key=lambda c: c["clip_id"])
    rejected = sorted(
        (c for c in d.clips if c["status"] != "kept"), key=lambda c: (c["reason"] or "", c["clip_id"])
    )
    n_rej = min(len(rejected), max(max_clips // 4, max_clips - len(kept)))
    chosen = kept[: max_clips - n_rej] + rejected[:n_rej]
    cards, texts = [], []
    for c in chosen:
        folder = "clips" if c["status"] == "kept" else "staging"
        path = atomic.join(d.out, folder, f"{c['clip_id']}.mp4")
        src = clip_strip_url(path) if atomic.exists(path) else None
        if src is None and c["clip_id"] in d.thumbs:
            src = data_url(d.thumbs[c["clip_id"]], "image/jpeg")
        img = (
            f'<img class="strip" alt="{esc(c["clip_id"])}" src="{src}">'
            if src
            else '<div class="noimg">no frames</div>'
        )
        clip_caps = caps.get(c["clip_id"], {})
        texts += [x["caption"] for x in clip_caps.values() if x.get("caption")]
        why = f": {esc(c['reason'])}" if c.get("reason") else ""
        cards.append(
            f'<div class="card {esc(c["status"])}">{img}<div class="meta"><b>{esc(c["clip_id"])}</b> · '
            f"{esc(c.get('source') or '')} · {c['duration_s']:.1f} s · {esc(c['status'])}{why}</div>"
            f"{_caption_block(clip_caps, c.get('source_caption'))}</div>"
        )
    return "".join(cards), texts


def samples_section(d: RunData) -> tuple[str, list[str]]:
    cards, texts = [], []
    for s in d.samples:
        try:
            video = read_video(s["path"])
        except Exception as e:  # one unreadable sample must not cost the report
            cards.append(f'<div class="sample">{esc(s["file"])}: unreadable ({esc(type(e).__name__)})</div>')
            continue
        fps = float(s.get("fps") or 8)
        texts.append(s["prompt"])
        cards.append(
            f'<div class="sample"><img class="anim" alt="sample {esc(s["file"])}" '
            f'src="{animated_url(video, fps)}">'
            f'<img class="strip" alt="frames {esc(s["file"])}" src="{video_strip_url(video)}">'
            f'<div class="meta">step {esc(s.get("step"))} · seed {esc(s.get("seed"))} · '
            f"{video.shape[0]} frames {video.shape[2]}×{video.shape[1]}</div>"
            f'<div class="ja" lang="ja">{esc(s["prompt"])}</div></div>'
        )
    return "".join(cards), texts


EVAL_DIR = "eval"


def eval_section(out: str) -> tuple[str, list[str]]:
    """`vjp eval --out OUT/eval`'s section (FVD, settings, generated beside real) and its captions."""
    folder = atomic.join(out, EVAL_DIR)
    if not atomic.exists(atomic.join(folder, "metrics.json")):
        return "", []
    if not atomic.is_url(folder):
        return _eval_section(folder)
    import tempfile

    from training.data.store import download

    with tempfile.TemporaryDirectory(prefix="vjp-eval-") as tmp:  # the section reads a local folder
        download(folder, tmp)
        return _eval_section(tmp)


def _eval_section(folder: str) -> tuple[str, list[str]]:
    from training.eval.report import render_section

    prompts = os.path.join(folder, "prompts.jsonl")
    texts: list[str] = []
    if os.path.exists(prompts):
        with open(prompts, encoding="utf-8") as f:
            texts = [json.loads(line)["prompt"] for line in f if line.strip()]
    # The section's captions take the report's embedded Japanese font.
    return render_section(folder).replace('class="cap"', 'class="cap ja" lang="ja"'), texts


STYLE = """body{font-family:sans-serif;margin:20px;color:#222} h2{margin-top:28px}
table.summary td{padding:3px 10px;border-bottom:1px solid #ddd;font-size:13px;vertical-align:top}
table.summary td:first-child{font-weight:bold;white-space:nowrap}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{width:420px;font-size:12px;border:2px solid #ccc;padding:5px}
.card.kept{border-color:#3a3} .card.rejected{border-color:#c33} .strip{max-width:100%;display:block}
.noimg{height:60px;background:#eee;color:#888;padding:4px} .meta{color:#555;margin:3px 0;font-size:11px}
.ja{font-family:FAMILIES;font-size:14px;line-height:1.5} .capline{margin:3px 0}
.tag{display:inline-block;font-size:10px;border-radius:3px;padding:0 4px;margin-right:5px;background:#eee}
.tag.ok{background:#d8f0d8} .tag.rejected{background:#f5d5d5} .tag.error{background:#f5e5b5}
.muted{color:#999}
.sample{width:430px;border:1px solid #ccc;padding:5px} .anim{height:128px;margin-right:6px}
td.err{font-size:12px;border-bottom:1px solid #ddd;padding:2px 6px}""".replace("FAMILIES", CSS_FAMILIES)


def render(d: RunData, max_clips: int = 24) -> str:
    summary = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in summary_rows(d))
    where = d.out if atomic.is_url(d.out) else os.path.abspath(d.out)
    parts = [f'<h1>videojp run report</h1><p class="meta">{esc(where)}</p>']
    parts.append(f'<h2 id="summary">Summary</h2><table class="summary">{summary}</table>')
    ja_texts: list[str] = []
    if d.clips:
        thresholds = d.curate_cfg.filters.model_dump()
        parts.append(
            f'<h2 id="funnel">Filter funnel</h2><img alt="funnel" src="{plots.funnel(d.videos, d.clips)}">'
        )
        parts.append(
            f'<h2 id="scores">Scores and thresholds</h2>'
            f'<img alt="score histograms" src="{plots.score_histograms(d.clips, thresholds)}">'
        )
    if d.captions:
        parts.append(
            f'<h2 id="captions">Captions: length and Japanese share</h2>'
            f'<img alt="caption histograms" src="{plots.caption_histograms(d.captions, d.caption_cfg)}">'
        )
    if d.videos or d.clips:
        parts.append(
            f'<h2 id="sources">Per source</h2>'
            f'<img alt="per source" src="{plots.per_source(d.videos, d.clips)}">'
        )
    if any(st.splits for st in d.stages):
        parts.append(
            f'<h2 id="shards">Shard sizes</h2><img alt="shard sizes" src="{plots.shard_sizes(d.stages)}">'
        )
    if d.clips:
        cards, texts = contact_sheet(d, max_clips)
        ja_texts += texts
        parts.append(f'<h2 id="contact">Contact sheet</h2><div class="grid">{cards}</div>')
    if d.metrics:
        parts.append(
            f'<h2 id="loss">Training loss</h2><img alt="loss curve" src="{plots.loss_curve(d.metrics)}">'
        )
    if d.samples:
        cards, texts = samples_section(d)
        ja_texts += texts
        parts.append(f'<h2 id="samples">Generated samples</h2><div class="grid">{cards}</div>')
    eval_html, eval_texts = eval_section(d.out)
    ja_texts += eval_texts
    if eval_html:
        parts.append(eval_html)
    errors = "".join(
        f'<tr><td class="err">{esc(v["uri"])}</td><td class="err">{esc(v.get("error_stage") or "")}</td>'
        f'<td class="err">{esc(v.get("error") or "")}</td></tr>'
        for v in d.videos
        if v["status"] == "error"
    )
    if errors:
        parts.append(
            '<h2 id="errors">Unreadable videos</h2><table>'
            f"<tr><th>video</th><th>stage</th><th>reason</th></tr>{errors}</table>"
        )
    font = font_face_css("".join(ja_texts)) if ja_texts else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>videojp run report</title>'
        f"<style>{font}\n{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )


def write_report(
    out: str, max_clips: int = 24, report_dir: str | None = None, train_folder: str | None = None
) -> str:
    """Render the report of OUT into REPORT_DIR/report.html (default OUT; either may be a URL):
    one object, written whole. Returns its path."""
    page = render(read_run(out, train_folder), max_clips)
    path = atomic.join(report_dir or out, "report.html")
    with atomic.atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def run(args: argparse.Namespace) -> int:
    out = args.out_dir or args.out
    if not out:
        raise SystemExit("vjp report: give the output folder (vjp report OUT)")
    if not atomic.isdir(out):
        print(f"vjp report: {out} is not a folder (or a prefix with objects)", flush=True)
        return 2
    print(write_report(out, args.max_clips, args.report_dir))
    return 0
