"""Checkpoints: torch.distributed.checkpoint (sharded) state, per-rank stream positions, an export.

    RUN/checkpoints/step_000500/
        dcp/                      model, optimizer and EMA (each rank writes its shards)
        ranks/rank_00000.json     that rank's data-stream position and RNG states
        meta.json                 step, world size, skipped steps, scheduler, config hash
        export/transformer/       EMA weights as a diffusers folder (config.json + safetensors)
        export/videojp.json       what the sampler needs: text encoder, VAE, sample and flow settings
        export/raw/               the same for the trained (non-EMA) weights (checkpoint.export_raw)
    RUN/checkpoints/latest        the name of the newest complete checkpoint

`checkpoint.folder` puts the checkpoints folder elsewhere, an fsspec URL (s3://, gs://) included:
on a cluster without a shared file system every node writes its ranks' shards there and reads
them back on resume. Locally a checkpoint is written under a hidden temporary name and renamed
into place by rank 0 once every rank has finished; on a store, where there is no rename, objects
go under their final names and meta.json, written last by rank 0, is the commit record. Either
way a kill at any moment leaves a complete checkpoint or one that no reader counts (no meta.json).
Nothing here unpickles: DCP reads tensors by name, everything else is JSON.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from training.data import store
from training.parallel import Dist, full_tensor

CKPT_DIR = "checkpoints"
EXPORT = "export"
EXPORT_META = "videojp.json"
EXPORT_FORMAT = "videojp.export.v1"
RAW = "raw"  # export/raw/ is an export folder of its own: `vjp sample --weights raw` reads it
_STEP_RE = re.compile(r"^step_(\d{6,})$")


def step_name(step: int) -> str:
    return f"step_{step:06d}"


Options = Mapping[str, Any] | None


def checkpoint_root(run_dir: str, folder: str | None = None) -> str:
    """A run's checkpoints folder: `checkpoint.folder` (a path or a URL), else RUN/checkpoints."""
    return folder or os.path.join(run_dir, CKPT_DIR)


def is_complete(path: str, storage_options: Options = None) -> bool:
    return store.exists(store.join(path, "meta.json"), storage_options)


def list_checkpoints(root: str, storage_options: Options = None) -> list[tuple[int, str]]:
    """(step, folder) of every complete checkpoint in a checkpoints folder, oldest first."""
    out = []
    for name in store.listdir(root, storage_options):
        m = _STEP_RE.match(name)
        if m and is_complete(store.join(root, name), storage_options):
            out.append((int(m.group(1)), store.join(root, name)))
    return sorted(out)


def latest_checkpoint(root: str, storage_options: Options = None) -> str | None:
    ckpts = list_checkpoints(root, storage_options)
    return ckpts[-1][1] if ckpts else None


def resolve_checkpoint(path: str, storage_options: Options = None) -> str:
    """A step folder, a checkpoints folder (its latest) or a run folder (RUN/checkpoints' latest),
    local or a URL -> a complete step folder."""
    path = path.rstrip("/") if store.is_url(path) else os.path.normpath(path)
    if is_complete(path, storage_options):
        return path
    for root in (path, store.join(path, CKPT_DIR), _configured_folder(path, storage_options)):
        found = root and latest_checkpoint(root, storage_options)
        if found:
            return found
    raise FileNotFoundError(f"{path}: no complete checkpoint (a step_NNNNNN folder with meta.json)")


def _configured_folder(run_dir: str, storage_options: Options) -> str | None:
    """checkpoint.folder of the run whose config.json is in run_dir (a run that checkpoints to a
    store keeps its logs and config locally): `vjp sample RUN` finds its checkpoints there."""
    path = store.join(run_dir, "config.json")
    if store.is_url(run_dir) or not os.path.isfile(path):
        return None
    try:
        folder = json.loads(store.read_bytes(path)).get("checkpoint", {}).get("folder")
    except (ValueError, AttributeError):
        return None
    return folder if isinstance(folder, str) and folder else None


def read_meta(path: str, storage_options: Options = None) -> dict[str, Any]:
    return json.loads(store.read_bytes(store.join(path, "meta.json"), storage_options))


def write_json(path: str, obj: Any, storage_options: Options = None) -> None:
    """JSON under its final name complete or not at all (temporary name + rename, or one PUT)."""
    store.write_bytes(
        path, json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True).encode(), storage_options
    )


def _remove_tree(path: str, storage_options: Options = None) -> None:
    if not store.is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = store.filesystem(path, storage_options)
    fs.invalidate_cache(p)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def fetch_step(path: str, cache: str | None = None, storage_options: Options = None) -> str:
    """The step folder `resolve_checkpoint` finds, as a local folder: a checkpoint on a store is
    copied (meta.json and export/, what the sampler and `vjp eval` read) into
    `cache` (default $XDG_CACHE_HOME/videojp or ~/.cache/videojp), keyed by its URL and its export's
    videojp.json, so a newer checkpoint at the same URL is fetched again."""
    import hashlib

    step = resolve_checkpoint(path, storage_options)
    if not store.is_url(step):
        return step
    meta_url = store.join(step, EXPORT, EXPORT_META)
    if not store.exists(meta_url, storage_options):
        raise FileNotFoundError(f"{step}: no export/ (the run had checkpoint.export=false)")
    meta = store.read_bytes(meta_url, storage_options)
    key = hashlib.sha256(step.encode() + b"\0" + meta).hexdigest()[:16]
    base = cache or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "videojp")
    dest = os.path.join(base, "checkpoints", f"{posixpath.basename(step)}-{key}")
    if is_complete(dest):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".fetch-", dir=os.path.dirname(dest))
    store.download(store.join(step, EXPORT), os.path.join(tmp, EXPORT), storage_options)
    with open(os.path.join(tmp, "meta.json"), "wb") as f:  # last: marks the copy whole
        f.write(store.read_bytes(store.join(step, "meta.json"), storage_options))
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)
    return dest


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
    d: Dist,
    model: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    folder: str,
    storage_options: Options = None,
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
    import diffusers

    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    config.update(_class_name="CogVideoXTransformer3DModel", _diffusers_version=diffusers.__version__)
    weights_name = "diffusion_pytorch_model.safetensors"
    remote = store.is_url(folder)
    # safetensors writes a file: into the folder itself, or a temporary one uploaded whole.
    with tempfile.TemporaryDirectory() if remote else contextlib.nullcontext(folder) as local:
        os.makedirs(local, exist_ok=True)
        save_file({k: v.contiguous() for k, v in full.items()}, os.path.join(local, weights_name))
        if remote:
            store.put_file(
                os.path.join(local, weights_name), store.join(folder, weights_name), storage_options
            )
    write_json(store.join(folder, "config.json"), config, storage_options)


def _dcp_save(state: dict[str, Any], path: str, storage_options: Options) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "assuming single process" when there is no group: intended
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        if store.is_url(path):
            # torch's fsspec writer (a private module, public since torch 2.1's DCP docs): it takes
            # the storage options that a checkpoint_id URL alone cannot carry (endpoint, region).
            from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

            dcp.save(state, storage_writer=FsspecWriter(path, **dict(storage_options or {})))
        else:
            dcp.save(state, checkpoint_id=path)


def _dcp_load(state: dict[str, Any], path: str, storage_options: Options) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        if store.is_url(path):
            from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

            dcp.load(state, storage_reader=FsspecReader(path, **dict(storage_options or {})))
        else:
            dcp.load(state, checkpoint_id=path)


def save_checkpoint(
    d: Dist,
    root: str,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: Any,
    position: dict[str, Any],
    meta: dict[str, Any],
    export_meta: dict[str, Any] | None,
    keep_last: int,
    export_raw: bool = False,
    storage_options: Options = None,
) -> str:
    """One checkpoint into the checkpoints folder `root` (a path or a URL); its step folder."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    so = storage_options
    remote = store.is_url(root)
    final = store.join(root, step_name(step))
    # On a store there is no rename: write under the final name; meta.json, last, commits it. What
    # a killed attempt at this step left there goes first, so no stale rank file survives into it.
    tmp = final if remote else os.path.join(root, f".{step_name(step)}.tmp")
    if d.is_main:
        _remove_tree(tmp, so)
        if not remote:
            os.makedirs(tmp)
    d.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    _dcp_save({"model": model_sd, "optim": optim_sd, "ema": ema.state_dict()}, store.join(tmp, "dcp"), so)
    write_json(
        store.join(tmp, "ranks", f"rank_{d.rank:05d}.json"), {"position": position, "rng": rng_state()}, so
    )
    if export_meta is not None:
        exports = [(store.join(tmp, EXPORT), "ema", ema.state_dict())]
        if export_raw:
            exports.append((store.join(tmp, EXPORT, RAW), "raw", ema.live_state_dict()))
        for folder, kind, weights in exports:
            export_transformer(d, model, weights, store.join(folder, "transformer"), so)
            if d.is_main:
                write_json(
                    store.join(folder, EXPORT_META),
                    {"format": EXPORT_FORMAT, "step": step, "weights": kind, **export_meta},
                    so,
                )
    d.barrier()
    if d.is_main:
        write_json(store.join(tmp, "meta.json"), {"step": step, "world_size": d.world_size, **meta}, so)
        if not remote:
            shutil.rmtree(final, ignore_errors=True)  # a complete older copy of the same step (rerun)
            os.rename(tmp, final)
        store.write_bytes(store.join(root, "latest"), (step_name(step) + "\n").encode(), so)
        for _, old in list_checkpoints(root, so)[:-keep_last]:
            _remove_tree(old, so)
    d.barrier()
    return final


def load_model_weights(path: str, model: torch.nn.Module, storage_options: Options = None) -> None:
    """Only the trained weights (the DCP `model` entry) of a step folder into a (possibly sharded)
    model, each rank reading its own shards: the Video-DPO reference at a run's starting weights."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"model": get_model_state_dict(model)}
    _dcp_load(state, store.join(path, "dcp"), storage_options)
    set_model_state_dict(model, state["model"])


def load_checkpoint(
    d: Dist,
    path: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    ema: Any,
    storage_options: Options = None,
) -> dict[str, Any]:
    """Load model + EMA (+ optimizer unless None) in place; returns meta plus this rank's extras."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd, "ema": ema.state_dict()}
    else:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = {"model": get_model_state_dict(model), "ema": ema.state_dict()}
    _dcp_load(state, store.join(path, "dcp"), storage_options)
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state["model"])
    meta = read_meta(path, storage_options)
    extra_path = store.join(path, "ranks", f"rank_{d.rank:05d}.json")
    if not store.exists(extra_path, storage_options):
        # a different world size: rank 0's position is the reference for resharding
        extra_path = store.join(path, "ranks", "rank_00000.json")
    meta["rank_state"] = json.loads(store.read_bytes(extra_path, storage_options))
    return meta
