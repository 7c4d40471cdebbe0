"""Preference pairs -> pair shards the trainer streams (`vjp pairs`; format: training/data/pair_format.py).

    plans, errors = plan_pairs(prefs, "stage1", cfg)          # probe both videos, no decoding
    summary = write_pair_shards(plans, errors, out, "stage1", cfg, source, encode=False)

Planning probes both videos of every pair and fixes how each is fitted to the stage with the stage
shards' own functions (shard_writer.frame_window, crop_region): a video that already is an H.264
mp4 of the stage's frames, size and fps (what `vjp sample` writes at the training size) is stored
byte for byte; any other is windowed, center-cropped, scaled and re-encoded like a stage sample.
A pair whose video is missing, unreadable, too short, too slow or too small becomes an error row
naming the file and the reason; the rest go on. Shards are cut from the pairs in input order and
written through shard_writer.write_shard_files (tar whole or not at all, then its record), so a
rerun reuses every shard whose plan (pairs, stage, encoder settings) is unchanged, and the same
inputs give the same bytes (passthrough videos and the encoder's floats at a fixed thread count).
With `encode`, both sides go through `vjp encode`'s Encoders (VAE posterior mean, standardised)
and the prompt through its text encoder, so latent pair shards match latent stage shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from curation.configfile import package_version
from training.data import store
from training.data.pair_format import (
    CHOSEN_LATENTS,
    CHOSEN_MP4,
    PAIR_LATENT_MEMBERS,
    PAIR_VIDEO_MEMBERS,
    REJECTED_LATENTS,
    REJECTED_MP4,
    ROWS,
    SIDES,
    PairIndex,
    PairMeta,
    PairRow,
    PairSide,
)
from training.data.pairs import Preference
from training.data.sample_format import (
    JSON,
    META_DIR,
    TEXT_EMB,
    TXT,
    LatentInfo,
    ShardRecord,
    config_hash,
    decode_mp4,
    dump_npy,
    dumps,
    shard_name,
)
from training.data.shard_writer import (
    crop_region,
    encode_mp4,
    frame_window,
    load_window,
    probe_clip,
    shard_is_done,
    write_shard_files,
    write_split_index,
)
from training.data.stages import ShardConfig, StagePreset
from training.vae import vae_location

SPLIT = "train"


def pair_key(p: Preference) -> str:
    """A WebDataset-safe key from the pair's content: the same pair gets the same key in any run."""
    h = hashlib.sha256("\x00".join((p.prompt, p.chosen, p.rejected)).encode()).hexdigest()
    return f"pair_{h[:20]}"


def pair_config_hash(stage_name: str, stage: StagePreset, seed: int) -> str:
    """Everything that changes how a pair is fitted to the stage (not which pairs there are)."""
    return config_hash(
        {
            "format": "videojp.pair.v1",
            "stage": stage_name,
            "preset": stage.model_dump(mode="json"),
            "seed": seed,
        }
    )


def _is_h264_mp4(path: str) -> bool:
    import av

    try:
        with av.open(path) as c:
            st = c.streams.video[0]
            return "mp4" in c.format.name and st.codec_context.name == "h264" and st.format.name == "yuv420p"
    except Exception:
        return False


def plan_side(path: str, stage: StagePreset, seed: int, key: str) -> PairSide | str:
    """How one video becomes the stage's frames, or the reason it cannot (a SkipReason)."""
    probe = probe_clip(path)
    if isinstance(probe, str):
        return probe
    exact = (
        (probe.width, probe.height, probe.n_frames) == (stage.width, stage.height, stage.frames)
        and abs(probe.fps - stage.fps) < 1e-3
        and _is_h264_mp4(path)
    )
    if exact:
        indices: list[int] | str = list(range(stage.frames))
        region: Any = ((0, 0, stage.width, stage.height), 1.0)
    else:
        # both sides of a pair share the key, so two equally long candidates give the same moment
        indices = frame_window(probe.n_frames, probe.fps, stage, seed, key)
        region = crop_region(probe.width, probe.height, (0.0, 0.0, 0.0, 0.0), stage)
    if isinstance(indices, str):
        return indices
    if isinstance(region, str):
        return region
    box, scale = region
    return PairSide(
        path=path,
        size_bytes=probe.size_bytes,
        width=probe.width,
        height=probe.height,
        n_frames=probe.n_frames,
        fps=probe.fps,
        passthrough=exact,
        frame_indices=indices,
        region=box,
        scale=scale,
    )


@dataclass(frozen=True)
class PairPlan:
    meta: PairMeta

    @property
    def key(self) -> str:
        return self.meta.key


@dataclass(frozen=True)
class PairShardPlan:
    """A shard of pairs; split/name/plan_hash as shard_writer.ShardPlan, so its resume check applies."""

    index: int
    pairs: tuple[PairPlan, ...]
    encode_hash: str | None
    split: str = SPLIT

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def plan_hash(self) -> str:
        return config_hash(
            {"pairs": [p.meta.model_dump(mode="json") for p in self.pairs], "encode": self.encode_hash}
        )


def plan_pairs(
    prefs: Sequence[Preference], stage_name: str, cfg: ShardConfig
) -> tuple[list[PairPlan], list[PairRow]]:
    """(plans in input order, error rows): probes both videos of every pair; nothing is decoded."""
    stage = cfg.stage(stage_name)
    chash = pair_config_hash(stage_name, stage, cfg.seed)
    plans: list[PairPlan] = []
    errors: list[PairRow] = []
    seen: set[str] = set()
    for p in prefs:
        key = pair_key(p)
        sides: dict[str, PairSide] = {}
        reason = f"the same pair as an earlier input ({key})" if key in seen else None
        for side in SIDES if reason is None else ():
            path = getattr(p, side)
            got = plan_side(path, stage, cfg.seed, key)
            if isinstance(got, str):
                reason = f"{side} video {path}: {got}"
                break
            sides[side] = got
        if reason is not None:
            errors.append(
                PairRow(
                    source=p.source,
                    status="error",
                    key=key,
                    prompt=p.prompt,
                    chosen=p.chosen,
                    rejected=p.rejected,
                    reason=reason,
                )
            )
            continue
        seen.add(key)
        meta = PairMeta(
            key=key,
            prompt=p.prompt,
            caption=p.prompt,
            source=p.source,
            votes=p.votes,
            stage=stage_name,
            width=stage.width,
            height=stage.height,
            frames=stage.frames,
            fps=stage.fps,
            chosen=sides["chosen"],
            rejected=sides["rejected"],
            seed=cfg.seed,
            config_hash=chash,
            package_version=package_version(),
        )
        plans.append(PairPlan(meta))
    return plans, errors


def group_pairs(plans: Sequence[PairPlan], per_shard: int, encode_hash: str | None) -> list[PairShardPlan]:
    """Shards in input order: appending pairs to the input rewrites only the last shard and adds new ones."""
    return [
        PairShardPlan(i // per_shard, tuple(plans[i : i + per_shard]), encode_hash)
        for i in range(0, len(plans), per_shard)
    ]


def render_side(side: PairSide, stage: StagePreset) -> bytes:
    """The side's mp4 bytes at the stage: the file itself when it already fits, else re-encoded."""
    if side.passthrough:
        with open(side.path, "rb") as f:
            return f.read()
    frames = load_window(side.path, side.frame_indices, side.region, stage.width, stage.height)
    return encode_mp4(frames, stage.fps, stage.codec, stage.crf, stage.preset)


def render_pair(
    plan: PairPlan, stage: StagePreset, enc: Any = None, encode_hash: str | None = None
) -> dict[str, Any]:
    """The tar members of one pair: both videos (or, with encoders, both latents and the prompt's
    text embedding)."""
    meta = plan.meta
    videos = [render_side(getattr(meta, s), stage) for s in SIDES]
    for side, data in zip(SIDES, videos, strict=True):  # what the trainer will decode, checked now
        n = decode_mp4(data).shape
        if n != (stage.frames, stage.height, stage.width, 3):
            raise ValueError(f"{side} video {getattr(meta, side).path}: decodes to {n}")
    if enc is None:
        return {
            "__key__": meta.key,
            JSON: dumps(meta.model_dump(mode="json")),
            TXT: meta.prompt.encode("utf-8"),
            CHOSEN_MP4: videos[0],
            REJECTED_MP4: videos[1],
        }
    frames = [decode_mp4(v) for v in videos]  # the decoded mp4s: the frames the pixel path would see
    lat = [
        x
        for i in range(0, 2, enc.cfg.vae_batch_size)
        for x in enc.encode_videos(frames[i : i + enc.cfg.vae_batch_size])
    ]
    [emb] = enc.encode_texts([meta.prompt])
    cfg = enc.cfg
    info = LatentInfo(
        vae=vae_location(cfg.vae, cfg.vae_subfolder),
        vae_scaling_factor=enc.scaling_factor,
        latents_shape=list(lat[0].shape),
        latents_dtype=str(lat[0].dtype),
        text_encoder=cfg.text_encoder,
        text_max_length=cfg.text_max_length,
        text_len=int(emb.shape[0]),
        text_emb_dtype=str(emb.dtype),
        encode_hash=encode_hash or "",
        **enc.vae_record,  # which VAE encoded them (class, preset, revision): check_latent_vae reads it
    )
    meta = meta.model_copy(update={"latents": info})
    return {
        "__key__": meta.key,
        JSON: dumps(meta.model_dump(mode="json")),
        TXT: meta.prompt.encode("utf-8"),
        CHOSEN_LATENTS: dump_npy(lat[0]),
        REJECTED_LATENTS: dump_npy(lat[1]),
        TEXT_EMB: dump_npy(emb),
    }


def write_pair_shard(
    shard: PairShardPlan, out: str, stage_name: str, stage: StagePreset, enc: Any, so: Mapping[str, Any]
) -> ShardRecord:
    """One shard: render every pair (a failure costs that pair: record.skipped names it and why),
    write the tar whole or not at all, then its record."""
    skipped: dict[str, str] = {}

    def samples() -> Any:
        for plan in shard.pairs:
            try:
                yield render_pair(plan, stage, enc, shard.encode_hash)
            except Exception as e:
                skipped[plan.key] = f"decode_error: {type(e).__name__}: {e}"

    return write_shard_files(out, stage_name, SPLIT, shard.name, samples(), shard.plan_hash, skipped, so)


def write_pair_shards(
    plans: Sequence[PairPlan],
    errors: Sequence[PairRow],
    out: str,
    stage_name: str,
    cfg: ShardConfig,
    source: str,
    encode: bool = False,
    per_shard: int = 500,
    encoders: Any = None,
) -> dict[str, Any]:
    """Write (or reuse) the shards, then pairs.jsonl, then the sample table and index (the commit)."""
    stage = cfg.stage(stage_name)
    so = cfg.storage_options
    chash = pair_config_hash(stage_name, stage, cfg.seed)
    encode_hash = cfg.encode_hash(chash) if encode else None
    shards = group_pairs(plans, per_shard, encode_hash)
    records: dict[str, ShardRecord] = {}
    todo = []
    for s in shards:
        rec = shard_is_done(s, out, stage_name, storage_options=so)  # type: ignore[arg-type]
        if rec is None:
            todo.append(s)
        else:
            records[s.name] = rec
    enc = encoders
    if todo and encode and enc is None:
        from training.data.encode import Encoders

        enc = Encoders(cfg.encode)
    for s in todo:
        records[s.name] = write_pair_shard(s, out, stage_name, stage, enc if encode else None, so)
    stage_dir = store.join(out, stage_name)
    rows = list(errors)
    for s in shards:
        rec = records[s.name]
        for p in s.pairs:
            m = p.meta
            why = rec.skipped.get(p.key)
            rows.append(
                PairRow(
                    source=m.source,
                    status="error" if why else "ok",
                    key=p.key,
                    shard=None if why else s.name,
                    prompt=m.prompt,
                    chosen=m.chosen.path,
                    rejected=m.rejected.path,
                    reason=why,
                )
            )
    rows.sort(key=lambda r: _source_order(r.source))
    body = "".join(
        json.dumps(r.model_dump(mode="json", exclude_none=True), ensure_ascii=False, sort_keys=True) + "\n"
        for r in rows
    )
    store.write_bytes(store.join(stage_dir, META_DIR, ROWS), body.encode("utf-8"), so)
    entries = [records[s.name].entry for s in shards if records[s.name].entry.samples]
    kept = {s.name for s in shards if records[s.name].entry.samples}
    summary: dict[str, Any] = {
        "out": stage_dir,
        "pairs": sum(records[n].entry.samples for n in kept),
        "errors": sum(r.status == "error" for r in rows),
        "shards_written": len(todo),
        "shards_reused": len(shards) - len(todo),
        "kind": "latents" if encode else "video",
    }
    if not entries:  # no usable pair: no index (an older one would name pairs this input no longer has)
        old = store.join(stage_dir, META_DIR, f"{SPLIT}.json")
        if store.exists(old, so):
            store.remove(old, so)
        return summary
    index = PairIndex(
        kind="latents" if encode else "video",
        stage=stage_name,
        width=stage.width,
        height=stage.height,
        frames=stage.frames,
        fps=stage.fps,
        members=list(PAIR_LATENT_MEMBERS if encode else PAIR_VIDEO_MEMBERS),
        config_hash=chash,
        seed=cfg.seed,
        package_version=package_version(),
        preset=stage.model_dump(mode="json"),
        source=source,
        shards=entries,
        samples=sum(e.samples for e in entries),
        bytes=sum(e.bytes for e in entries),
        errors=summary["errors"],
        encode={**cfg.encode.model_dump(mode="json"), "encode_hash": encode_hash} if encode else None,
    )
    write_split_index(stage_dir, index, {n: records[n] for n in kept}, so)  # type: ignore[arg-type]
    return summary


def _source_order(source: str) -> tuple[str, int, str]:
    """Rows in input order: FILE:line by line number, STUDY:key by key."""
    head, _, tail = source.rpartition(":")
    return (head, int(tail), "") if tail.isdigit() else (head, 0, tail)


def read_rows(stage_dir: str) -> list[PairRow]:
    with open(os.path.join(stage_dir, META_DIR, ROWS), encoding="utf-8") as f:
        return [PairRow.model_validate_json(line) for line in f if line.strip()]
