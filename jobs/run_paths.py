"""Where `vjp run` keeps what, with OUT on a local/shared folder or on an object store.

OUT (run.out) holds everything the pipeline produces and every later step or reader needs:
manifests, clips, shards, latents, the run's state (run/config.json, run/steps.json, run/log.txt),
the trainer's results (summary, metrics, sample videos) and report.html. With OUT = s3://... (gs://,
any fsspec URL) these are objects written under their final names, so a rerun from any machine
that reaches the bucket resumes the run.

LOCAL (run.local) holds what cannot live on an object store or is only a cache:
- models/: the tiny models a demo builds (loaded with from_pretrained from a folder; their path
  is the model id the manifests record, so reruns must find them at the same path);
- train/: the trainer's run folder (torch.distributed.checkpoint writes every rank's files into a
  POSIX folder; checkpoints are resumable state, not results): put it on a volume that outlives
  the machine (a PVC, NFS) or accept that training restarts from step 0 on a new machine.
Every step reads its inputs from OUT itself: shard reads the manifests and clip objects from the
bucket (each clip fetched to a temporary file by the task that renders it, removed right after),
encode streams the stage's tars, the trainer reads samples with ranged GETs. No step keeps a copy
of OUT in LOCAL, so LOCAL need not be shared between machines.
With a local OUT, LOCAL is OUT itself and nothing is copied.

Credentials never pass through here: they come from the environment (AWS_*, GOOGLE_*, a profile)
of every process; run.storage_options holds only non-secret settings (endpoint, region), refused
otherwise (training.data.store.check_storage_options).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from curation import atomic


def default_local(out: str) -> str:
    """LOCAL for an OUT URL: a cache folder named after the bucket and prefix, the same on every
    rerun (the tiny models' paths end up in the manifests)."""
    proto, _, rest = out.partition("://")
    parts = [re.sub(r"[^A-Za-z0-9._-]", "_", p) for p in rest.split("/") if p not in ("", ".", "..")]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "videojp", "runs", proto, *parts)


@dataclass(frozen=True)
class RunPaths:
    out: str  # absolute local folder or URL
    local: str  # absolute local folder
    train_folder: str = "train"  # run.train.folder

    @classmethod
    def of(cls, out: str, local: str | None, train_folder: str = "train") -> RunPaths:
        if not atomic.is_url(out):
            out = os.path.abspath(atomic.strip_file(out))
            return cls(out, out, train_folder)
        return cls(out.rstrip("/"), os.path.abspath(local or default_local(out)), train_folder)

    @property
    def remote(self) -> bool:
        return atomic.is_url(self.out)

    def at(self, *parts: str) -> str:
        return atomic.join(self.out, *parts)

    @property
    def manifests(self) -> str:
        return self.at("manifests")

    @property
    def shards_root(self) -> str:
        return self.at("shards")

    @property
    def latents_root(self) -> str:
        return self.at("latents")

    @property
    def run_dir(self) -> str:
        return self.at("run")

    @property
    def models_dir(self) -> str:
        return os.path.join(self.local, "models")

    @property
    def train_dir(self) -> str:
        """The trainer's run folder (checkpoints), always local."""
        return os.path.join(self.local, self.train_folder)

    @property
    def train_results(self) -> str:
        """Where the report finds the training results: the run folder itself with a local OUT,
        else OUT/<folder> (OUT/train for an absolute folder)."""
        return train_results(self.out, self.train_folder)


def train_results(out: str, folder: str) -> str:
    if not atomic.is_url(out):
        return os.path.join(out, folder)
    return atomic.join(out, "train" if os.path.isabs(folder) else folder.strip("/"))


# ---- storage options --------------------------------------------------------------------------
def protocol(url: str) -> str | None:
    return url.partition("://")[0] if atomic.is_url(url) else None


def install_storage_options(out: str, options: Mapping[str, Any]) -> dict[str, str]:
    """Make run.storage_options the defaults of every fsspec filesystem of OUT's protocol: in this
    process (fsspec.config.conf, applied whenever a filesystem is built) and in the processes it
    starts (the FSSPEC_<PROTOCOL> variable, which fsspec reads at import: Ray workers, torchrun
    ranks). Returns the variables set, for Ray's runtime_env. Options the caller passes explicitly
    still win (fsspec's own rule)."""
    proto = protocol(out)
    if not options or proto is None:
        return {}
    import fsspec.config

    key = f"FSSPEC_{proto.upper()}"
    try:
        merged = json.loads(os.environ.get(key) or "{}")
    except json.JSONDecodeError:
        merged = {}
    merged = {**(merged if isinstance(merged, dict) else {}), **dict(options)}
    os.environ[key] = json.dumps(merged, sort_keys=True)
    fsspec.config.conf.setdefault(proto, {}).update(dict(options))
    return {key: os.environ[key]}


# ---- copies between the store and LOCAL -------------------------------------------------------
def publish(local_dir: str, dest: str, skip: Iterable[str] = ()) -> int:
    """Upload the files of a local folder to `dest` (same relative paths, one whole object each),
    leaving out the top-level entries in `skip`; returns how many were uploaded."""
    skipped = set(skip)
    sources, targets = [], []
    for folder, dirs, files in os.walk(local_dir):
        rel_folder = os.path.relpath(folder, local_dir)
        if rel_folder == ".":
            dirs[:] = [d for d in dirs if d not in skipped]
        for f in sorted(files):
            if f.startswith(".") or (rel_folder == "." and f in skipped):
                continue  # temporaries of a killed writer
            rel = os.path.normpath(os.path.join(rel_folder, f)).replace(os.sep, "/")
            sources.append(os.path.join(folder, f))
            targets.append(atomic.join(dest, rel))
    if not sources:
        return 0
    fs, _ = atomic.get_fs(dest)
    atomic.upload_files(fs, sources, [atomic.get_fs(t)[1] for t in targets])
    return len(sources)
