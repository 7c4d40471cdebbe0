"""Stage shards: pure per-sample logic (caption, split, frame window, crop, encode) and shard assembly.

Everything here is a plain function of its inputs: no Ray, no global state. jobs/shard.py reads
the manifests, plans, and runs `write_shard` once per shard under Ray or in threads. The same
inputs and seed give byte-identical tars: the frame window and the shard order come from hashes
of seed and clip id, x264 runs single-threaded with fixed crf/preset, the mp4 muxer is bitexact
(no creation time, no library version string) and tar headers carry a fixed mtime/owner/mode.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from curation import x264
from curation.atomic import atomic_output, local_file
from curation.configfile import package_version
from training.data import sample_format, store
from training.data.sample_format import (
    JSON,
    META_DIR,
    MP4,
    SPLITS,
    TXT,
    VIDEO_MEMBERS,
    CaptionVariant,
    ClipInfo,
    SampleMeta,
    SampleTableRef,
    ShardEntry,
    ShardIndex,
    ShardRecord,
    SkipReason,
    Window,
    check_key,
    config_hash,
    dumps,
    shard_name,
)
from training.data.stages import CaptionChoice, ShardConfig, SplitConfig, StagePreset

# Fixed tar header fields: reproducible shards (2024-01-01T00:00:00Z; 0 makes GNU tar warn).
TAR_MTIME = 1704067200
TAR_OWNER = "videojp"
TAR_MODE = 0o444

SCORE_COLUMNS = (
    "motion",
    "motion_mv",
    "motion_flow",
    "motion_p90",
    "camera_pan",
    "flow_share",
    "luma_mean",
    "luma_std",
    "dark_fraction",
    "bright_fraction",
    "sharpness",
    "text_fraction",
    "text_fraction_max",
    "border_fraction",
)


def _unit_hash(*parts: object) -> int:
    """A stable 64-bit integer of the parts (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()[:8], "big")


# ---- caption and split -----------------------------------------------------------------------
def pick_caption(
    variants: Mapping[str, CaptionVariant], source_caption: str | None, choice: CaptionChoice
) -> tuple[str, str] | None:
    """(caption, field) for txt: the first ok caption in preference order, else the allowed fallback."""
    for ctype in choice.types:
        v = variants.get(ctype)
        if v is not None and v.status == "ok" and v.caption and v.caption.strip():
            return v.caption.strip(), f"captions.{ctype}"
    if choice.fallback == "source_caption" and source_caption and source_caption.strip():
        return source_caption.strip(), "source_caption"
    return None


def split_of(video_id: str, cfg: SplitConfig) -> str:
    """train/eval by a hash of the SOURCE video: no video contributes to both (FVD hold-out)."""
    u = _unit_hash(cfg.salt, video_id) / 2**64
    return "eval" if u < cfg.eval_fraction else "train"


# ---- probing and planning --------------------------------------------------------------------
@dataclass(frozen=True)
class ClipProbe:
    width: int
    height: int
    n_frames: int
    fps: float
    size_bytes: int


def probe_clip(path: str, storage_options: Mapping[str, Any] | None = None) -> ClipProbe | SkipReason:
    """Real size, frame count and rate of a clip file from its header (the clip may be downscaled).

    `path` is a local file or an object URL: an object is read through a file object of the
    store (for a small clip one GET; only the header for a large one), never copied to disk."""
    import av

    if store.is_url(path):
        try:  # opening an object reads its size (one HEAD); the header then comes in one GET
            opened: Any = store.open_input(path, storage_options, block_size=1 << 20)
        except FileNotFoundError:
            return "missing_file"
        size = int(opened.size)
    else:
        if not os.path.exists(path):
            return "missing_file"
        size, opened = os.path.getsize(path), contextlib.nullcontext(path)
    try:
        with opened as src, av.open(src) as container:
            if not container.streams.video:
                return "unreadable"
            st = container.streams.video[0]
            rate = st.average_rate or st.guessed_rate
            n = int(st.frames or 0)
            if n <= 0:  # no frame count in the header: count packets (no decoding)
                n = sum(1 for p in container.demux(st) if p.size)
            w, h = st.codec_context.width, st.codec_context.height
    except Exception:
        return "unreadable"
    if not rate or not w or not h or n <= 0:
        return "unreadable"
    return ClipProbe(int(w), int(h), n, float(rate), size)


@functools.lru_cache(maxsize=1024)
def _window_offsets(src_fps: float, fps: float, frames: int) -> tuple[int, ...] | None:
    """Offsets of the window's frames from its first (None when a frame would repeat); a corpus has
    few distinct frame rates, so this is computed a few times, not once per clip."""
    ratio = src_fps / fps
    offsets = tuple(math.floor(k * ratio + 0.5) for k in range(frames))
    if any(b <= a for a, b in itertools.pairwise(offsets)):
        return None
    return offsets


def frame_window(
    n_frames: int, src_fps: float, stage: StagePreset, seed: int, clip_id: str
) -> list[int] | SkipReason:
    """`stage.frames` frame indices at `stage.fps`, at a start chosen from seed + clip id.

    Nearest source frame to each target time; the start does not depend on the stage, so stages
    sharing a frame rate take the same moment of a clip (same content, higher resolution).
    """
    offsets = _window_offsets(src_fps, stage.fps, stage.frames)
    if offsets is None:
        return "low_fps"  # a frame would repeat: that is temporal stretching
    span = offsets[-1] + 1
    if span > n_frames:
        return "too_short"
    start = _unit_hash(seed, clip_id, "window") % (n_frames - span + 1)
    return [start + o for o in offsets]


def crop_region(
    width: int, height: int, crop_box: Sequence[float], stage: StagePreset
) -> tuple[tuple[int, int, int, int], float] | SkipReason:
    """Letterbox crop first, then the largest centered box of the stage aspect inside it.

    Returns ((x0, y0, x1, y1), scale) in clip-file pixels; resizing that box to the stage size
    keeps the aspect (no stretching). The box is never padded.
    """
    top, bottom, left, right = (min(max(float(c), 0.0), 0.49) for c in crop_box)
    cx0, cx1 = round(left * width), width - round(right * width)
    cy0, cy1 = round(top * height), height - round(bottom * height)
    cw, ch = cx1 - cx0, cy1 - cy0
    if cw <= 0 or ch <= 0:
        return "too_small"
    target = stage.width / stage.height
    if cw / ch > target:  # content wider than the stage: crop the sides
        rw, rh = min(cw, round(ch * target)), ch
    else:
        rw, rh = cw, min(ch, round(cw / target))
    scale = max(stage.width / rw, stage.height / rh)
    if scale > stage.max_upscale + 1e-9:
        return "too_small"
    if (rw * rh) / (cw * ch) < stage.min_area_kept:
        return "aspect_mismatch"
    x0, y0 = cx0 + (cw - rw) // 2, cy0 + (ch - rh) // 2
    return (x0, y0, x0 + rw, y0 + rh), round(scale, 6)


class SamplePlan:
    """Everything a worker needs to render one sample; `meta` is the final json member.

    Either eager (`SamplePlan(meta, clip_path, size_bytes)`) or lazy (`SamplePlan.lazy`): a lazy plan
    keeps a row number into shared columnar inputs (training.data.planning) and builds its meta on
    each access, so millions of planned samples cost a few hundred bytes each, not a pydantic tree.
    Pickling (Ray tasks) sends the built meta, never the shared inputs.
    """

    __slots__ = ("_meta", "_row", "_source", "clip_path", "key", "size_bytes", "split", "video_id")

    def __init__(self, meta: SampleMeta, clip_path: str, size_bytes: int) -> None:
        self._meta: SampleMeta | None = meta
        self._source: Any = None
        self._row = -1
        self.clip_path = clip_path  # relative to the curation output folder
        self.size_bytes = size_bytes  # clip file size at planning time: a changed input changes the plan hash
        self.key: str = meta.key
        self.split: str = meta.split
        self.video_id: str = meta.video_id

    @classmethod
    def lazy(
        cls, source: Any, row: int, key: str, split: str, video_id: str, clip_path: str, size_bytes: int
    ) -> SamplePlan:
        """A plan whose meta is `source.meta(row)` (built on demand, not kept)."""
        self = cls.__new__(cls)
        self._meta, self._source, self._row = None, source, row
        self.clip_path, self.size_bytes = clip_path, size_bytes
        self.key, self.split, self.video_id = key, split, video_id
        return self

    @property
    def meta(self) -> SampleMeta:
        return self._meta if self._meta is not None else self._source.meta(self._row)

    def fingerprint(self) -> dict[str, Any]:
        return {"meta": self.meta.model_dump(mode="json"), "size": self.size_bytes}

    def __reduce__(self) -> tuple[Any, ...]:
        return (SamplePlan, (self.meta, self.clip_path, self.size_bytes))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SamplePlan):
            return NotImplemented
        return (self.meta, self.clip_path, self.size_bytes) == (other.meta, other.clip_path, other.size_bytes)

    __hash__ = None  # type: ignore[assignment]  # like the frozen dataclass it was: meta is unhashable

    def __repr__(self) -> str:
        return f"SamplePlan(key={self.key!r}, clip_path={self.clip_path!r}, size_bytes={self.size_bytes})"


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


@dataclass(frozen=True)
class PlanContext:
    """What every sample of one stage shares: computed once per job, not once per sample (the
    package version alone is a metadata file parse)."""

    stage_name: str
    stage: StagePreset
    seed: int
    split: SplitConfig
    captions: CaptionChoice
    config_hash: str
    package_version: str


def plan_context(stage_name: str, cfg: ShardConfig) -> PlanContext:
    return PlanContext(
        stage_name=stage_name,
        stage=cfg.stage(stage_name),
        seed=cfg.seed,
        split=cfg.split,
        captions=cfg.captions,
        config_hash=cfg.stage_hash(stage_name),
        package_version=package_version(),
    )


def precheck(
    clip: Mapping[str, Any], variants: Mapping[str, Any], probe: ClipProbe | SkipReason, choice: CaptionChoice
) -> tuple[str, str] | SkipReason:
    """The checks that need no stage: a safe key, a caption, a readable clip (in that order)."""
    if not sample_format.is_safe_key(clip["clip_id"]):
        return "unsafe_key"
    picked = pick_caption(variants, clip.get("source_caption"), choice)
    if picked is None:
        return "no_caption"
    if isinstance(probe, str):
        return probe
    return picked


def clip_crop(clip: Mapping[str, Any]) -> tuple[float, float, float, float]:
    return (
        float(clip.get("crop_top") or 0.0),
        float(clip.get("crop_bottom") or 0.0),
        float(clip.get("crop_left") or 0.0),
        float(clip.get("crop_right") or 0.0),
    )


def place(
    clip: Mapping[str, Any], probe: ClipProbe, ctx: PlanContext
) -> tuple[list[int], tuple[tuple[int, int, int, int], float]] | SkipReason:
    """Frame window and crop region of a sample (or why it has none)."""
    indices = frame_window(probe.n_frames, probe.fps, ctx.stage, ctx.seed, clip["clip_id"])
    if isinstance(indices, str):
        return indices
    region = crop_region(probe.width, probe.height, clip_crop(clip), ctx.stage)
    if isinstance(region, str):
        return region
    return indices, region


def build_meta(
    clip: Mapping[str, Any],
    variants: Mapping[str, CaptionVariant],
    probe: ClipProbe,
    ctx: PlanContext,
    picked: tuple[str, str],
    placed: tuple[list[int], tuple[tuple[int, int, int, int], float]],
) -> SampleMeta:
    """The json member of a sample whose checks passed (`precheck`, `place`)."""
    indices, (box, scale) = placed
    start_s = float(clip.get("start_s") or 0.0)
    caption, field = picked
    return SampleMeta(
        key=check_key(clip["clip_id"]),
        clip_id=clip["clip_id"],
        video_id=clip["video_id"],
        source=clip.get("source") or "",
        stage=ctx.stage_name,
        split=split_of(clip["video_id"], ctx.split),  # type: ignore[arg-type]
        width=ctx.stage.width,
        height=ctx.stage.height,
        frames=ctx.stage.frames,
        fps=ctx.stage.fps,
        clip=ClipInfo(
            clip_path=clip["clip_path"],
            start_s=start_s,
            end_s=float(clip.get("end_s") or 0.0),
            fps=probe.fps,
            n_frames=probe.n_frames,
            width=probe.width,
            height=probe.height,
            source_width=clip.get("width"),
            source_height=clip.get("height"),
            crop_box=clip_crop(clip),
            decision_hash=clip.get("decision_hash"),
        ),
        window=Window(
            frame_indices=indices,
            start_s=round(start_s + indices[0] / probe.fps, 6),
            end_s=round(start_s + (indices[-1] + 1) / probe.fps, 6),
            region=box,
            scale=scale,
        ),
        scores={c: _clean(clip[c]) for c in SCORE_COLUMNS if c in clip},
        caption=caption,
        caption_field=field,
        captions=dict(sorted(variants.items())),
        source_caption=clip.get("source_caption"),
        seed=ctx.seed,
        config_hash=ctx.config_hash,
        package_version=ctx.package_version,
    )


def plan_sample(
    clip: Mapping[str, Any],
    variants: Mapping[str, CaptionVariant],
    probe: ClipProbe | SkipReason,
    stage_name: str,
    cfg: ShardConfig,
    ctx: PlanContext | None = None,
) -> SamplePlan | SkipReason:
    """Decide everything about one sample from its manifest row, captions and probe; no decoding.

    Many samples: pass `ctx=plan_context(stage_name, cfg)` once, or use training.data.planning."""
    picked = precheck(clip, variants, probe, cfg.captions)
    if isinstance(picked, str):
        return picked
    assert not isinstance(probe, str)
    ctx = ctx or plan_context(stage_name, cfg)
    placed = place(clip, probe, ctx)
    if isinstance(placed, str):
        return placed
    meta = build_meta(clip, variants, probe, ctx, picked, placed)
    return SamplePlan(meta=meta, clip_path=clip["clip_path"], size_bytes=probe.size_bytes)


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    samples: tuple[SamplePlan, ...]

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def plan_hash(self) -> str:
        return config_hash(fingerprints(self.samples))


def fingerprints(plans: Sequence[SamplePlan]) -> list[dict[str, Any]]:
    """[p.fingerprint() for p in plans], building the metas of lazy plans in bulk per source."""
    metas: list[SampleMeta | None] = [p._meta for p in plans]
    groups: dict[int, tuple[Any, list[int]]] = {}
    for k, p in enumerate(plans):
        if p._meta is None:
            groups.setdefault(id(p._source), (p._source, []))[1].append(k)
    for source, ks in groups.values():
        # In bulk only where it pays: a take per table costs more than a few row lookups.
        built = source.metas([plans[k]._row for k in ks]) if len(ks) >= 32 else [plans[k].meta for k in ks]
        for k, m in zip(ks, built, strict=True):
            metas[k] = m
    return [
        {"meta": m.model_dump(mode="json"), "size": p.size_bytes}  # type: ignore[union-attr]
        for m, p in zip(metas, plans, strict=True)
    ]


def shard_order(plans: Iterable[SamplePlan], seed: int) -> list[SamplePlan]:
    """A seeded pseudo-random order: clips of one video spread over shards (better shuffling)."""
    return sorted(plans, key=lambda p: (_unit_hash(seed, p.key, "order"), p.key))


def group_shards(plans: Iterable[SamplePlan], samples_per_shard: int, seed: int) -> list[ShardPlan]:
    """Deterministic shards per split, planned before anything is written (one task per shard)."""
    by_split: dict[str, list[SamplePlan]] = {s: [] for s in SPLITS}
    for p in plans:
        by_split[p.split].append(p)
    out: list[ShardPlan] = []
    for split in SPLITS:
        ordered = shard_order(by_split[split], seed)
        for i in range(0, len(ordered), samples_per_shard):
            out.append(ShardPlan(split, i // samples_per_shard, tuple(ordered[i : i + samples_per_shard])))
    return out


def samples_per_shard(stage: StagePreset, bytes_per_sample: float | None) -> int:
    if not stage.target_shard_bytes or not bytes_per_sample:
        return stage.max_shard_samples
    return max(1, min(stage.max_shard_samples, int(stage.target_shard_bytes // bytes_per_sample)))


# ---- rendering one sample --------------------------------------------------------------------
def _crop_scale_graph(stream: Any, region: Sequence[int], width: int, height: int) -> Any:
    """FFmpeg filters: exact crop to the region, then scale to the stage size, then RGB.

    Cropping before scaling means no letterbox pixel bleeds into the edge; scaling the YUV frame
    in swscale (area filter down, bicubic up) avoids converting the full-resolution frame to RGB:
    about 6x cheaper than to_ndarray + cv2 at 1080p, and a sample never holds 1080p RGB frames.
    """
    import av

    x0, y0, x1, y1 = region
    flags = "area" if (x1 - x0) >= width else "bicubic"
    graph = av.filter.Graph()
    chain = [
        graph.add_buffer(template=stream),
        graph.add("crop", f"{x1 - x0}:{y1 - y0}:{x0}:{y0}"),
        graph.add("scale", f"{width}:{height}:flags={flags}"),
        graph.add("format", "rgb24"),
        graph.add("buffersink"),
    ]
    for a, b in itertools.pairwise(chain):
        a.link_to(b)
    graph.configure()
    return graph


def load_window(
    path: str, indices: Sequence[int], region: Sequence[int], width: int, height: int, threads: int = 1
) -> np.ndarray:
    """The frames at `indices` (decode order), cropped and scaled: uint8 [T, height, width, 3].

    Decodes no further than the last index; only the chosen frames go through the filters.
    """
    import av

    wanted = set(indices)
    last = max(indices)
    got: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        graph = _crop_scale_graph(stream, region, width, height)
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                graph.push(frame)
                got[i] = graph.pull().to_ndarray()
            if i >= last:
                break
    missing = [i for i in indices if i not in got]
    if missing:
        raise ValueError(f"clip ended before frame {missing[0]} ({len(got)} of {len(indices)} decoded)")
    return np.stack([got[i] for i in indices])


def encode_mp4(
    frames: np.ndarray, fps: float, codec: str = "libx264", crf: int = 18, preset: str = "medium"
) -> bytes:
    """uint8 [T, H, W, 3] -> H.264 mp4 bytes, deterministic: one x264 thread, fixed crf/preset,
    no AVX-512 asm (curation.x264), bitexact muxer."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        st = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        st.codec_context.thread_count = 1
        st.options = {"crf": str(crf), "preset": preset, **x264.with_params(codec)}
        for f in frames:
            out.mux(st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(st.encode(None))
    return buf.getvalue()


def render_sample(
    plan: SamplePlan,
    root: str,
    stage: StagePreset,
    decode_threads: int = 1,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The tar members of one sample (bytes), ready for TarWriter. `root` is the curation output (a
    folder or an object-store URL); a clip object is fetched to a temporary file just for this
    sample (FFmpeg decodes a local file) and removed right after."""
    meta = plan.meta
    clip = store.member(root, plan.clip_path, "clip manifest")
    with local_file(clip, storage_options=storage_options) as path:
        frames = load_window(
            path, meta.window.frame_indices, meta.window.region, stage.width, stage.height, decode_threads
        )
    return {
        "__key__": meta.key,
        JSON: dumps(meta.model_dump(mode="json")),
        MP4: encode_mp4(frames, stage.fps, stage.codec, stage.crf, stage.preset),
        TXT: meta.caption.encode("utf-8"),
    }


def tar_bytes(sample: Mapping[str, Any]) -> int:
    """Bytes a sample takes in an uncompressed tar: a 512-byte header + padded data per member."""
    return sum(512 + -(-len(v) // 512) * 512 for k, v in sample.items() if not k.startswith("_"))


def estimate_sample_bytes(
    plans: Sequence[SamplePlan],
    root: str,
    stage: StagePreset,
    decode_threads: int = 1,
    storage_options: Mapping[str, Any] | None = None,
) -> float | None:
    sizes = []
    for p in plans:
        try:
            sizes.append(tar_bytes(render_sample(p, root, stage, decode_threads, storage_options)))
        except Exception:
            continue  # the shard task records the failure; the estimate just skips it
    return sum(sizes) / len(sizes) if sizes else None


# ---- shards, records, index ------------------------------------------------------------------
def split_dir(out: str, stage: str, split: str) -> str:
    return store.join(out, stage, split)


def record_path(out: str, stage: str, split: str, name: str) -> str:
    return store.join(out, stage, META_DIR, "records", split, name.removesuffix(".tar") + ".json")


def write_atomic(path: str, data: bytes) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


@dataclass(frozen=True)
class TarResult:
    keys: list[str]
    ranges: list[tuple[int, int]]  # per key: offset of its first member header, bytes through its last
    bytes: int
    sha256: str


def _write_tar_file(path: str, samples: Iterable[Mapping[str, Any]]) -> TarResult:
    """Write samples to a local file; each sample's byte range comes from the tar stream's own offset.

    webdataset's TarWriter writes members in sorted field order per sample (ustar headers); fixed
    mtime, owner and mode make the bytes reproducible.
    """
    from webdataset import TarWriter

    keys: list[str] = []
    ranges: list[tuple[int, int]] = []
    h = hashlib.sha256()

    class _Hashing(io.RawIOBase):  # hash while writing: no second pass over the shard
        def __init__(self, f: Any) -> None:
            self.f = f

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            h.update(b)
            return self.f.write(b)

    with open(path, "wb") as raw:
        f = _Hashing(raw)
        with TarWriter(
            f, encoder=False, mtime=TAR_MTIME, user=TAR_OWNER, group=TAR_OWNER, mode=TAR_MODE
        ) as tw:
            for s in samples:
                start = tw.tarstream.offset  # logical offset: the stream buffers, tell() would lag
                tw.write(dict(s))
                keys.append(s["__key__"])
                ranges.append((start, tw.tarstream.offset - start))
    return TarResult(keys, ranges, os.path.getsize(path), h.hexdigest())


def write_tar_indexed(
    path: str, samples: Iterable[Mapping[str, Any]], storage_options: Mapping[str, Any] | None = None
) -> TarResult:
    """Write a shard under its final name, whole or not at all: locally through a temporary name +
    rename, on a store into a local temporary file then one upload (an object PUT is atomic)."""
    if not store.is_url(path):
        with atomic_output(store.local_path(path)) as tmp:
            return _write_tar_file(tmp, samples)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vjp-shard-") as d:
        tmp = os.path.join(d, "shard.tar")
        result = _write_tar_file(tmp, samples)
        store.put_file(tmp, path, storage_options)
    return result


def write_tar(path: str, samples: Iterable[Mapping[str, Any]]) -> tuple[int, list[str]]:
    """Write samples to a local `path` via a temporary name + rename; returns (count, keys)."""
    r = write_tar_indexed(path, samples)
    return len(r.keys), r.keys


def write_shard_files(
    out: str,
    stage: str,
    split: str,
    name: str,
    samples: Iterable[Mapping[str, Any]],
    plan_hash: str,
    skipped: Mapping[str, str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ShardRecord:
    """A shard's tar, then its record (with every sample's byte range): the record is the proof
    that the tar under that name is complete, so it is written second."""
    path = store.join(split_dir(out, stage, split), name)
    r = write_tar_indexed(path, samples, storage_options)
    entry = ShardEntry(name=name, samples=len(r.keys), bytes=r.bytes, sha256=r.sha256, plan_hash=plan_hash)
    record = ShardRecord(
        split=split,  # type: ignore[arg-type]
        entry=entry,
        keys=r.keys,
        ranges=r.ranges,
        skipped=dict(skipped or {}),
    )
    store.write_bytes(
        record_path(out, stage, split, name), dumps(record.model_dump(mode="json")), storage_options
    )
    return record


def write_shard(shard: ShardPlan, root: str, out: str, stage_name: str, cfg: ShardConfig) -> ShardRecord:
    """One task: render the shard's samples, write the tar (whole or not at all), then its record.
    `root` (the curation output) and `out` may each be a folder or an object-store URL."""
    stage = cfg.stage(stage_name)
    skipped: dict[str, str] = {}

    def samples() -> Iterable[dict[str, Any]]:
        for plan in shard.samples:
            try:
                yield render_sample(plan, root, stage, cfg.runner.decode_threads, cfg.storage_options)
            except Exception:
                skipped[plan.key] = "decode_error"

    return write_shard_files(
        out, stage_name, shard.split, shard.name, samples(), shard.plan_hash, skipped, cfg.storage_options
    )


def read_record(
    out: str, stage: str, split: str, name: str, storage_options: Mapping[str, Any] | None = None
) -> ShardRecord | None:
    path = record_path(out, stage, split, name)
    try:
        return ShardRecord.model_validate_json(store.read_bytes(path, storage_options))
    except (OSError, ValueError):
        return None


def shard_is_done(
    shard: ShardPlan,
    out: str,
    stage: str,
    verify: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> ShardRecord | None:
    """The record of an identical finished shard, or None when it must be (re)written."""
    rec = read_record(out, stage, shard.split, shard.name, storage_options)
    path = store.join(split_dir(out, stage, shard.split), shard.name)
    if rec is None or rec.entry.plan_hash != shard.plan_hash or not store.exists(path, storage_options):
        return None
    if store.size(path, storage_options) != rec.entry.bytes:
        return None
    if verify and store.sha256_of(path, storage_options) != rec.entry.sha256:
        return None
    return rec


@dataclass(frozen=True, eq=False)
class ShardTask:
    """What the driver sends one shard task: the shard's split and number and its samples' rows in
    a plan source (training.data.planning.PlanSource), in tar order. The source is the job's, shared
    in-process (local runner), or `source`, this shard's rows cut out of it (`cut`, Ray). No meta
    is built in the driver: the task builds them, hashes the plan and checks the record."""

    split: str
    index: int
    rows: np.ndarray  # int64 row numbers into the plan source's clip table
    source: Any = None

    @property
    def name(self) -> str:
        return shard_name(self.index)

    def cut(self, source: Any) -> ShardTask:
        """The task with its own rows' columns: a worker gets its shard's share of the inputs, not
        the whole corpus, and only the shards in flight hold memory."""
        rows = np.arange(len(self.rows), dtype=np.int64)
        return ShardTask(self.split, self.index, rows, source.subset(self.rows))


@dataclass(frozen=True)
class ShardOutcome:
    record: ShardRecord
    reused: bool  # an identical finished shard was found (nothing written)


def shard_tasks(shards: Sequence[ShardPlan]) -> tuple[Any, list[ShardTask]]:
    """(the plan source, one task per shard) for shards of lazy plans (planning.plan_samples)."""
    source: Any = None
    tasks = []
    for sh in shards:
        for p in sh.samples:
            if p._source is None or (source is not None and p._source is not source):
                raise ValueError(f"shard {sh.split}/{sh.name}: plans must be lazy rows of one plan source")
            source = p._source
        rows = np.fromiter((p._row for p in sh.samples), dtype=np.int64, count=len(sh.samples))
        tasks.append(ShardTask(sh.split, sh.index, rows))
    return source, tasks


def run_shard_task(
    task: ShardTask, source: Any, root: str, out: str, stage_name: str, cfg: ShardConfig, verify: bool = False
) -> ShardOutcome:
    """One shard, in its worker: build its samples' metas from its plan source (the task's own, else
    `source`), then return the record of an identical finished shard (plan hash, size; sha256 with
    `verify`) or render it."""
    src = task.source if task.source is not None else source
    shard = ShardPlan(task.split, task.index, tuple(src.plans(task.rows)))
    rec = shard_is_done(shard, out, stage_name, verify, cfg.storage_options)
    if rec is not None:
        return ShardOutcome(rec, True)
    return ShardOutcome(write_shard(shard, root, out, stage_name, cfg), False)


def write_split_index(
    stage_dir: str,
    index: ShardIndex,
    records: Mapping[str, ShardRecord],
    storage_options: Mapping[str, Any] | None = None,
) -> ShardIndex:
    """The split's sample table, then its index (the commit record), both under final names.

    `records` maps shard name -> record for every shard of `index`; a record written before
    records had byte ranges is completed from its tar's headers (one scan, logged).
    """
    import logging

    from training.data.sample_table import TableColumns, encode_table, scan_tar, table_name

    parts = []
    for i, entry in enumerate(index.shards):
        rec = records[entry.name]
        keys, ranges = rec.keys, list(rec.ranges)
        if len(ranges) != len(keys):
            url = store.join(stage_dir, index.split, entry.name)
            logging.getLogger(__name__).warning("%s: record has no byte ranges; reading its tar headers", url)
            keys, ranges = scan_tar(url, storage_options)  # type: ignore[assignment]
        parts.append(TableColumns.of_shard(i, ranges, keys))
    data = encode_table(TableColumns.concat(parts))
    sha = hashlib.sha256(data).hexdigest()
    name = table_name(index.split, sha)
    index_path = store.join(stage_dir, META_DIR, f"{index.split}.json")
    previous = _table_named_by(index_path, storage_options)
    store.write_bytes(store.join(stage_dir, META_DIR, name), data, storage_options)
    ref = SampleTableRef(name=name, rows=index.samples, bytes=len(data), sha256=sha)
    index = index.model_copy(update={"sample_table": ref})
    store.write_bytes(index_path, dumps(index.model_dump(mode="json")), storage_options)
    prune_sample_tables(stage_dir, index.split, {name, previous} - {None}, storage_options)  # type: ignore[arg-type]
    return index


def _table_named_by(index_path: str, storage_options: Mapping[str, Any] | None) -> str | None:
    """The sample table an existing index names (any index schema), or None."""
    import json

    if not store.exists(index_path, storage_options):
        return None
    try:
        name = json.loads(store.read_bytes(index_path, storage_options)).get("sample_table", {}).get("name")
    except (ValueError, AttributeError):
        return None  # a malformed index names nothing: its table is pruned like any other
    return name if isinstance(name, str) else None


def prune_sample_tables(
    stage_dir: str, split: str, keep: set[str], storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """Remove the split's sample tables other than `keep`; the names removed.

    Tables are content-named, so every rerun that changes a split leaves the old one behind. The
    new index's table and the one the index it replaced named are kept: a reader that read the old
    index just before the commit can still open that table (one that has it open keeps its mapping
    or its downloaded copy either way). Anything older no index names any more."""
    from training.data.sample_table import is_table_name

    folder = store.join(stage_dir, META_DIR)
    removed = [n for n in store.listdir(folder, storage_options) if is_table_name(n, split) and n not in keep]
    for n in removed:
        store.remove(store.join(folder, n), storage_options)
    return removed


def build_index(
    stage_name: str,
    split: str,
    cfg: ShardConfig,
    records: Sequence[ShardRecord],
    skipped: Mapping[str, int],
) -> ShardIndex:
    stage = cfg.stage(stage_name)
    """The index of one split; `skipped` counts every clip of the split left out, by reason."""
    entries = [r.entry for r in sorted(records, key=lambda r: r.entry.name)]
    return ShardIndex(
        stage=stage_name,
        split=split,  # type: ignore[arg-type]
        width=stage.width,
        height=stage.height,
        frames=stage.frames,
        fps=stage.fps,
        members=list(VIDEO_MEMBERS),
        config_hash=cfg.stage_hash(stage_name),
        seed=cfg.seed,
        package_version=package_version(),
        preset=stage.model_dump(mode="json"),
        shards=entries,
        samples=sum(e.samples for e in entries),
        bytes=sum(e.bytes for e in entries),
        skipped=dict(sorted(skipped.items())),
    )
