"""Checkpoints: torch.distributed.checkpoint (sharded) state, per-rank stream positions, an export.

    RUN/checkpoints/step_000500/
        dcp/                      model, optimizer and EMA (each rank writes its shards)
        ranks/rank_00000.json     that rank's data-stream position and RNG states
        meta.json                 step, world size, skipped steps, scheduler, config hash
        export/transformer/       EMA weights as a diffusers folder (config.json + safetensors)
        export/videojp.json       what the sampler needs: text encoder, VAE, sample and flow settings
        export/raw/               the same for the trained (non-EMA) weights (checkpoint.export_raw)
    RUN/checkpoints/latest        the name of the newest complete checkpoint

A checkpoint is written under a hidden temporary name and renamed into place by rank 0 once
every rank has finished, so a kill at any moment leaves either a complete checkpoint or none.
Nothing here unpickles: DCP reads tensors by name, everything else is JSON.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import warnings
from typing import Any

import torch

from training.data.shard_writer import write_atomic
from training.parallel import Dist, full_tensor

CKPT_DIR = "checkpoints"
EXPORT = "export"
EXPORT_META = "videojp.json"
EXPORT_FORMAT = "videojp.export.v1"
RAW = "raw"  # export/raw/ is an export folder of its own: `vjp sample --weights raw` reads it
_STEP_RE = re.compile(r"^step_(\d{6,})$")


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "meta.json"))


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    root = os.path.join(run_dir, CKPT_DIR)
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = _STEP_RE.match(name)
        if m and is_complete(os.path.join(root, name)):
            out.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(out)


def latest_checkpoint(run_dir: str) -> str | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def resolve_checkpoint(path: str) -> str:
    """A step folder, a run folder (its latest) or a checkpoints folder -> a complete step folder."""
    path = os.path.normpath(path)
    if is_complete(path):
        return path
    for run in (path, os.path.dirname(path)):
        found = latest_checkpoint(run)
        if found:
            return found
    raise FileNotFoundError(f"{path}: no complete checkpoint (a step_NNNNNN folder with meta.json)")


def read_meta(path: str) -> dict[str, Any]:
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str, obj: Any) -> None:
    """JSON under its final name complete or not at all (temporary name + rename)."""
    write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True).encode())


def rng_state() -> dict[str, str]:
    out = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available():
        out["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return out


def set_rng_state(state: dict[str, str]) -> None:
    def tensor(s: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensor(state["cuda"]))


def export_transformer(
    d: Dist, model: torch.nn.Module, weights: dict[str, torch.Tensor], folder: str
) -> None:
    """Weights (possibly sharded) -> a diffusers CogVideoXTransformer3DModel folder, by rank 0."""
    from safetensors.torch import save_file

    full: dict[str, torch.Tensor] = {}
    for name, t in weights.items():
        t = full_tensor(t)  # every rank takes part in the gather; only rank 0 keeps a CPU copy
        if d.is_main:
            full[name] = t.detach().float().cpu()
    if not d.is_main:
        return
    os.makedirs(folder, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in full.items()},
        os.path.join(folder, "diffusion_pytorch_model.safetensors"),
    )
    import diffusers

    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    config.update(_class_name="CogVideoXTransformer3DModel", _diffusers_version=diffusers.__version__)
    write_json(os.path.join(folder, "config.json"), config)


def save_checkpoint(
    d: Dist,
    run_dir: str,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: Any,
    position: dict[str, Any],
    meta: dict[str, Any],
    export_meta: dict[str, Any] | None,
    keep_last: int,
    export_raw: bool = False,
) -> str:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = os.path.join(run_dir, CKPT_DIR)
    final = os.path.join(root, step_name(step))
    tmp = os.path.join(root, f".{step_name(step)}.tmp")
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    d.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # "assuming single process" when there is no group: intended
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save(
            {"model": model_sd, "optim": optim_sd, "ema": ema.state_dict()},
            checkpoint_id=os.path.join(tmp, "dcp"),
        )
    write_json(
        os.path.join(tmp, "ranks", f"rank_{d.rank:05d}.json"), {"position": position, "rng": rng_state()}
    )
    if export_meta is not None:
        exports = [(os.path.join(tmp, EXPORT), "ema", ema.state_dict())]
        if export_raw:
            exports.append((os.path.join(tmp, EXPORT, RAW), "raw", ema.live_state_dict()))
        for folder, kind, weights in exports:
            export_transformer(d, model, weights, os.path.join(folder, "transformer"))
            if d.is_main:
                write_json(
                    os.path.join(folder, EXPORT_META),
                    {"format": EXPORT_FORMAT, "step": step, "weights": kind, **export_meta},
                )
    d.barrier()
    if d.is_main:
        write_json(os.path.join(tmp, "meta.json"), {"step": step, "world_size": d.world_size, **meta})
        shutil.rmtree(final, ignore_errors=True)  # a complete older copy of the same step (rerun)
        os.rename(tmp, final)
        write_atomic(os.path.join(root, "latest"), (step_name(step) + "\n").encode())
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    d.barrier()
    return final


def load_model_weights(path: str, model: torch.nn.Module) -> None:
    """Only the trained weights (the DCP `model` entry) of a step folder into a (possibly sharded)
    model, each rank reading its own shards: the Video-DPO reference at a run's starting weights."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load(state, checkpoint_id=os.path.join(path, "dcp"))
    set_model_state_dict(model, state["model"])


def load_checkpoint(
    d: Dist,
    path: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    ema: Any,
) -> dict[str, Any]:
    """Load model + EMA (+ optimizer unless None) in place; returns meta plus this rank's extras."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd, "ema": ema.state_dict()}
    else:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = {"model": get_model_state_dict(model), "ema": ema.state_dict()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load(state, checkpoint_id=os.path.join(path, "dcp"))
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state["model"])
    meta = read_meta(path)
    extra_path = os.path.join(path, "ranks", f"rank_{d.rank:05d}.json")
    if os.path.exists(extra_path):
        with open(extra_path, encoding="utf-8") as f:
            meta["rank_state"] = json.load(f)
    else:  # a different world size: rank 0's position is the reference for resharding
        with open(os.path.join(path, "ranks", "rank_00000.json"), encoding="utf-8") as f:
            meta["rank_state"] = json.load(f)
    return meta
