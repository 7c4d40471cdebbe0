"""The whole-run report: Japanese glyphs in plots and page, and the page rendered by headless
Chromium (Debian's `chromium`): every image loaded, the Japanese captions are text in the
embedded font, visible in a screenshot."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from jobs.report_fonts import EMBED_FAMILY, font_face_css, missing_glyphs, plot_font, plot_rc
from tests.run_fixtures import DemoRuns, demo_runs

__all__ = ["demo_runs"]

JA = "細かな模様の背景を、カメラがゆっくりと斜めにパンしていく。日本語のキャプション"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

# Injected into a copy of the page: waits for fonts and images, then writes what it found into
# the DOM, which --dump-dom prints.
CHECK_SCRIPT = (
    """<script>
window.addEventListener('load', async () => {
  await document.fonts.ready;
  const face = [...document.fonts].find(f => f.family.replace(/["']/g, '') === 'EMBED_FAMILY');
  const rect = el => { const r = el.getBoundingClientRect();
    return [r.left + scrollX, r.top + scrollY, r.width, r.height]; };
  const out = {
    font: face ? face.status : 'missing',
    images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth,
                                            h: i.naturalHeight, rect: rect(i)})),
    captions: [...document.querySelectorAll('.ja')].map(e => ({text: e.textContent,
        family: getComputedStyle(e).fontFamily, rect: rect(e)})),
    height: document.documentElement.scrollHeight,
  };
  const pre = document.createElement('pre'); pre.id = 'vjp-check';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""
).replace("EMBED_FAMILY", EMBED_FAMILY)


def test_plot_font_has_the_japanese_glyphs_and_plots_draw_without_missing_glyphs() -> None:
    family, path = plot_font()
    assert family in ("Noto Sans CJK JP", "IPAexGothic")
    assert missing_glyphs(path, JA) == []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings(), plt.rc_context(plot_rc()):
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)"
        fig, ax = plt.subplots()
        ax.set_title(JA)
        fig.canvas.draw()
        plt.close(fig)
    with warnings.catch_warnings(record=True) as caught:  # control: the default font lacks them
        warnings.simplefilter("always")
        fig, ax = plt.subplots()
        ax.set_title(JA)
        fig.canvas.draw()
        plt.close(fig)
    assert any("missing from font" in str(w.message) for w in caught)


def test_embedded_font_subset_covers_the_text_and_is_small(tmp_path: Path) -> None:
    css = font_face_css(JA)
    data = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)\)", css).group(1))
    assert 1_000 < len(data) < 200_000  # a subset, not the 4-20 MB font
    font = tmp_path / "subset.woff"
    font.write_bytes(data)
    assert missing_glyphs(str(font), JA) == []
    assert missing_glyphs(str(font), "龘") == ["龘"]  # only what the page needs


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip(
        "Debian's chromium is not installed here (apt-get install -y chromium fonts-noto-cjk; .ci/run does): "
        "the report's rendering is not checked"
    )


def render(page: Path, tmp_path: Path) -> tuple[dict, np.ndarray]:
    """(what the check script found, screenshot of the whole page as an RGB array)."""
    from PIL import Image

    exe = chromium()
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"), "utf-8")
    url = probe.as_uri()
    dom = subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-dom'}", "--virtual-time-budget=20000",
         "--window-size=1400,2000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    m = re.search(r'<pre id="vjp-check">(.*?)</pre>', dom.stdout, flags=re.S)
    assert m, f"the check script did not run: {dom.stderr[-2000:]}"
    import html

    found = json.loads(html.unescape(m.group(1)))
    shot = tmp_path / "shot.png"
    height = min(int(found["height"]) + 20, 16000)
    subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-shot'}", "--virtual-time-budget=20000",
         f"--window-size=1400,{height}", f"--screenshot={shot}", url],
        capture_output=True, timeout=180, check=True,
    )  # fmt: skip
    return found, np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"))


def frames_of(data: bytes) -> list[object]:
    from PIL import Image, ImageSequence

    return [f.convert("RGB") for f in ImageSequence.Iterator(Image.open(io.BytesIO(data)))]


def shown_as(frame: object, shape: tuple[int, ...]) -> np.ndarray:
    from PIL import Image

    assert isinstance(frame, Image.Image)
    return np.asarray(frame.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), dtype=np.float32)


@pytest.mark.slow
def test_report_renders_in_chromium_with_images_and_japanese_text(
    demo_runs: DemoRuns, tmp_path: Path
) -> None:
    out = demo_runs.resumed
    page = out / "report.html"
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text and "http://" not in text and "https://" not in text  # self-contained
    found, shot = render(page, tmp_path)

    assert found["font"] == "loaded"
    imgs = found["images"]
    # funnel, scores, captions, sources, shards, loss + one strip per clip card + 2 per sample
    assert len(imgs) >= 6 + 5 + 2 * 2
    broken = [i["alt"] for i in imgs if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert not broken, broken

    from captioning.manifest import read_captions

    rows = read_captions(out / "manifests" / "captions", latest=True).to_pylist()
    expected = {r["caption"] for r in rows if r["caption"]}
    shown = {c["text"] for c in found["captions"]}
    assert expected and expected <= shown  # every caption of the contact sheet is in the DOM as text
    # The page's own font subset has a glyph for every character it shows in Japanese.
    woff = tmp_path / "page.woff"
    woff.write_bytes(base64.b64decode(re.search(r"font/woff;base64,([A-Za-z0-9+/=]+)\)", text).group(1)))
    assert missing_glyphs(str(woff), "".join(shown)) == []
    for c in found["captions"]:
        assert c["family"].startswith(f'"{EMBED_FAMILY}"') or c["family"].startswith(EMBED_FAMILY)
        assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", c["text"])

    # The screenshot: each image area shows a picture (not a blank box), and each caption area
    # holds dark text pixels on the light card.
    def region(rect: list[float]) -> np.ndarray:
        x, y, w, h = (round(v) for v in rect)
        return shot[max(y, 0) : y + h, max(x, 0) : x + w]

    assert shot.shape[0] >= found["height"] - 50
    sources = re.findall(r'<img [^>]*src="data:image/[a-z]+;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(sources) == len(imgs)
    for img, src in zip(imgs, sources, strict=True):
        px = region(img["rect"]).astype(np.float32)
        # What the screen shows where the image is, against the image itself scaled to its box
        # (any frame of an animated one): a broken image would show the white page there.
        err = min(np.abs(px - shown_as(frame, px.shape)).mean() for frame in frames_of(base64.b64decode(src)))
        assert err < 15, (img["alt"], err)
    for c in found["captions"]:
        px = region(c["rect"]).mean(axis=2)
        assert px.size and (px < 110).mean() > 0.02, c["text"]
