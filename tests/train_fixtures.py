"""Tiny stage shards, tiny models and a tiny trained checkpoint, built with the project's own code
(clips -> `vjp shard` -> optional `vjp encode`), for the trainer, sampler and eval tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.test_shards import cli, make_clips, shard_local, write_config
from training.tiny import build_tiny_models, tiny_train_overrides

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "森の中を流れる小川、木漏れ日が水面にきらめく。",
    "子どもたちが公園で元気に遊んでいる。",
    "夜の街を走る電車。",
    "海辺に打ち寄せる波と夕暮れの空。",
    "夕暮れの海辺を柴犬が走っている。",
    "雪の山道をゆっくり進む車。",
    "赤い花が風に揺れている。",
    "台所で野菜を切る手元。",
]
# 32x32 pixels, 16 frames -> tiny VAE latents [4 frames, 4 ch, 4, 4] -> 16 video tokens.
TINY_STAGE = {
    "width": 32,
    "height": 32,
    "frames": 16,
    "fps": 8.0,
    "target_shard_bytes": None,
    "max_shard_samples": 3,
}


def make_tiny_shards(
    root: Path, n: int = 8, eval_fraction: float = 0.0, encode: bool = False
) -> dict[str, Path]:
    """root/shards/tiny (pixels, n samples in shards of 3) [+ root/latents/tiny]; returns paths."""
    root.mkdir(parents=True, exist_ok=True)
    models = build_tiny_models(root / "models")
    specs = [
        {
            "clip_id": f"v{i}_{i:07d}_{i + 30:07d}",
            "video_id": f"v{i}",
            "caption": CAPTIONS[i % len(CAPTIONS)],
            "width": 48,
            "height": 40,
            "frames": 24,
            "fps": 8,
        }
        for i in range(n)
    ]
    manifests = make_clips(root / "cur", specs)
    config = write_config(
        root / "shard.yaml",
        {"tiny": TINY_STAGE},
        captions={"fallback": "source_caption"},
        split={"eval_fraction": eval_fraction},
    )
    assert shard_local(manifests, "tiny", root / "shards", config) == 0
    out = {
        "shards": root / "shards" / "tiny",
        "models": root / "models",
        "shard_config": config,
        "vae": Path(models["vae"]),
        "text_encoder": Path(models["text_encoder"]),
    }
    if encode:
        argv = [
            "--shards",
            str(out["shards"]),
            "--out",
            str(root / "latents"),
            "--config",
            str(config),
            *encoder_argv(models),
            "--runner",
            "local",
        ]
        assert cli(argv, "jobs.encode") == 0
        out["latents"] = root / "latents" / "tiny"
    return out


def encoder_argv(models: dict[str, str]) -> list[str]:
    """`vjp encode` / `vjp pairs --encode` flags pointing the encoders at the tiny models."""
    return ["--vae", models["vae"], "--vae-subfolder", "", "--text-encoder", models["text_encoder"]]


def tiny_config(path: Path, models_root: Path, **train: Any) -> Path:
    """A train YAML on the tiny models: fp32, no warmup, quick checkpoints; `train` overrides keys."""
    models = build_tiny_models(models_root)
    base: dict[str, Any] = {
        "steps": 4,
        "seed": 0,
        "optim": {"lr": 1e-3, "warmup_steps": 0, "ema_decay": 0.9},
        "data": {"batch_size": 2, "num_workers": 0},
        "checkpoint": {"every": 2, "keep_last": 2},
        "log": {"tensorboard": False, "progress": False},
        "sample": {"steps": 4},
    }
    from curation.configfile import apply_overrides

    data = apply_overrides(base, tiny_train_overrides(models))
    for key, value in train.items():
        node = data
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump({"train": data}, allow_unicode=True))
    return path


def two_process_run(tmp: Path, models_root: Path, shards: Path, **train: Any) -> dict[str, Any]:
    """A `tiny_config` run on 2 processes, launched as `vjp train --nproc 2` does (torchrun here)."""
    from jobs.train import train_from_config

    config = tiny_config(tmp / "train.yaml", models_root, **train)
    run = tmp / "run"
    summary = train_from_config(str(config), str(shards), str(run), nproc=2)
    return {"run": run, "config": config, "summary": summary}


def torchrun(
    nproc: int, args: list[str], timeout: int = 600, env: dict[str, str] | None = None, wait: bool = True
) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    """`torchrun --nproc_per_node N -m training.train ARGS` (standalone rendezvous, gloo on CPU)."""
    from training.launch import torchrun_command

    cmd = torchrun_command(nproc, args)
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.setdefault("OMP_NUM_THREADS", "1")  # as training.launch.run_torchrun: the same numerics
    if not wait:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env=full_env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return subprocess.run(cmd, cwd=REPO, env=full_env, text=True, capture_output=True, timeout=timeout)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows}


def make_tiny_checkpoint(root: Path, steps: int = 2) -> Path:
    """A tiny run trained for `steps` steps in process; returns its last checkpoint folder."""
    from training.config import load_train_config
    from training.train import train

    paths = make_tiny_shards(root / "data")
    config = tiny_config(root / "train.yaml", paths["models"], steps=steps, checkpoint__every=steps)
    summary = train(load_train_config(config), str(paths["shards"]), str(root / "run"))
    return Path(summary["checkpoint"])


def descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    """The pids still alive after `timeout` seconds (empty when all exited)."""
    deadline = time.time() + timeout
    while (left := [p for p in pids if alive(p)]) and time.time() < deadline:
        time.sleep(0.1)
    return left


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, as one `kill -9` of a job's whole process tree.

    torchrun starts each rank in a session of its own, so killing torchrun's process group alone
    leaves the ranks to training.orphan's watchdog (up to a second later); a test that resumes at
    once must not race with them."""
    for p in descendants(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def wait_for_checkpoint(proc: subprocess.Popen[str], run: Path, step: int, timeout: float = 300) -> None:
    """Block until RUN's checkpoint of `step` is complete, failing if the run dies or takes too long."""
    deadline = time.time() + timeout
    while not (run / "checkpoints" / f"step_{step:06d}" / "meta.json").exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.time() < deadline, f"no checkpoint within {timeout:.0f} s"
        time.sleep(0.1)
