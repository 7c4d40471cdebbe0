"""The evaluation's report section: metrics, then generated videos beside the real ones as frame strips.

    strips are written while `vjp eval` streams the videos: EVAL/strips/{generated,real,baseline}/<key>.jpg
    render_section(EVAL) -> str     a self-contained HTML fragment (<section>, images inline)
    write_report(EVAL) -> path      EVAL/report.html, the fragment as a page

The fragment carries its own (scoped) style and inlines every image, so a whole-run report can
paste it anywhere: `from training.eval.report import render_section; body += render_section(EVAL)`.
"""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Any

import numpy as np

from curation.atomic import atomic_output
from training.eval.align import frame_indices

STRIPS = "strips"
KINDS = ("generated", "real", "baseline")
REPORT = "report.html"
METRICS = "metrics.json"

_STYLE = """<style>
.vjp-eval{font-family:sans-serif} .vjp-eval table{border-collapse:collapse;margin:8px 0}
.vjp-eval td,.vjp-eval th{border-bottom:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:left}
.vjp-eval td{vertical-align:top}
.vjp-eval .cap{max-width:360px;color:#333} .vjp-eval .warn{color:#b00;font-weight:bold}
.vjp-eval img{display:block;max-width:none} .vjp-eval .key{font-family:monospace;font-size:11px;color:#777}
</style>"""


def frame_strip(video: np.ndarray, frames: int, height: int) -> np.ndarray:
    """`frames` evenly spaced frames of a uint8 [T, H, W, 3] video side by side, `height` pixels high."""
    import cv2

    t, h, w, _ = video.shape
    width = max(1, round(w * height / h))
    tiles = []
    for i in frame_indices(t, frames):
        tiles.append(cv2.resize(video[i], (width, height), interpolation=cv2.INTER_AREA))
        tiles.append(np.full((height, 2, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def strip_path(eval_dir: str, kind: str, key: str) -> str:
    return os.path.join(eval_dir, STRIPS, kind, f"{key}.jpg")


def save_strip(eval_dir: str, kind: str, key: str, video: np.ndarray, frames: int, height: int) -> None:
    import cv2

    strip = frame_strip(video, frames, height)
    path = strip_path(eval_dir, kind, key)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError(f"JPEG encoding of the {kind} strip of {key} failed")
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(jpeg.tobytes())


def _img(path: str) -> str:
    if not os.path.exists(path):
        return "<i>none</i>"
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img src="data:image/jpeg;base64,{data}">'


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in pairs)


def _est(e: dict[str, Any] | None) -> str:
    """value [low, high] (level) of an Estimate, or '-'."""
    if not e:
        return "-"
    return f"{e['value']:.4g} [{e['low']:.4g}, {e['high']:.4g}] ({e['level']:.0%} CI)"


def _preset_label(name: str, p: dict[str, Any]) -> str:
    std = "common FVD protocol" if p.get("standard") else "non-standard"
    return f"{p['frames']} frames, preset {name} ({std}, {p['resolution']} px short side + centre crop)"


def render_section(eval_dir: str) -> str:
    """The evaluation as an HTML fragment: headline numbers, settings, and the video grid."""
    with open(os.path.join(eval_dir, METRICS), encoding="utf-8") as f:
        m = json.load(f)
    net, align = m["feature_network"], m.get("alignment")
    warn = ""
    if net.get("random_weights"):
        warn = '<p class="warn">The feature network has random weights: these FVD values mean nothing.</p>'
    headline: list[tuple[str, Any]] = []
    for name in m["protocol"]:
        r = m["fvd"][name]
        label = _preset_label(name, r["preset"])
        headline += [
            (f"FVD generated vs real — {label}", _est(r["generated_vs_real"])),
            (f"FVD baseline vs real — {label}", _est(r.get("baseline_vs_real"))),
            (f"FVD real vs real, N vs N — {label}", _est(r.get("real_vs_real"))),
            (
                f"videos generated / real / reference / baseline — preset {name}",
                f"{r['n_generated']} / {r['n_real']} / {r.get('n_reference', 0)} / {r.get('n_baseline', 0)}",
            ),
        ]
        headline += [(f"note — preset {name}", n) for n in r.get("notes", [])]
    if align:
        label = align.get("label", "CLIP proxy, not the seed's human study")  # _rows escapes
        headline += [
            (f"alignment ({label}): generated (cosine)", align["generated"]),
            (f"alignment ({label}): real videos, own captions", align["real"]),
            (f"alignment ({label}): baseline", align.get("baseline")),
            (
                f"alignment ({label}): win share vs baseline, {align.get('wins', 0)} won of "
                f"{align.get('pairs', 0) - align.get('ties', 0)} ({align.get('ties', 0)} ties left out)",
                _est(align.get("win_share_vs_baseline")),
            ),
        ]
    headline += _human_rows(eval_dir)
    rs = m["real_set"]
    real_desc = f"{rs['kind']}: {rs['location']}"
    if rs.get("split"):
        real_desc += f" ({rs['split']})"
    if rs.get("sources"):
        real_desc += f", sources {', '.join(rs['sources'])}"
    if rs.get("prompts"):
        real_desc += f", prompts {rs['prompts']}"
    settings = [
        ("checkpoint", m["checkpoint"]),
        ("checkpoint step", m["checkpoint_step"]),
        ("real set", f"{real_desc}; {rs['available']} available"),
        ("size generated at", ", ".join(f"{k}={_fmt(v)}" for k, v in m["stage_size"].items())),
        ("feature network", f"{net['name']} at {net['resolution']}px"),
        ("weights sha256", net.get("weights_sha256")),
        ("sampler", ", ".join(f"{k}={v}" for k, v in sorted(m["sampler"].items()))),
        ("seed", m["seed"]),
    ]
    b = m.get("baseline")
    if b:
        settings += [
            (
                "baseline",
                f"{b['dir']}: {b['n']} videos, fps {b['fps']}, sizes {b['sizes']}, frames {b['frames']}",
            ),
            (
                "baseline conformed",
                f"resample to stage fps: {b['resample_fps']}, crop to stage aspect: {b['crop_aspect']}",
            ),
        ]
    prompts: list[dict[str, Any]] = []
    path = os.path.join(eval_dir, "prompts.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            prompts = [json.loads(line) for line in f if line.strip()]
    has_baseline = os.path.isdir(os.path.join(eval_dir, STRIPS, "baseline"))
    head = "<tr><th>caption</th><th>generated</th><th>real</th>"
    head += "<th>baseline</th></tr>" if has_baseline else "</tr>"
    grid = []
    for row in prompts[: m["config"]["report"]["videos"]]:  # strips of earlier runs may lie beyond
        key = row["key"]
        if not os.path.exists(strip_path(eval_dir, "generated", key)):
            continue
        cells = [
            f'<td class="cap">{html.escape(row["prompt"])}<div class="key">{html.escape(key)} '
            f"seed {row['seed']}</div></td>",
            f"<td>{_img(strip_path(eval_dir, 'generated', key))}</td>",
            f"<td>{_img(strip_path(eval_dir, 'real', key))}</td>",
        ]
        if has_baseline:
            cells.append(f"<td>{_img(strip_path(eval_dir, 'baseline', key))}</td>")
        grid.append("<tr>" + "".join(cells) + "</tr>")
    errors = "".join(f"<li>{html.escape(e)}</li>" for e in m.get("errors", []))
    return (
        f'<section class="vjp-eval">{_STYLE}<h2>Evaluation</h2>{warn}'
        f"<table>{_rows(headline)}</table><table>{_rows(settings)}</table>"
        f"<h3>Generated beside real</h3><table>{head}{''.join(grid)}</table>"
        + (f"<h3>Left out</h3><ul>{errors}</ul>" if errors else "")
        + "</section>"
    )


HUMAN = "human_study.json"


def _human_rows(eval_dir: str) -> list[tuple[str, Any]]:
    """The blind A/B study's tally (`vjp compare tally STUDY --eval EVAL` writes it here)."""
    path = os.path.join(eval_dir, HUMAN)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        t = json.load(f)
    rows: list[tuple[str, Any]] = []
    for q, r in t["questions"].items():
        label = f"human study ({t['votes']} votes, {t['raters']} raters): {q}, {t['labels']['a']} won"
        rows.append((label, f"{r['a']} vs {r['b']}: " + _est(r.get("share_a"))))
    return rows


def write_report(eval_dir: str) -> str:
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>videojp evaluation</title></head>'
        f"<body>{render_section(eval_dir)}</body></html>\n"
    )
    path = os.path.join(eval_dir, REPORT)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    return path
