"""`vjp train`: the rectified-flow DiT on stage shards, in process, under torchrun, or on Ray Train.

vjp train --config jobs/configs/train.yaml --shards SHARDS/stage1 --out RUN [--resume] [--set k=v]
vjp train ... --nproc 8                                   # torchrun on this machine
vjp train ... --ray --address RAY_ADDRESS --num-workers 16 --gpus-per-worker 1
vjp train ... --shards PAIRS/stage1 --set objective=dpo --set model.init_from=RUN   # Video-DPO
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "train.yaml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from training.train import add_arguments as add_train_arguments

    add_train_arguments(p, DEFAULT_CONFIG)
    p.add_argument(
        "--nproc", type=int, default=1, help="processes on this machine (torchrun); 1 = in process"
    )
    p.add_argument("--ray", action="store_true", help="run as a Ray Train TorchTrainer job")
    p.add_argument("--address", default=None, help="Ray address (default RAY_ADDRESS or a local Ray)")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (one per GPU)")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="default 1 when the cluster has GPUs")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)


def train_from_config(
    config_path: str | None,
    shards: str,
    out: str,
    *,
    resume: bool = True,
    overrides: list[str] | tuple[str, ...] = (),
    launcher: str = "local",
    address: str | None = None,
    num_workers: int = 1,
    nproc: int = 1,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float = 1.0,
) -> dict[str, Any]:
    """The Python entry for `vjp run` and scripts: returns RUN/summary.json's content.

    With resume=True a run folder without checkpoints starts fresh, and a finished one returns
    at once (its steps are done), so reruns of a pipeline never redo training.
    """
    from training import launch
    from training.checkpoint import latest_checkpoint, read_meta
    from training.config import load_train_config

    cfg = load_train_config(config_path, list(overrides))
    so = cfg.checkpoint.storage_options
    ckpt = latest_checkpoint(cfg.checkpoint.root(out), so)
    if ckpt and not resume:
        raise FileExistsError(f"{out} has checkpoints: pass --resume (resume=True) or a new run folder")
    if (
        ckpt
        and read_meta(ckpt, so)["step"] >= cfg.steps
        and os.path.exists(os.path.join(out, "summary.json"))
    ):
        return launch.read_summary(out)
    resume = bool(ckpt)
    if launcher == "ray":
        if gpus_per_worker is None:
            import ray

            from training.ray_util import init_ray

            init_ray(address)
            gpus_per_worker = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
        return launch.run_ray(
            cfg, shards, out, resume, num_workers, gpus_per_worker, cpus_per_worker, address
        )
    if nproc > 1:
        return launch.run_torchrun(cfg, shards, out, resume, nproc)
    return launch.run_local(cfg, shards, out, resume)


def run(args: argparse.Namespace) -> int:
    from training.train import NonFiniteError

    try:
        summary = train_from_config(
            args.config,
            args.shards,
            args.out,
            resume=args.resume,
            overrides=args.overrides,
            launcher="ray" if args.ray else "local",
            address=args.address,
            num_workers=args.num_workers,
            nproc=args.nproc,
            gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker,
        )
    except (FileNotFoundError, FileExistsError, ValueError, NonFiniteError, RuntimeError) as e:
        print(f"vjp train: {e}", file=sys.stderr)
        return 1 if isinstance(e, (NonFiniteError, RuntimeError)) else 2
    print(json.dumps(summary, indent=2))
    return 0
