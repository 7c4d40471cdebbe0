"""Frame sampling through qwen-vl-utils, with the pixel budget set explicitly.

Returns uint8 frames [T, H, W, 3] already resized to multiples of 28 within the budget: the form
vLLM takes in multi_modal_data, that transformers' processor accepts without resizing again, and
that the OpenAI path re-encodes into a small mp4.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from captioning.config import FramesConfig


class FrameError(RuntimeError):
    """A clip whose frames cannot be read; the clip gets status=error, the batch goes on."""


@dataclass
class FrameSample:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    sample_fps: float  # frames per second of the sampled sequence
    source_fps: float
    frame_indices: list[int]
    prep_s: float

    @property
    def shape(self) -> tuple[int, int, int, int]:
        t, h, w, c = self.frames.shape
        return int(t), int(h), int(w), int(c)

    # Raw bytes + shape travel between Ray stages (no pickle of array objects in the rows).
    def to_record(self) -> dict[str, Any]:
        return {
            "frames_bytes": self.frames.tobytes(),
            "frames_shape": list(self.shape),
            "sample_fps": float(self.sample_fps),
            "source_fps": float(self.source_fps),
            "frame_indices": list(self.frame_indices),
            "prep_s": float(self.prep_s),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> FrameSample:
        shape = tuple(int(x) for x in rec["frames_shape"])
        frames = np.frombuffer(rec["frames_bytes"], dtype=np.uint8).reshape(shape)
        return cls(
            frames=frames,
            sample_fps=float(rec["sample_fps"]),
            source_fps=float(rec["source_fps"]),
            frame_indices=[int(i) for i in rec["frame_indices"]],
            prep_s=float(rec["prep_s"]),
        )


def _select_reader(name: str) -> None:
    """Force qwen-vl-utils' video reader.

    qwen-vl-utils reads FORCE_QWENVL_VIDEO_READER once at import and caches the choice; its
    default order prefers torchcodec, and on any reader error it silently falls back to torchvision,
    whose read_video no longer exists in torchvision >= 0.28. Setting the module attribute and
    clearing the cache makes the configured reader win whatever was imported first.
    """
    from qwen_vl_utils import vision_process as vp

    if getattr(vp, "FORCE_QWENVL_VIDEO_READER", None) != name:
        vp.FORCE_QWENVL_VIDEO_READER = name
        vp.get_video_reader_backend.cache_clear()


def video_element(path: str, cfg: FramesConfig) -> dict[str, Any]:
    """The qwen-vl-utils video element: explicit fps, frame bounds and pixel budget."""
    return {
        "type": "video",
        "video": path,
        "fps": cfg.fps,
        "min_frames": cfg.min_frames,
        "max_frames": cfg.max_frames,
        "min_pixels": cfg.min_pixels,
        "max_pixels": cfg.max_pixels,
        "total_pixels": cfg.total_pixels,
    }


def sample_frames(path: str | Path, cfg: FramesConfig) -> FrameSample:
    """Decode and sample one clip. Raises FrameError with a readable reason on any failure."""
    t0 = time.perf_counter()
    path = str(path)
    if not Path(path).is_file():
        raise FrameError(f"clip file not found: {path}")
    import torch
    from qwen_vl_utils import fetch_video

    try:
        _select_reader(cfg.video_reader)
        video, meta = _fetch(fetch_video, path, cfg)
    except FrameError:
        raise
    except Exception as e:  # decoder errors come in many types; each one costs only this clip
        raise FrameError(f"{type(e).__name__}: {e}"[:500]) from e
    # fetch_video returns float (T, C, H, W) in 0..255 after bicubic resize: clamp before uint8.
    frames = video.clamp(0, 255).round().to(dtype=torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise FrameError(f"no frames decoded from {path}")
    source_fps = float(meta.get("fps") or 0.0)
    idx = [int(i) for i in meta.get("frames_indices", [])]
    total = float(meta.get("total_num_frames") or 0)
    sample_fps = frames.shape[0] / total * source_fps if total and source_fps else cfg.fps
    return FrameSample(frames, sample_fps, source_fps, idx, time.perf_counter() - t0)


def _fetch(fetch_video: Any, path: str, cfg: FramesConfig) -> tuple[Any, dict[str, Any]]:
    ele = video_element(path, cfg)
    try:
        out = fetch_video(ele, image_patch_size=cfg.image_patch_size, return_video_metadata=True)
    except Exception as e:
        # fetch_video swallows the configured reader's exception and retries with torchvision,
        # whose error (read_video is gone in torchvision >= 0.28) hides the real one. Only on this
        # failure path, read once more with the configured reader to report its own message.
        raise FrameError(_reader_error(ele, cfg.video_reader) or f"{type(e).__name__}: {e}"[:500]) from e
    video, meta = out if isinstance(out, tuple) else (out, {})
    return video, dict(meta)


def _reader_error(ele: dict[str, Any], reader_name: str) -> str | None:
    from qwen_vl_utils import vision_process as vp

    reader = vp.VIDEO_READER_BACKENDS.get(reader_name)
    if reader is None:
        return None
    try:
        reader(dict(ele))
    except Exception as e:
        return f"{reader_name}: {type(e).__name__}: {e}"[:500]
    return None


def frames_to_mp4(frames: np.ndarray, fps: float, crf: int = 12) -> bytes:
    """Encode uint8 [T, H, W, 3] frames as a small H.264 mp4 (for the OpenAI video_url part).

    A low CRF keeps the frames close to what the other backends see; sides are multiples of 28,
    so yuv420p's even-size rule always holds.
    """
    from fractions import Fraction

    import av

    buf = io.BytesIO()
    rate = Fraction(max(fps, 0.1)).limit_denominator(1000)
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        t, h, w, _ = frames.shape
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def data_url(payload: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"
