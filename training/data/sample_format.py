"""The WebDataset sample format of the stage shards: the one place that defines it.

The shard writer (training/data/shard_writer.py), the precompute step (training/data/encode.py) and
the training loader (training/data/loader.py) all import member names, key rules, the json member
model and the index model from here, so they cannot disagree. The JSON Schemas in schemas/ are
generated from the models below (`json_schemas()`).

A sample in `SHARDS/<stage>/<split>/NNNNNN.tar` is four tar members sharing one key:

    <clip_id>.json   SampleMeta: source, clip times, scores, every caption variant, stage, frames
    <clip_id>.mp4    H.264, exactly `frames` frames of width x height at the stage fps
    <clip_id>.txt    the caption used for training (UTF-8)

A derived (precomputed) sample in `LATENTS/<stage>/<split>/NNNNNN.tar` has the same key, json and
txt plus `latents.npy` (VAE posterior mean, [C, T', H', W'], unscaled) and `text_emb.npy` (last
hidden state of the text encoder, [L, D], unpadded). npy decodes with allow_pickle=False in both
webdataset and datasets; nothing is ever pickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

FORMAT = "videojp.sample.v1"
SAMPLE_SCHEMA = "sample_json.v1"
INDEX_SCHEMA = "shard_index.v1"

# Member (field) names: webdataset splits `<key>.<field>` at the FIRST dot of the basename.
KEY = "__key__"
MP4 = "mp4"
TXT = "txt"
JSON = "json"
LATENTS = "latents.npy"
TEXT_EMB = "text_emb.npy"
VIDEO_MEMBERS = (JSON, MP4, TXT)
LATENT_MEMBERS = (JSON, LATENTS, TEXT_EMB, TXT)

SPLITS = ("train", "eval")
# Stage layout: <stage>/<split>/NNNNNN.tar hold nothing but tars, so any WebDataset client (and
# `datasets.load_dataset("<stage>")`, which skips "__" folders) takes a split folder untouched.
# Everything else lives in <stage>/__index__/: <split>.json (ShardIndex), samples.parquet (every
# clip considered: split, shard or skip reason) and records/<split>/NNNNNN.json (resume).
META_DIR = "__index__"

# Why a kept clip is not in a stage's shards; recorded per clip in samples.parquet and counted in
# the index. Nothing is stretched, padded or duplicated silently to make a clip fit.
SkipReason = Literal[
    "unsafe_key",  # clip id not WebDataset-safe (dots, slashes): would split into wrong members
    "no_caption",  # no usable caption (and no allowed fallback)
    "missing_file",  # clip file not found
    "unsafe_path",  # clip_path absolute, a URL or '..' above the curation output: never opened
    "unreadable",  # clip file does not open / has no video stream
    "too_short",  # fewer source frames than the stage's frames at its fps need
    "low_fps",  # source fps below the stage fps: frames would repeat
    "too_small",  # content smaller than the stage size (beyond max_upscale)
    "aspect_mismatch",  # center crop would keep less than min_area_kept of the content
    "decode_error",  # decoding failed or ended early while writing
]

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_SHARD_RE = re.compile(r"^(\d{6})\.tar$")


def is_safe_key(key: str) -> bool:
    return bool(_KEY_RE.match(key))


def check_key(key: str) -> str:
    """A WebDataset-safe key: no dots (the key ends at the first dot), no slashes, not empty."""
    if not _KEY_RE.match(key):
        raise ValueError(f"sample key {key!r} is not WebDataset-safe (allowed: letters, digits, _ and -)")
    return key


def index_path(stage_dir: str | os.PathLike[str], split: str) -> str:
    return os.path.join(stage_dir, META_DIR, f"{split}.json")


def samples_path(stage_dir: str | os.PathLike[str]) -> str:
    return os.path.join(stage_dir, META_DIR, "samples.parquet")


def record_path(stage_dir: str | os.PathLike[str], split: str, name: str) -> str:
    return os.path.join(stage_dir, META_DIR, "records", split, name.removesuffix(".tar") + ".json")


def shard_name(index: int) -> str:
    return f"{index:06d}.tar"


def shard_number(name: str) -> int | None:
    m = _SHARD_RE.match(name)
    return int(m.group(1)) if m else None


def dumps(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, UTF-8, no spaces): same object, same bytes."""
    return json.dumps(
        obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode()


def config_hash(payload: Any) -> str:
    return hashlib.sha256(dumps(payload)).hexdigest()[:16]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class CaptionVariant(_Model):
    """One caption of a clip as the captioning manifest has it (latest row per caption type)."""

    caption: str | None
    status: str = Field(description="ok | rejected | error (only ok captions are used for txt)")
    reason: str | None = None
    model_id: str | None = None
    model_revision: str | None = None
    backend: str | None = None
    prompt_id: str | None = None
    prompt_version: int | None = None
    japanese_ratio: float | None = None
    kana_ratio: float | None = None
    latin_ratio: float | None = None
    length: int | None = None
    repetition: float | None = None
    truncated: bool | None = None
    config_hash: str | None = None


class ClipInfo(_Model):
    """Where the frames come from: the curated clip and its place in the source video."""

    clip_path: str = Field(description="relative to the curation output folder")
    start_s: float = Field(description="clip start, seconds from the first frame of the source video")
    end_s: float
    fps: float = Field(description="frame rate of the clip file")
    n_frames: int = Field(description="frames in the clip file")
    width: int = Field(description="clip file width (may be downscaled from the source)")
    height: int
    source_width: int | None = None
    source_height: int | None = None
    crop_box: tuple[float, float, float, float] = Field(
        description="letterbox crop as fractions of the frame: top, bottom, left, right"
    )
    decision_hash: str | None = None


class Window(_Model):
    """The frames taken and how they were made into the stage size."""

    frame_indices: list[int] = Field(description="indices into the clip file's frames (decode order)")
    start_s: float = Field(description="first frame, seconds from the start of the source video")
    end_s: float = Field(description="end of the last frame, seconds from the start of the source video")
    region: tuple[int, int, int, int] = Field(
        description="x0, y0, x1, y1 in clip-file pixels: letterbox crop then center crop to the stage aspect"
    )
    scale: float = Field(description="stage size / region size (<= 1 is a downscale)")


class LatentInfo(_Model):
    """What the precompute step stored next to a sample."""

    vae: str
    vae_scaling_factor: float
    latents_shape: list[int]
    latents_dtype: str
    latents_kind: Literal["posterior_mean"] = "posterior_mean"
    text_encoder: str
    text_max_length: int
    text_len: int = Field(description="tokens in text_emb (no padding stored)")
    text_emb_dtype: str
    encode_hash: str
    # Which VAE made the latents (training.vae.latent_record; absent in shards encoded before): the
    # trainer checks a run's vae config against them (training.vae.check_latent_vae).
    vae_cls: str | None = Field(None, description="module:Class of the encoding VAE")
    vae_preset: str | None = Field(None, description="its preset (cogvideox | ltx), null for another class")
    vae_revision: str | None = None
    vae_compression: list[int] | None = Field(None, description="[spatial, temporal] compression of the VAE")


class SampleMeta(_Model):
    """The json member of every sample (schema sample_json.v1)."""

    format: Literal["videojp.sample.v1"] = FORMAT
    key: str
    clip_id: str
    video_id: str
    source: str
    stage: str
    split: Literal["train", "eval"]
    width: int
    height: int
    frames: int
    fps: float = Field(description="stage frame rate: the mp4's rate")
    clip: ClipInfo
    window: Window
    scores: dict[str, float | None] = Field(default_factory=dict)
    caption: str = Field(description="the txt member")
    caption_field: str = Field(description="where txt came from: captions.<type> or source_caption")
    captions: dict[str, CaptionVariant] = Field(
        default_factory=dict, description="every caption variant of the clip, by caption type"
    )
    source_caption: str | None = Field(None, description="original (English) caption, e.g. Pixabay's")
    seed: int
    config_hash: str = Field(description="hash of the stage preset, split, caption choice and seed")
    package_version: str
    latents: LatentInfo | None = Field(None, description="set in derived (precomputed) shards only")


class ShardEntry(_Model):
    name: str = Field(description="file name in the split folder, e.g. 000000.tar")
    samples: int
    bytes: int
    sha256: str
    plan_hash: str = Field(description="hash of the config and the samples planned for this shard")


class SampleTableRef(_Model):
    """The split's columnar sample table (training/data/sample_table.py), beside the index."""

    format: Literal["videojp.sample_table.v1"] = "videojp.sample_table.v1"
    name: str = Field(description="file in __index__/, e.g. train.samples.<sha256[:16]>.arrow")
    rows: int = Field(description="one row per sample, shards in index order, samples in tar order")
    bytes: int
    sha256: str


class IndexHead(_Model):
    """The leading fields of every split index the sample table and stream read (stage shards'
    ShardIndex, pair shards' PairIndex). Subclasses narrow schema_version, format and split to
    their literals; a narrowed field keeps its place, so both indexes keep this order."""

    schema_version: str
    format: str
    kind: Literal["video", "latents"] = "video"
    stage: str
    split: str
    width: int
    height: int
    frames: int
    fps: float
    members: list[str]
    config_hash: str
    seed: int
    package_version: str
    preset: dict[str, Any]


class ShardIndex(IndexHead):
    """<stage>/__index__/<split>.json (schema shard_index.v1): the commit record of a split."""

    schema_version: Literal["shard_index.v1"] = INDEX_SCHEMA
    format: Literal["videojp.sample.v1"] = FORMAT
    split: Literal["train", "eval"]
    preset: dict[str, Any] = Field(description="the stage preset the shards were written with")
    shards: list[ShardEntry]
    samples: int
    bytes: int
    skipped: dict[str, int] = Field(
        default_factory=dict, description="clips of this split left out, by reason"
    )
    encode: dict[str, Any] | None = Field(None, description="precompute settings (latents only)")
    sample_table: SampleTableRef | None = Field(
        None, description="byte range of every sample (absent in indexes written before it existed)"
    )


class ShardRecord(_Model):
    """__index__/records/<split>/NNNNNN.json: written once its shard is renamed into place (resume)."""

    split: Literal["train", "eval"]
    entry: ShardEntry
    keys: list[str]
    ranges: list[tuple[int, int]] = Field(
        default_factory=list,
        description="per key: byte offset of its first member header and bytes through its last member",
    )
    skipped: dict[str, str] = Field(
        default_factory=dict, description="clip_id -> reason, found while writing"
    )


# ---- reading members -------------------------------------------------------------------------
def decode_mp4(data: bytes, threads: int = 1) -> np.ndarray:
    """All frames of an mp4 member as uint8 [T, H, W, 3] RGB (PyAV; torchvision.read_video is gone)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError("mp4 member has no frames")
    return np.stack(frames)


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def dump_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def parse_meta(data: bytes | str | dict[str, Any]) -> SampleMeta:
    if isinstance(data, dict):
        return SampleMeta.model_validate(data)
    return SampleMeta.model_validate_json(data)


def json_schemas() -> dict[str, dict]:
    from training.data.stages import ShardConfig

    return {
        SAMPLE_SCHEMA: SampleMeta.model_json_schema(),
        INDEX_SCHEMA: ShardIndex.model_json_schema(),
        "shard_config.v1": ShardConfig.model_json_schema(),
    }


def read_index(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> ShardIndex:
    """A split's index (``<stage>/__index__/<split>.json``, a path or an fsspec URL), validated;
    a missing or malformed index is an error naming the file."""
    from pydantic import ValidationError

    from training.data.store import read_bytes

    data = read_bytes(os.fspath(path), storage_options)
    try:
        return ShardIndex.model_validate_json(data)
    except ValidationError as e:
        raise ValueError(f"{os.fspath(path)}: not a valid shard index ({e.error_count()} errors: {e})") from e
