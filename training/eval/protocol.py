"""FVD protocol presets: every choice the seed report leaves open, named, so a number is never
shown without the protocol that made it.

    fvd16   the common FVD code's protocol (VideoGPT / TATS / StyleGAN-V's fvd2048_16f / cd-fvd's
            videogpt model): the first 16 consecutive frames (offset 0, stride 1), each frame's
            short side bilinearly resized to 224 (antialias off, as F.interpolate does there) and
            centre-cropped to 224x224, values scaled to [-1, 1], Kinetics-400 I3D logits (400-d),
            Fréchet distance of the two sets' Gaussians.
    stage   the same, over all of the stage's frames (48 at stage 1): FVD at the stage's length.

A video with fewer frames than its preset needs is left out of that preset's sets and listed in
metrics.json's errors; it is never padded by repeating frames. `conform` is the optional step for
external folders (a baseline's, a published eval set's): resample to the stage fps by nearest
timestamp and centre-crop to the stage's aspect before the preset's own resize and crop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

PRESETS = ("fvd16", "stage")
STANDARD_RESOLUTION = 224


@dataclass(frozen=True)
class Preset:
    name: str
    frames: int
    resolution: int
    frame_offset: int = 0
    frame_stride: int = 1
    resize: str = "short side to resolution (bilinear, align_corners=False, no antialias), centre crop"
    value_range: str = "[-1, 1]"
    network: str = "i3d_kinetics400_logits"
    feature_dim: int = 400
    distance: str = "Fréchet distance of Gaussians (mean, covariance) fitted to the features"
    short_clips: str = "left out and listed in errors (never padded)"

    @property
    def standard(self) -> bool:
        """Whether the numbers are comparable with the common FVD code's (fvd16 at 224 px)."""
        return self.name == "fvd16" and self.resolution == STANDARD_RESOLUTION

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "standard": self.standard}


def make_preset(name: str, stage_frames: int, resolution: int = STANDARD_RESOLUTION) -> Preset:
    if name == "fvd16":
        return Preset("fvd16", 16, resolution)
    if name == "stage":
        return Preset("stage", int(stage_frames), resolution)
    raise ValueError(f"unknown FVD preset {name!r}; known: {', '.join(PRESETS)}")


def select_frames(video: np.ndarray, preset: Preset) -> np.ndarray | None:
    """The preset's frames of a uint8 [T, H, W, 3] video, or None when it is too short."""
    end = preset.frame_offset + preset.frames * preset.frame_stride
    if video.shape[0] < end:
        return None
    return video[preset.frame_offset : end : preset.frame_stride]


def resize_crop(frames: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [3, T, R, R] in [-1, 1]: short side to R, centre crop (VideoGPT's
    preprocess: scale = R / min(h, w), size = ceil(h * scale), ceil(w * scale))."""
    import torch
    import torch.nn.functional as F

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"video must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    h, w = x.shape[-2:]
    scale = resolution / min(h, w)
    size = (max(resolution, math.ceil(h * scale)), max(resolution, math.ceil(w * scale)))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    x = x[:, :, top : top + resolution, left : left + resolution]
    return x.permute(1, 0, 2, 3).mul_(2.0).sub_(1.0)  # [3, T, R, R]


def resample_fps(video: np.ndarray, src_fps: float, dst_fps: float) -> np.ndarray:
    """Frames at dst_fps picked by nearest earlier timestamp (frame i at i / fps); no blending."""
    if src_fps <= 0 or dst_fps <= 0:
        raise ValueError(f"fps must be positive, got {src_fps} -> {dst_fps}")
    if abs(src_fps - dst_fps) < 1e-6:
        return video
    n = math.floor(video.shape[0] * dst_fps / src_fps + 1e-9)
    idx = np.minimum(np.floor(np.arange(n) * src_fps / dst_fps + 1e-9).astype(int), video.shape[0] - 1)
    return video[idx]


def crop_aspect(video: np.ndarray, width: int, height: int) -> np.ndarray:
    """The largest centred crop of aspect width:height."""
    h, w = video.shape[1:3]
    if w * height > h * width:  # too wide
        cw = max(1, round(h * width / height))
        left = (w - cw) // 2
        return video[:, :, left : left + cw]
    ch = max(1, round(w * height / width))
    top = (h - ch) // 2
    return video[:, top : top + ch]


def conform(
    video: np.ndarray, fps: float | None, stage: dict[str, float], to_fps: bool, to_aspect: bool
) -> np.ndarray:
    """An external video made like the stage's: optionally resampled to its fps, cropped to its aspect."""
    if to_fps:
        if not fps:
            raise ValueError("the video has no frame rate to resample from")
        video = resample_fps(video, fps, float(stage["fps"]))
    if to_aspect:
        video = crop_aspect(video, int(stage["width"]), int(stage["height"]))
    return video
