"""Pictures for the report: frame strips of clips and of generated videos, animated previews.

Everything comes back as a data URL, so the page stays one self-contained file. Videos are local
paths or object-store URLs (OUT = s3://...: fetched to a temporary file first).
"""

from __future__ import annotations

import base64
import io

import av
import numpy as np
from PIL import Image

from curation import atomic


def data_url(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(payload).decode()


def _jpeg(img: Image.Image, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def strip(frames: list[np.ndarray], height: int = 90) -> bytes:
    """Frames side by side at one height, 2 px apart, as a JPEG."""
    tiles = []
    for f in frames:
        img = Image.fromarray(f)
        w = max(1, round(img.width * height / img.height))
        tiles.append(img.resize((w, height), Image.Resampling.BILINEAR))
    out = Image.new("RGB", (sum(t.width for t in tiles) + 2 * (len(tiles) - 1), height), (255, 255, 255))
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + 2
    return _jpeg(out)


def clip_frames(path: str, n: int = 4) -> list[np.ndarray]:
    """n frames evenly spread over a clip file (seeking, so long clips cost n short decodes)."""
    with av.open(path) as c:
        st = c.streams.video[0]
        duration = float(st.duration * st.time_base) if st.duration else None
        if duration is None and c.duration:
            duration = c.duration / 1e6
        if not duration:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(st)]
            idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int) if frames else []
            return [frames[i] for i in idx]
        out = []
        for k in range(n):
            t = duration * (k + 0.5) / n
            c.seek(int(t / st.time_base), stream=st, backward=True, any_frame=False)
            for f in c.decode(st):
                if f.time is None or f.time >= t - 1e-3 or f.time >= duration:
                    out.append(f.to_ndarray(format="rgb24"))
                    break
        return out


def clip_strip_url(path: str, n: int = 4, height: int = 90) -> str | None:
    try:
        with atomic.local_file(path) as local:
            frames = clip_frames(local, n)
    except (av.error.FFmpegError, OSError, IndexError):
        return None
    return data_url(strip(frames, height), "image/jpeg") if frames else None


def video_strip_url(video: np.ndarray, n: int = 6, height: int = 96) -> str:
    """A generated video [T, H, W, 3] as n frames in a row."""
    idx = np.linspace(0, len(video) - 1, min(n, len(video))).round().astype(int)
    return data_url(strip([video[i] for i in idx], height), "image/jpeg")


def animated_url(video: np.ndarray, fps: float, height: int = 128) -> str:
    """A generated video as an animated GIF (plays in every browser, no codec needed)."""
    frames = []
    for f in video:
        img = Image.fromarray(f)
        w = max(1, round(img.width * height / img.height))
        frames.append(
            img.resize((w, height), Image.Resampling.NEAREST).convert("P", palette=Image.Palette.ADAPTIVE)
        )
    buf = io.BytesIO()
    frames[0].save(
        buf, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0
    )
    return data_url(buf.getvalue(), "image/gif")


def read_video(path: str) -> np.ndarray:
    with atomic.local_file(path) as local, av.open(local) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
