"""Japanese glyphs for the report: a font for matplotlib's plots, and a subset of one embedded in
the page so that captions render on any machine, with or without CJK system fonts.

The plots prefer Debian's Noto Sans CJK JP (fonts-noto-cjk) when it is installed, and otherwise
use IPAexGothic, which the matplotlib-fontja dependency ships, so a pip-only install renders
Japanese too. matplotlib's own default (DejaVu Sans) has no CJK glyphs at all.
"""

from __future__ import annotations

import base64
import functools
import io
import os
from typing import Any

NOTO_FILES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKjp-Regular.otf",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
)
EMBED_FAMILY = "vjp-ja"
CSS_FAMILIES = (
    f'"{EMBED_FAMILY}", "Noto Sans CJK JP", "Noto Sans JP", "IPAexGothic", "Hiragino Sans", sans-serif'
)


def _fontja_path() -> str | None:
    """matplotlib-fontja's IPAexGothic file, found without importing the package: its import
    sets matplotlib's global font family, which is not ours to change."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib_fontja")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), "fonts", "ipaexg.ttf")
    return path if os.path.exists(path) else None


@functools.lru_cache(maxsize=1)
def plot_font() -> tuple[str, str]:
    """(family name, file) of the Japanese font the plots use, registered with matplotlib."""
    from matplotlib import font_manager

    candidates = [p for p in NOTO_FILES if os.path.exists(p)]
    if fontja := _fontja_path():
        candidates.append(fontja)
    for path in candidates:
        before = {f.name for f in font_manager.fontManager.ttflist if f.fname == path}
        if not before:
            font_manager.fontManager.addfont(path)
        names = {f.name for f in font_manager.fontManager.ttflist if f.fname == path}
        for name in ("Noto Sans CJK JP", "IPAexGothic", *sorted(names)):
            if name in names:
                return name, path
    raise RuntimeError(
        "no Japanese font for the report's plots: pip install matplotlib-fontja "
        "(a dependency of this package) or apt-get install fonts-noto-cjk"
    )


def plot_rc() -> dict[str, Any]:
    """rcParams for Japanese labels; DejaVu Sans after it for the glyphs a CJK font lacks."""
    family, _ = plot_font()
    return {"font.family": [family, "DejaVu Sans"], "axes.unicode_minus": False}


def missing_glyphs(path: str, text: str) -> list[str]:
    """Characters of `text` the font file has no glyph for (whitespace ignored)."""
    from fontTools.ttLib import TTCollection, TTFont

    if path.endswith(".ttc"):
        fonts = TTCollection(path).fonts
        font = next((f for f in fonts if "JP" in str(f["name"].getDebugName(1))), fonts[0])
    else:
        font = TTFont(path)
    cmap = font.getBestCmap()
    return sorted({ch for ch in text if not ch.isspace() and ord(ch) not in cmap})


def _embed_source() -> tuple[str, int]:
    """A single-face font file to subset: IPAexGothic, else the JP face of Noto CJK."""
    if fontja := _fontja_path():
        return fontja, 0
    for path in NOTO_FILES:
        if os.path.exists(path) and path.endswith(".ttc"):
            from fontTools.ttLib import TTCollection

            for i, f in enumerate(TTCollection(path).fonts):
                if "JP" in str(f["name"].getDebugName(1)):
                    return path, i
        elif os.path.exists(path):
            return path, 0
    raise RuntimeError("no Japanese font to embed: pip install matplotlib-fontja")


def font_face_css(text: str) -> str:
    """An @font-face rule with a WOFF subset holding every character of `text` (a few tens of kB
    for a report, instead of megabytes for the whole font)."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    path, number = _embed_source()
    opts = subset.Options()
    opts.flavor = "woff"  # zlib only; woff2 would need brotli
    opts.layout_features = ["*"]
    font = TTFont(path, fontNumber=number)
    sub = subset.Subsetter(opts)
    sub.populate(text="".join(sorted(set(text) | set("0123456789"))))
    sub.subset(font)
    buf = io.BytesIO()
    subset.save_font(font, buf, opts)
    data = base64.b64encode(buf.getvalue()).decode()
    return (
        f"@font-face{{font-family:'{EMBED_FAMILY}';src:url(data:font/woff;base64,{data}) format('woff');"
        "font-display:block}"
    )
