"""Probe a video with PyAV: the facts every later step needs, read from the header and the first frame."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import av


class ProbeError(Exception):
    """The file cannot be used as a video; the message is the reason recorded in the manifest."""


@dataclass
class ProbeInfo:
    stream_index: int
    codec: str
    pix_fmt: str
    coded_width: int
    coded_height: int
    width: int  # displayed, rotation applied
    height: int
    rotation: int  # degrees, as the display matrix says
    fps: float  # average frame rate
    fps_variable: bool  # header rates disagree; refined from timestamps by the analysis pass
    duration_s: float | None  # None when the container does not say (then the analysis pass counts)
    start_s: float
    n_frames_header: int  # 0 when unknown
    bit_rate: int | None
    has_audio: bool
    container: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _best_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise ProbeError("no video stream")
    # FFmpeg's own choice (largest / default disposition), not stream #0: some files carry a
    # thumbnail or a low-resolution preview as their first video stream.
    return container.streams.best("video")


def _rate(value: Fraction | None) -> float:
    return float(value) if value else 0.0


# FFmpeg "opens" some non-videos as video: any text file through its tty demuxer (rendered as
# ANSI art), single images through image2 and the *_pipe demuxers. None is footage.
_PSEUDO_DEMUXERS = {"tty", "image2", "lavfi"}
_PSEUDO_CODECS = {"ansi", "bintext", "xbin", "idf"}


def probe_container(container: av.container.InputContainer) -> ProbeInfo:
    """Probe an open container; decodes the first frame, so a file that cannot decode fails here."""
    demuxer = container.format.name
    if demuxer in _PSEUDO_DEMUXERS or demuxer.endswith("_pipe"):
        raise ProbeError(f"not a video: FFmpeg reads it with its {demuxer!r} demuxer (text or still image)")
    stream = _best_video_stream(container)
    if stream.codec_context is not None and stream.codec_context.name in _PSEUDO_CODECS:
        raise ProbeError(f"not a video: codec {stream.codec_context.name!r} renders text")
    cc = stream.codec_context
    if cc is None:
        tag = getattr(stream, "codec_tag", None) or "unknown"
        raise ProbeError(f"unsupported codec (no decoder for stream #{stream.index}, tag {tag!r})")
    try:
        first = next(container.decode(stream))
    except StopIteration as e:
        raise ProbeError("video stream has no decodable frame") from e
    rotation = int(getattr(first, "rotation", 0) or 0)
    coded_w, coded_h = first.width, first.height
    w, h = (coded_h, coded_w) if rotation % 180 != 0 else (coded_w, coded_h)
    avg = _rate(stream.average_rate)
    base = _rate(stream.base_rate) or _rate(stream.guessed_rate)
    fps = avg or base
    if fps <= 0:
        raise ProbeError("frame rate unknown")
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    start = float(stream.start_time * stream.time_base) if stream.start_time and stream.time_base else 0.0
    return ProbeInfo(
        stream_index=stream.index,
        codec=cc.name,
        pix_fmt=str(first.format.name),
        coded_width=coded_w,
        coded_height=coded_h,
        width=w,
        height=h,
        rotation=rotation,
        fps=fps,
        fps_variable=bool(avg and base and abs(avg - base) / base > 0.01),
        duration_s=duration,
        start_s=start,
        n_frames_header=int(stream.frames or 0),
        bit_rate=int(container.bit_rate) if container.bit_rate else None,
        has_audio=bool(container.streams.audio),
        container=container.format.name,
    )


def probe(path: str) -> ProbeInfo:
    try:
        container = av.open(path)
    except av.error.InvalidDataError as e:
        raise ProbeError(f"not a readable video container ({e.strerror or e})") from e
    except av.error.FFmpegError as e:
        raise ProbeError(f"cannot open: {e}") from e
    try:
        return probe_container(container)
    except av.error.FFmpegError as e:
        raise ProbeError(f"cannot decode: {e}") from e
    finally:
        container.close()
