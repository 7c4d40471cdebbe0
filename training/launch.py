"""Launchers around `training.train.train`: in process, torchrun on this machine, Ray Train.

All three run the same function on the same validated config; only who starts the processes and
creates the process group differs. torchrun on several nodes is run by hand (README); Ray Train
places the workers on a cluster (`--address`, RAY_ADDRESS, or `ray job submit`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from training.config import TrainConfig, parse_train_config


def read_summary(out: str) -> dict[str, Any]:
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        return json.load(f)


def run_local(cfg: TrainConfig, shards: str, out: str, resume: bool) -> dict[str, Any]:
    from training.train import train

    return train(cfg, shards, out, resume)


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """`torchrun --standalone --nproc_per_node N -m training.train ARGS` as an argument list."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "training.train",
        *args,
    ]


def run_torchrun(cfg: TrainConfig, shards: str, out: str, resume: bool, nproc: int) -> dict[str, Any]:
    """torchrun --standalone on this machine; the resolved config travels as a JSON file."""
    os.makedirs(out, exist_ok=True)
    config = os.path.join(out, "launch_config.yaml")
    with open(config, "w", encoding="utf-8") as f:
        json.dump({"train": cfg.model_dump(mode="json")}, f, ensure_ascii=False)  # JSON is YAML
    cmd = torchrun_command(nproc, ["--config", config, "--shards", shards, "--out", out])
    if resume:
        cmd.append("--resume")
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too; explicit so it is documented
    proc = subprocess.run(cmd, env=env)  # argument list: no shell, paths are never interpreted
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}")
    return read_summary(out)


def _ray_worker_loop(config: dict[str, Any]) -> None:
    import ray.train

    from training.train import train

    # Ray Train has created the process group; the trainer takes the device from LOCAL_RANK.
    os.environ["LOCAL_RANK"] = str(ray.train.get_context().get_local_rank())
    cfg = parse_train_config(config["cfg"], "<ray worker>")
    train(cfg, config["shards"], config["out"], config["resume"])


def run_ray(
    cfg: TrainConfig,
    shards: str,
    out: str,
    resume: bool,
    num_workers: int,
    gpus_per_worker: float,
    cpus_per_worker: float,
    address: str | None,
) -> dict[str, Any]:
    """A Ray Train TorchTrainer job; RUN must be on storage every worker node sees (NFS, Lustre)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from training.ray_util import init_ray

    init_ray(address)
    out, shards = os.path.abspath(out), shards if "://" in shards else os.path.abspath(shards)
    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _ray_worker_loop,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "shards": shards,
            "out": out,
            "resume": resume,
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name="vjp-train", storage_path=os.path.join(out, "ray")),
    )
    trainer.fit()
    # Train V2 returns no metrics without a reported checkpoint; the loop's own files are the record.
    return read_summary(out)
