"""The WebDataset format of Video-DPO pair shards (`vjp pairs`): the one place that defines it.

    PAIRS/<stage>/train/NNNNNN.tar       one sample per preference pair
    PAIRS/<stage>/__index__/train.json   PairIndex (schema pair_index.v1), the commit record
    PAIRS/<stage>/__index__/train.samples.<sha>.arrow   the sample table (the seekable stream's)
    PAIRS/<stage>/__index__/pairs.jsonl  one PairRow per input pair: ok (its shard) or error (why)

A pair sample shares one key across its members:

    <key>.json                 PairMeta: prompt, both source videos and how each was fitted to the stage
    <key>.txt                  the prompt (UTF-8)
    <key>.chosen.mp4           video kind: both sides at the stage's frames, size and fps (H.264)
    <key>.rejected.mp4
    <key>.chosen.latents.npy   latents kind (--encode): VAE posterior means [C, F', H', W'], unscaled,
    <key>.rejected.latents.npy   standardised per channel as `vjp encode` stores them
    <key>.text_emb.npy         the prompt's last hidden state [L, D], unpadded (as `vjp encode`)

The json carries frames/height/width/fps (and `latents.vae_scaling_factor`) where a stage sample's
json has them, so the trainer reads a pair shard's geometry the same way as a stage shard's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from training.data.sample_format import (
    JSON,
    TEXT_EMB,
    TXT,
    IndexHead,
    LatentInfo,
    SampleTableRef,
    ShardEntry,
)

PAIR_FORMAT = "videojp.pair.v1"
PAIR_INDEX_SCHEMA = "pair_index.v1"
PAIR_JSON_SCHEMA = "pair_json.v1"
PAIR_ROW_SCHEMA = "pair_row.v1"
ROWS = "pairs.jsonl"

CHOSEN_MP4 = "chosen.mp4"
REJECTED_MP4 = "rejected.mp4"
CHOSEN_LATENTS = "chosen.latents.npy"
REJECTED_LATENTS = "rejected.latents.npy"
PAIR_VIDEO_MEMBERS = (JSON, CHOSEN_MP4, REJECTED_MP4, TXT)
PAIR_LATENT_MEMBERS = (JSON, CHOSEN_LATENTS, REJECTED_LATENTS, TEXT_EMB, TXT)
SIDES = ("chosen", "rejected")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class PairSide(_Model):
    """One video of a pair: where it is and how its frames were made into the stage's."""

    path: str = Field(description="absolute path of the source video")
    size_bytes: int = Field(description="file size when planned: a changed file changes the plan")
    width: int
    height: int
    n_frames: int
    fps: float
    passthrough: bool = Field(
        description="the file already is an H.264 mp4 of the stage's frames, size and fps: its bytes are "
        "stored as they are (no re-encode, no generation loss)"
    )
    frame_indices: list[int] = Field(description="source frames taken (decode order)")
    region: tuple[int, int, int, int] = Field(description="x0, y0, x1, y1: center crop to the stage aspect")
    scale: float


class PairMeta(_Model):
    """The json member of a pair sample (schema pair_json.v1)."""

    format: Literal["videojp.pair.v1"] = PAIR_FORMAT
    key: str
    prompt: str
    caption: str = Field(description="the txt member (the prompt): the name the stage samples use")
    source: str = Field(description="where the pair came from: FILE:line or STUDY:key")
    votes: int = Field(description="raters behind the preference (1 for a user pair)")
    stage: str
    split: Literal["train"] = "train"
    width: int
    height: int
    frames: int
    fps: float
    chosen: PairSide
    rejected: PairSide
    seed: int
    config_hash: str
    package_version: str
    latents: LatentInfo | None = Field(None, description="latents kind: what the encoder stored")


class PairIndex(IndexHead):
    """<stage>/__index__/train.json of pair shards (schema pair_index.v1); read by the same sample
    table and stream as a stage's ShardIndex."""

    schema_version: Literal["pair_index.v1"] = PAIR_INDEX_SCHEMA
    format: Literal["videojp.pair.v1"] = PAIR_FORMAT
    split: Literal["train"] = "train"
    preset: dict[str, Any] = Field(description="the stage preset the pairs were fitted to")
    source: str = Field(description="the pair JSONL or the vjp compare study the pairs came from")
    shards: list[ShardEntry]
    samples: int = Field(description="pairs in the shards")
    bytes: int
    errors: int = Field(description="input pairs left out (see pairs.jsonl)")
    encode: dict[str, Any] | None = Field(None, description="encoder settings (latents kind only)")
    sample_table: SampleTableRef | None = None


class PairRow(_Model):
    """One line of __index__/pairs.jsonl (schema pair_row.v1): every input pair, kept or not."""

    schema_version: Literal["pair_row.v1"] = PAIR_ROW_SCHEMA
    source: str = Field(description="FILE:line or STUDY:key")
    status: Literal["ok", "error"]
    key: str | None = None
    shard: str | None = Field(None, description="shard file name (ok rows)")
    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    reason: str | None = Field(None, description="error rows: the file and what is wrong with it")


def json_schemas() -> dict[str, dict[str, Any]]:
    return {
        PAIR_INDEX_SCHEMA: PairIndex.model_json_schema(),
        PAIR_JSON_SCHEMA: PairMeta.model_json_schema(),
        PAIR_ROW_SCHEMA: PairRow.model_json_schema(),
    }
