"""`vjp encode`: stage shards -> derived shards with VAE latents and text embeddings (optional step).

    vjp encode --shards SHARDS/stage1 --out LATENTS [--config ...] [--runner ray|local]

Writes LATENTS/<stage>/<split>/NNNNNN.tar + LATENTS/<stage>/__index__/. Models load once per
worker: in-process with `--runner local`, or one Ray actor per GPU (`--workers` CPU actors without).
Resumable: a derived shard is redone only if its source shard or the encode settings changed.
--shards and --out may each be a folder or an fsspec URL (s3://, gs://): source tars are read as
streams from the store, derived tars and indexes written as objects under final names, index last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from curation.configfile import add_set_argument, load_section
from jobs.runner import init_ray

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "shard.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shards",
        required=True,
        help="a stage folder written by vjp shard (SHARDS/stage1), a folder or an fsspec URL "
        "(s3://bucket/prefix/shards/stage1): its tars are streamed from there",
    )
    p.add_argument(
        "--out", required=True, help="root of the derived shards (LATENTS), a folder or an fsspec URL"
    )
    p.add_argument(
        "--config", default=None, help=f"YAML config, `encode` section (default: {DEFAULT_CONFIG})"
    )
    p.add_argument("--split", default="train,eval", help="comma-separated splits (default: train,eval)")
    p.add_argument("--runner", choices=["ray", "local"], default="ray", help="local = in this process")
    p.add_argument("--address", default=None, help="Ray address; default RAY_ADDRESS or embedded local Ray")
    p.add_argument("--workers", type=int, default=0, help="Ray actors (0 = one per GPU, else 1)")
    add_encoder_arguments(p)
    add_set_argument(p, "encode.text_max_length=256")


class _EncodeActor:
    """Ray actor: models loaded once (setup), then one shard per call (process)."""

    def __init__(self, cfg: Any) -> None:
        from training.data.encode import Encoders

        self.enc = Encoders(cfg)

    def process(self, job: dict[str, Any], out: str, encode_hash: str, storage_options: Any = None) -> Any:
        from training.data.encode import encode_shard

        return encode_shard(
            job["src"],
            out,
            job["stage"],
            job["split"],
            job["name"],
            job["plan_hash"],
            self.enc,
            encode_hash,
            storage_options,
        )


def encode_stage(
    shards_dir: str,
    out: str,
    cfg: Any,
    splits: list[str],
    runner: str = "ray",
    address: str | None = None,
    workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    from training.data import store
    from training.data.encode import Encoders, encode_shard, plan_encode, stage_name, write_latent_indexes
    from training.data.sample_format import index_path, read_index
    from training.data.shard_writer import read_record

    t0 = time.time()
    stage = stage_name(shards_dir)
    so = cfg.storage_options
    first = next(
        (index_path(shards_dir, s) for s in splits if store.exists(index_path(shards_dir, s), so)), None
    )
    if first is None:
        raise FileNotFoundError(f"no shard index for {splits} under {shards_dir} (run vjp shard first)")
    stage_hash = read_index(first, so).config_hash
    encode_hash = cfg.encode_hash(stage_hash)
    enc_cfg = cfg.encode
    jobs = plan_encode(shards_dir, out, encode_hash, splits, so)
    todo = [j for j in jobs if not j["done"]]
    records: dict[tuple[str, str], Any] = {}
    for j in jobs:
        if j["done"]:
            records[(j["split"], j["name"])] = read_record(out, j["stage"], j["split"], j["name"], so)
    failed: list[str] = []
    tick = _progress(progress, len(todo))
    if todo and runner == "local":
        enc = Encoders(enc_cfg)
        for j in todo:
            try:
                rec = encode_shard(
                    j["src"], out, stage, j["split"], j["name"], j["plan_hash"], enc, encode_hash, so
                )
                records[(j["split"], j["name"])] = rec
            except Exception as e:  # one bad shard costs that shard; the rerun retries it
                failed.append(f"{j['split']}/{j['name']}: {type(e).__name__}: {e}")
            tick()
    elif todo:
        import ray
        from ray.util import ActorPool

        init_ray(address)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        use_gpu = gpus > 0 and enc_cfg.device != "cpu"
        n = workers or (gpus if use_gpu else 1)
        actor = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=1)(_EncodeActor)
        pool = ActorPool([actor.remote(enc_cfg) for _ in range(max(1, n))])
        for j in todo:
            pool.submit(lambda a, job: a.process.remote(job, out, encode_hash, so), j)
        while pool.has_next():
            try:
                rec = pool.get_next_unordered()
                records[(rec.split, rec.entry.name)] = rec
            except Exception as e:  # the actor's error names the shard
                failed.append(f"{type(e).__name__}: {e}")
            tick()
    indexes = write_latent_indexes(shards_dir, out, enc_cfg, encode_hash, records, so)
    return {
        "stage": stage,
        "encode_hash": encode_hash,
        "shards_written": len(todo) - len(failed),
        "shards_reused": len(jobs) - len(todo),
        "failed_shards": failed,
        **{s: {"shards": len(i.shards), "samples": i.samples, "bytes": i.bytes} for s, i in indexes.items()},
        "elapsed_s": round(time.time() - t0, 2),
        "out": store.join(out, stage),
    }


def _progress(enabled: bool, total: int) -> Any:
    if not enabled or not total:
        return lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="shard", desc="encode", file=sys.stderr, dynamic_ncols=True)
    return lambda: bar.update(1)


def add_encoder_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that override the `encode:` section; read back by encode_config."""
    p.add_argument("--vae", default=None, help="override encode.vae (hub id or local folder)")
    p.add_argument("--vae-subfolder", default=None, help="override encode.vae_subfolder ('' = none)")
    p.add_argument("--text-encoder", default=None, help="override encode.text_encoder")
    p.add_argument("--device", default=None, help="override encode.device (auto | cpu | cuda | cuda:N)")


def encode_config(args: argparse.Namespace) -> Any:
    """The `shard:` config with the encoder flags (--vae, --vae-subfolder, --text-encoder, --device)
    applied to its `encode:` section; `vjp encode` and `vjp pairs --encode` take the same flags."""
    from training.data.stages import parse_config

    cfg = parse_config(*load_section(args.config or DEFAULT_CONFIG, "shard", args.overrides))
    overrides: dict[str, Any] = {
        k: v
        for k, v in (("vae", args.vae), ("text_encoder", args.text_encoder), ("device", args.device))
        if v
    }
    if args.vae_subfolder is not None:
        overrides["vae_subfolder"] = args.vae_subfolder or None
    return cfg.model_copy(update={"encode": cfg.encode.model_copy(update=overrides)})


def run(args: argparse.Namespace) -> int:
    cfg = encode_config(args)
    if cfg.storage_options:  # the defaults of every filesystem of these URLs' protocols
        from jobs.run_paths import install_storage_options

        for url in {args.shards, args.out}:
            install_storage_options(url, cfg.storage_options)
    splits = [s for s in args.split.split(",") if s]
    try:
        summary = encode_stage(
            args.shards, args.out, cfg, splits, args.runner, args.address, args.workers, progress=True
        )
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"vjp encode: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 1 if summary["failed_shards"] else 0
