"""Write clips as their own H.264 mp4 files, byte-identical on every run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from curation import x264
from curation.atomic import temp_path
from curation.config import ExtractConfig
from curation.decode import rotate


@dataclass(frozen=True)
class ClipSpan:
    clip_id: str
    start_s: float  # seconds from the stream's first frame
    end_s: float
    n_frames: int


def _out_size(w: int, h: int, max_short: int) -> tuple[int, int]:
    scale = min(1.0, max_short / min(w, h))
    # Even dimensions: 4:2:0 H.264 needs them.
    return max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)


class _ClipWriter:
    """Encodes frames as they arrive: a 10 s 4K clip never sits in memory as raw frames."""

    def __init__(self, path: str, fps: float, cfg: ExtractConfig) -> None:
        self.path, self.fps, self.cfg = path, fps, cfg
        self.tmp = temp_path(path)
        self.out: av.container.OutputContainer | None = None
        self.count = 0

    def write(self, frame: av.VideoFrame, rotation: int = 0) -> None:
        """Scale in FFmpeg straight from the decoded planes; only rotated sources go through RGB
        (after scaling), so a 4K frame is never converted to a 24 MB RGB array."""
        turned = rotation % 180 != 0
        if self.out is None:
            w, h = (frame.height, frame.width) if turned else (frame.width, frame.height)
            self.size = _out_size(w, h, self.cfg.max_short_side)
            self.out = av.open(self.tmp, "w", format="mp4", options={"movflags": "+faststart"})
            self.rate = Fraction(self.fps).limit_denominator(1001)
            self.st = self.out.add_stream(self.cfg.codec, rate=self.rate)
            self.st.width, self.st.height = self.size
            self.st.pix_fmt = "yuv420p"
            self.st.codec_context.thread_count = self.cfg.threads
            self.st.options = {
                "crf": str(self.cfg.crf),
                "preset": self.cfg.preset,
                **x264.with_params(self.cfg.codec),
            }
        ow, oh = self.size
        if rotation % 360 == 0:
            vf = frame.reformat(width=ow, height=oh, format="yuv420p", interpolation="AREA")
        else:
            cw, ch = (oh, ow) if turned else (ow, oh)
            img = frame.reformat(width=cw, height=ch, format="rgb24", interpolation="AREA").to_ndarray()
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rotate(img, rotation)), format="rgb24")
            vf = vf.reformat(format="yuv420p")
        # Frame-count timestamps at the clip's rate: the source's own would carry its offset,
        # and none at all leaves every frame at pts 0 (readers then see a 1000+ fps file).
        vf.pts = self.count
        vf.time_base = 1 / self.rate
        self.out.mux(self.st.encode(vf))
        self.count += 1

    def close(self) -> None:
        if self.out is None:
            return
        self.out.mux(self.st.encode(None))
        self.out.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.out is not None:
            self.out.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def _decode_skipping_errors(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[av.VideoFrame]:
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue  # same policy as the analysis pass: a corrupt packet costs its frames


def extract_clips(
    path: str,
    stream_index: int,
    rotation: int,
    fps: float,
    spans: list[ClipSpan],
    out_dir: str,
    cfg: ExtractConfig,
) -> dict[str, int]:
    """Decode each span once from the nearest keyframe and encode it; returns frames written per clip.

    Frames are chosen by time relative to the first frame, the same clock the analysis pass used,
    so a clip holds exactly the frames its row names even for variable frame rates.
    """
    written: dict[str, int] = {}
    if not spans:
        return written
    os.makedirs(out_dir, exist_ok=True)
    with av.open(path) as container:
        stream = container.streams[stream_index]
        stream.thread_type = "AUTO"
        t0 = None
        for first in container.decode(stream):
            t0 = first.time or 0.0
            break
        if t0 is None:
            raise ValueError("no decodable frame")
        half = 0.5 / fps
        for span in sorted(spans, key=lambda s: s.start_s):
            target = t0 + span.start_s
            container.seek(int(max(0.0, target - 1.0) / stream.time_base), stream=stream, backward=True)
            writer = _ClipWriter(os.path.join(out_dir, f"{span.clip_id}.mp4"), fps, cfg)
            try:
                for frame in _decode_skipping_errors(container, stream):
                    ft = frame.time
                    if ft is None or ft < target - half:
                        continue
                    if ft >= t0 + span.end_s - half or writer.count >= span.n_frames:
                        break
                    writer.write(frame, rotation)
                if writer.count == 0:
                    raise ValueError(
                        f"clip {span.clip_id}: no frame decoded in {span.start_s:.3f}-{span.end_s:.3f} s"
                    )
                writer.close()
            except BaseException:
                writer.abort()
                raise
            written[span.clip_id] = writer.count
    return written
