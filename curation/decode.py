"""The analysis decode pass: every frame once, downscaled cheaply, with the codec's motion vectors.

Downscaling uses strided views of the decoded planes instead of swscale: on 480p-720p H.264 a
swscale conversion to a small BGR frame costs 30-75% of the decode itself, strided views cost
next to nothing, and shot detection and the scores do not need anti-aliased pixels.
"""

from __future__ import annotations

from collections.abc import Iterator

import av
import cv2
import numpy as np

_PLANAR_BITS = {
    "yuv420p": 8,
    "yuvj420p": 8,
    "yuv422p": 8,
    "yuvj422p": 8,
    "yuv444p": 8,
    "yuvj444p": 8,
    "yuv420p10le": 10,
    "yuv422p10le": 10,
    "yuv444p10le": 10,
}


def _plane(frame: av.VideoFrame, i: int, bits: int) -> np.ndarray:
    return _plane_array(frame.planes[i], bits)


def _plane_array(p: av.video.plane.VideoPlane, bits: int) -> np.ndarray:
    if bits == 8:
        return np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]
    return np.frombuffer(p, np.uint16).reshape(p.height, p.line_size // 2)[:, : p.width]


def _sub(plane: np.ndarray, sy: int, sx: int, step: int, shape: tuple[int, int]) -> np.ndarray:
    """Chroma samples at the luma positions kept by `step`."""
    if step % sy == 0 and step % sx == 0:
        out = plane[:: step // sy, :: step // sx]
    else:
        rows = np.minimum(np.arange(shape[0]) * step // sy, plane.shape[0] - 1)
        cols = np.minimum(np.arange(shape[1]) * step // sx, plane.shape[1] - 1)
        out = plane[rows][:, cols]
    return out[: shape[0], : shape[1]]


def small_bgr(frame: av.VideoFrame, step: int, rotation: int = 0) -> np.ndarray:
    """The frame shrunk by an integer step, as contiguous BGR uint8 with the display rotation applied."""
    bits = _PLANAR_BITS.get(frame.format.name)
    if bits is None:
        img = frame.reformat(
            width=max(2, frame.width // step), height=max(2, frame.height // step), format="bgr24"
        ).to_ndarray()
    else:
        planes = frame.planes  # PyAV builds the plane objects on every access: once
        y = _plane_array(planes[0], bits)[::step, ::step]
        u_full, v_full = _plane_array(planes[1], bits), _plane_array(planes[2], bits)
        sy = max(1, round(frame.height / u_full.shape[0]))
        sx = max(1, round(frame.width / u_full.shape[1]))
        u = _sub(u_full, sy, sx, step, y.shape)
        v = _sub(v_full, sy, sx, step, y.shape)
        if bits != 8:
            y, u, v = ((c >> (bits - 8)).astype(np.uint8) for c in (y, u, v))
        # Interleaved straight from the strided views: no contiguous copy of each plane, no merge.
        yuv = np.empty((*y.shape, 3), np.uint8)
        yuv[..., 0], yuv[..., 1], yuv[..., 2] = y, u, v
        img = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)
    return rotate(img, rotation)


def full_range_luma(frame: av.VideoFrame) -> bool:
    """Whether `small_gray` of this frame is full range (0-255) rather than limited (16-235).

    YUV without a stated range is limited, as FFmpeg's scaler assumes; RGB and gray are full.
    """
    name = frame.format.name
    if name.startswith("yuvj") or frame.color_range == 2:  # AVCOL_RANGE_JPEG
        return True
    return not name.startswith(("yuv", "nv", "p0", "p1"))


def small_gray(frame: av.VideoFrame, step: int, rotation: int = 0) -> np.ndarray:
    """Luma shrunk by an integer step (no colour conversion: every score works on luma)."""
    bits = _PLANAR_BITS.get(frame.format.name)
    if bits is None:
        img = frame.reformat(
            width=max(2, frame.width // step), height=max(2, frame.height // step), format="gray"
        ).to_ndarray()
    else:
        y = _plane(frame, 0, bits)[::step, ::step]
        img = np.ascontiguousarray(y if bits == 8 else (y >> (bits - 8)).astype(np.uint8))
    return rotate(img, rotation)


def rotate(img: np.ndarray, rotation: int) -> np.ndarray:
    r = rotation % 360
    if r == 90:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    if r == 270:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if r == 180:
        return cv2.rotate(img, cv2.ROTATE_180)
    return img


def step_for(width: int, height: int, short_side: int) -> int:
    """Integer shrink step giving a short side close to `short_side`.

    Large steps are made even, so 4:2:0 chroma is a plain strided view instead of a gather.
    """
    step = max(1, round(min(width, height) / short_side))
    return step + 1 if step > 4 and step % 2 else step


def motion_vectors(frame: av.VideoFrame) -> np.ndarray | None:
    sd = frame.side_data.get("MOTION_VECTORS")
    return None if sd is None else sd.to_ndarray()


def thread_type(export_mvs: bool) -> str:
    """FFmpeg threading that keeps everything a frame carries a pure function of the file.

    Decoded pixels are bit-exact under any threading, but exported motion vectors are not under
    frame threading: FFmpeg's H.264 decoder copies the vectors of the picture it outputs at the
    end of a *later* packet's decode call, on that packet's thread, and nothing makes it wait for
    the thread still decoding that picture when no frame references it (non-reference B-frames).
    The copy is then a snapshot of half-filled tables: on the Sintel trailer 27-28 of its 1253
    frames, all B-frames, came out with up to 85% of their vectors missing or stale, different in
    every run. Slice threading finishes each frame inside its own call, so vectors are exact.
    """
    return "SLICE" if export_mvs else "AUTO"


def iter_frames(
    path: str, stream_index: int, export_mvs: bool = True, threads: int = 0, skip_loop_filter: str = "none"
) -> Iterator[tuple[int, float, av.VideoFrame]]:
    """(index, seconds from the first frame, frame) for every decodable frame of one stream.

    A corrupt packet costs its own frames, not the video; timestamps come from the stream, so
    variable-frame-rate files keep their true times. `skip_loop_filter` is FFmpeg's AVDiscard
    level for deblocking ("noref": only frames no other frame predicts from, which cannot drift).
    With `export_mvs` the decoder is slice-threaded (see `thread_type`): one core for most files.
    """
    container = av.open(path)
    try:
        stream = container.streams[stream_index]
        stream.thread_type = thread_type(export_mvs)
        if threads:
            stream.codec_context.thread_count = threads
        opts = {}
        if export_mvs:
            opts["flags2"] = "+export_mvs"
        if skip_loop_filter != "none":
            opts["skip_loop_filter"] = skip_loop_filter
        stream.codec_context.options = opts
        rate = float(stream.average_rate or 25)
        index = 0
        t0: float | None = None
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                continue
            for frame in frames:
                t = frame.time if frame.time is not None else index / rate
                if t0 is None:
                    t0 = t
                yield index, t - t0, frame
                index += 1
    finally:
        container.close()
