"""Optional precompute: frozen VAE latents and text embeddings -> derived shards (`vjp encode`).

    SHARDS/<stage>/<split>/NNNNNN.tar  ->  LATENTS/<stage>/<split>/NNNNNN.tar (+ __index__/<split>.json)

Each derived sample keeps the key, json and txt of its video sample and adds `latents.npy` (the
VAE posterior mean [C, T', H', W'], unscaled: multiply by json latents.vae_scaling_factor) and
`text_emb.npy` (last hidden state [L, D] of the real tokens only; the loader pads with zeros and
returns a mask, so trainer and sampler must mask padding the same way). npy, never pickle.

The models load once per worker (`Encoders`), on the GPU when there is one; `encode_shard` is the
per-shard function, run in-process (`--runner local`) or by a Ray actor pool (jobs/encode.py).
A shard is redone only when its source shard's sha256 or the encode settings change.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from curation.configfile import package_version
from training.data import store
from training.data.sample_format import (
    JSON,
    LATENT_MEMBERS,
    LATENTS,
    MP4,
    SPLITS,
    TEXT_EMB,
    TXT,
    LatentInfo,
    ShardEntry,
    ShardIndex,
    ShardRecord,
    config_hash,
    decode_mp4,
    dump_npy,
    dumps,
    index_path,
    parse_meta,
    read_index,
)
from training.data.shard_writer import read_record, split_dir, write_shard_files, write_split_index
from training.data.stages import EncodeConfig
from training.vae import vae_location

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def resolve_device(cfg: EncodeConfig) -> tuple[str, str]:
    """(device, dtype): GPU when present (or asked for), float32 on CPU (no fast half kernels)."""
    import torch

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"encode.device={cfg.device!r} but CUDA is not available")
    return device, (cfg.dtype if device.startswith("cuda") else "float32")


class Encoders:
    """The frozen VAE and text encoder, loaded once per worker (setup), used per batch (process).
    The text side is the trainer's own `training.modeling.TextEncoder` (last hidden layer)."""

    def __init__(self, cfg: EncodeConfig) -> None:
        import torch

        from training.config import TextConfig
        from training.modeling import TextEncoder
        from training.vae import latent_record, vae_class

        self.cfg = cfg
        self.device, dtype_name = resolve_device(cfg)
        self.dtype = getattr(torch, _DTYPES[dtype_name])
        self.vae = (
            vae_class(cfg.vae_cls)
            .from_pretrained(
                cfg.vae, subfolder=cfg.vae_subfolder, revision=cfg.vae_revision, torch_dtype=self.dtype
            )
            .to(self.device)
        )
        self.vae.eval().requires_grad_(False)
        if cfg.vae_tiling:
            self.vae.enable_tiling()
        self.text = TextEncoder(
            TextConfig(
                model=cfg.text_encoder, revision=cfg.text_encoder_revision, max_length=cfg.text_max_length
            ),
            self.device,
            self.dtype,
        )
        self.scaling_factor = float(self.vae.config.scaling_factor)
        # recorded in every sample's latents info: which VAE (class, preset, revision, compression)
        self.vae_record = latent_record(cfg.vae_cls, cfg.vae_revision, self.vae)

    def encode_videos(self, videos: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 [T, H, W, 3] clips -> VAE posterior means [C, T', H', W'] (store dtype)."""
        import torch

        from training.data.loader import video_tensor

        x = torch.stack([video_tensor(v) for v in videos]).permute(0, 2, 1, 3, 4)  # B, C, T, H, W
        from training.vae import normalize

        with torch.inference_mode():  # LTX: per-channel standardised, as the trainer's VAE.encode
            mean = normalize(self.vae, self.vae.encode(x.to(self.device, self.dtype)).latent_dist.mean)
        return [m.float().cpu().numpy().astype(self.cfg.store_dtype) for m in mean]

    def encode_texts(self, captions: Sequence[str]) -> list[np.ndarray]:
        """Captions -> last hidden states [L_i, D] of the real tokens (max_length, truncated)."""
        return [
            h.float().cpu().numpy().astype(self.cfg.store_dtype) for h in self.text.encode_unpadded(captions)
        ]


def _raw_samples(path: str, storage_options: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Samples of one tar in stored order, members as bytes (webdataset's own tar reader), read
    sequentially from a local file or an object of a store (no local copy)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with store.open_input(path, storage_options) as f:
        yield from group_by_keys(tar_file_expander([{"url": path, "stream": f}]))


def _chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def encode_samples(samples: list[dict[str, Any]], enc: Encoders, encode_hash: str) -> list[dict[str, Any]]:
    """Video samples (raw members) -> derived samples with latents and text embeddings."""
    cfg = enc.cfg
    metas = [parse_meta(s[JSON]) for s in samples]
    captions = [s[TXT].decode("utf-8") for s in samples]
    latents: list[np.ndarray] = []
    for chunk in _chunks(samples, cfg.vae_batch_size):
        latents += enc.encode_videos([decode_mp4(s[MP4]) for s in chunk])
    embs: list[np.ndarray] = []
    for chunk in _chunks(captions, cfg.text_batch_size):
        embs += enc.encode_texts(chunk)
    out = []
    for meta, caption, lat, emb in zip(metas, captions, latents, embs, strict=True):
        info = LatentInfo(
            vae=vae_location(cfg.vae, cfg.vae_subfolder),
            vae_scaling_factor=enc.scaling_factor,
            latents_shape=list(lat.shape),
            latents_dtype=str(lat.dtype),
            text_encoder=cfg.text_encoder,
            text_max_length=cfg.text_max_length,
            text_len=int(emb.shape[0]),
            text_emb_dtype=str(emb.dtype),
            encode_hash=encode_hash,
            **enc.vae_record,
        )
        derived = meta.model_copy(update={"latents": info})
        out.append(
            {
                "__key__": meta.key,
                JSON: dumps(derived.model_dump(mode="json")),
                TXT: caption.encode("utf-8"),
                LATENTS: dump_npy(lat),
                TEXT_EMB: dump_npy(emb),
            }
        )
    return out


def stage_name(shards_dir: str) -> str:
    """The stage of a stage folder (SHARDS/<stage>, a path or a URL)."""
    if store.is_url(shards_dir):
        return posixpath.basename(shards_dir.rstrip("/"))
    return os.path.basename(os.path.normpath(store.local_path(shards_dir)))


def plan_hash(source: ShardEntry, encode_hash: str) -> str:
    return config_hash({"source_sha256": source.sha256, "encode": encode_hash})


def encode_shard(
    src_path: str,
    out: str,
    stage: str,
    split: str,
    name: str,
    phash: str,
    enc: Encoders,
    encode_hash: str,
    storage_options: dict[str, Any] | None = None,
) -> ShardRecord:
    """One derived shard: batches through the encoders, written whole or not at all (a folder or
    an fsspec URL), then its record with every sample's byte range (the sample table's rows)."""
    samples = list(_raw_samples(src_path, storage_options))
    derived = encode_samples(samples, enc, encode_hash) if samples else []
    return write_shard_files(out, stage, split, name, derived, phash, storage_options=storage_options)


def plan_encode(
    shards_dir: str,
    out: str,
    encode_hash: str,
    splits: Sequence[str] = SPLITS,
    storage_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One job per source shard that has no identical derived shard yet (resume). `shards_dir` (the
    stage folder of vjp shard) and `out` may each be a folder or an fsspec URL."""
    stage = stage_name(shards_dir)
    jobs = []
    for split in splits:
        path = index_path(shards_dir, split)
        if not store.exists(path, storage_options):
            continue
        index = read_index(path, storage_options)
        if index.kind != "video":
            raise ValueError(f"{path} indexes {index.kind} shards; encode reads video shards")
        for entry in index.shards:
            phash = plan_hash(entry, encode_hash)
            rec = read_record(out, stage, split, entry.name, storage_options)
            done_path = store.join(split_dir(out, stage, split), entry.name)
            done = (
                rec is not None
                and rec.entry.plan_hash == phash
                and store.exists(done_path, storage_options)
                and store.size(done_path, storage_options) == rec.entry.bytes
            )
            jobs.append(
                {
                    "src": store.join(shards_dir, split, entry.name),
                    "stage": stage,
                    "split": split,
                    "name": entry.name,
                    "plan_hash": phash,
                    "done": done,
                }
            )
    return jobs


def write_latent_indexes(
    shards_dir: str,
    out: str,
    cfg: EncodeConfig,
    encode_hash: str,
    records: dict[tuple[str, str], ShardRecord],
    storage_options: dict[str, Any] | None = None,
) -> dict[str, ShardIndex]:
    """The sample table and index per split of the derived shards (index last: the commit record),
    copying stage facts from the source index."""
    stage = stage_name(shards_dir)
    result = {}
    for split in SPLITS:
        path = index_path(shards_dir, split)
        if not store.exists(path, storage_options):
            continue
        src = read_index(path, storage_options)
        entries = [records[(split, e.name)].entry for e in src.shards if (split, e.name) in records]
        index = src.model_copy(
            update={
                "kind": "latents",
                "members": list(LATENT_MEMBERS),
                "shards": entries,
                "samples": sum(e.samples for e in entries),
                "bytes": sum(e.bytes for e in entries),
                "package_version": package_version(),
                "encode": {**cfg.model_dump(mode="json"), "encode_hash": encode_hash, "source": shards_dir},
            }
        )
        recs = {e.name: records[(split, e.name)] for e in entries}
        result[split] = write_split_index(store.join(out, stage), index, recs, storage_options)
    return result
