"""One video per eval caption with a trained checkpoint: EVAL/generated/<key>.mp4 + prompts.jsonl.

Resumable: beside every video, generated/<key>.json records the hash of everything that makes it
(the checkpoint, the requested settings, the prompt and the seed). A rerun generates only the
keys whose mp4 is missing or whose hash changed, in batches; prompts.jsonl (the current
selection's prompts, seeds and files) is rewritten after every batch, so a killed run loses at
most one batch.

Same seed, same video: a batch here is only the unit of work. Each video is its own forward pass
(Sampler.generate with batch_size=1) under a fixed torch thread count (`generate.threads`), so its
pixels do not depend on which videos share its batch, on a rerun's different batches, or on
whether the driver or a Ray actor (started with OMP_NUM_THREADS=1) makes it. Each record holds the
sha256 of the frames before encoding (x264 is not bit-reproducible across processes).

Locally the sampler loads in this process; with `generate.runner: ray` one sampler actor per GPU
takes batches and the frames come back to the driver, which writes them (no shared file system needed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curation.atomic import atomic_output
from training.data.sample_format import config_hash
from training.eval.config import GenerateConfig

GENERATED = "generated"
PROMPTS = "prompts.jsonl"


@dataclass(frozen=True)
class Job:
    key: str
    prompt: str
    seed: int


def resolve_checkpoint(path: str) -> tuple[str, int | None, str]:
    """(folder, step, identity) of RUN (its latest), RUN/checkpoints/step_N or step_N/export.

    The identity hashes the export's videojp.json (step and training config), so videos made from
    an older checkpoint at the same path are not reused.
    """
    from training.checkpoint import EXPORT, EXPORT_META, fetch_step

    if os.path.isfile(os.path.join(path, EXPORT_META)):
        folder = export = os.path.abspath(path)
    else:  # a checkpoint on a store (or a run checkpointing to one): fetched into the local cache
        folder = os.path.abspath(fetch_step(path))
        export = os.path.join(folder, EXPORT)
    meta_path = os.path.join(export, EXPORT_META)
    step, identity = None, ""
    if os.path.isfile(meta_path):
        with open(meta_path, "rb") as f:
            data = f.read()
        identity = hashlib.sha256(data).hexdigest()[:16]
        step = json.loads(data).get("step")
    if step is None:
        for part in reversed(Path(folder).parts):
            m = re.fullmatch(r"step_(\d+)", part)
            if m:
                step = int(m.group(1))
                break
    return folder, step, identity


def checkpoint_size(folder: str) -> dict[str, float]:
    """frames, height, width, fps the checkpoint samples at (its export's videojp.json): the size
    of the generated videos when the real set is an external folder rather than stage shards."""
    from training.checkpoint import EXPORT, EXPORT_META

    meta_path = os.path.join(folder, EXPORT_META)
    if not os.path.isfile(meta_path):
        meta_path = os.path.join(folder, EXPORT, EXPORT_META)
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    frames, height, width = meta["pixel_shape"]
    s = meta.get("sample") or {}
    return {
        "frames": s.get("frames") or frames,
        "height": s.get("height") or height,
        "width": s.get("width") or width,
        "fps": s.get("fps") or meta["fps"],
    }


def generation_kwargs(cfg: GenerateConfig, stage: dict[str, float]) -> dict[str, Any]:
    """The keyword arguments of Sampler.generate for every batch (None = the sampler's default)."""
    kw: dict[str, Any] = {
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "negative_prompt": cfg.negative_prompt,
    }
    if cfg.size == "stage":
        kw |= {"frames": int(stage["frames"]), "height": int(stage["height"]), "width": int(stage["width"])}
    return kw


def job_hash(checkpoint: str, kwargs: dict[str, Any], job: Job, threads: int = 1) -> str:
    # forward_batch/threads: videos of the batch-dependent generation of earlier versions are redone.
    return config_hash(
        {
            "checkpoint": checkpoint,
            "kwargs": kwargs,
            "prompt": job.prompt,
            "seed": job.seed,
            "forward_batch": 1,
            "threads": threads,
        }
    )


def generate_videos(sampler: Any, jobs: list[Job], kwargs: dict[str, Any], threads: int) -> list[np.ndarray]:
    """One video per job, each its own forward pass under a fixed thread count (see the module doc)."""
    from training.sample import fixed_threads

    with fixed_threads(threads):
        return sampler.generate([j.prompt for j in jobs], [j.seed for j in jobs], batch_size=1, **kwargs)


def read_prompts(out: str) -> dict[str, dict[str, Any]]:
    """EVAL/prompts.jsonl by key: the prompts of the last evaluation and their videos."""
    path = os.path.join(out, PROMPTS)
    rows: dict[str, dict[str, Any]] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows[row["key"]] = row
    return rows


def _write_prompts(out: str, rows: dict[str, dict[str, Any]], order: list[str]) -> None:
    with atomic_output(os.path.join(out, PROMPTS)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for key in order:
            if key in rows:
                f.write(json.dumps(rows[key], ensure_ascii=False, sort_keys=True) + "\n")


def _record_path(out: str, key: str) -> str:
    return os.path.join(out, GENERATED, f"{key}.json")


def _read_record(out: str, key: str) -> dict[str, Any] | None:
    """The sidecar written after a video: what made it. prompts.jsonl lists only the current
    selection, so a video of an earlier, larger selection is still found (and reused) here."""
    try:
        with open(_record_path(out, key), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def frames_digest(video: np.ndarray) -> str:
    """sha256 of uint8 frames and their shape, before encoding."""
    h = hashlib.sha256(str(video.shape).encode())
    h.update(np.ascontiguousarray(video, dtype=np.uint8).tobytes())
    return h.hexdigest()


def video_path(out: str, key: str) -> str:
    return os.path.join(out, GENERATED, f"{key}.mp4")


def write_video(frames: np.ndarray, path: str, fps: float) -> None:
    from training.sample import write_mp4  # atomic: temporary name, renamed when complete

    write_mp4(frames, path, fps)


def _batches(items: list[Job], size: int) -> Iterator[list[Job]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _SamplerActor:
    """Ray actor: the sampler loads once, then one batch per call."""

    def __init__(self, checkpoint: str, device: str | None) -> None:
        from training.sample import Sampler

        self.sampler = Sampler.from_checkpoint(checkpoint, device=device)

    def settings(self) -> dict[str, Any]:
        return dict(self.sampler.settings)

    def generate(
        self, jobs: list[Job], kwargs: dict[str, Any], threads: int
    ) -> tuple[list[Job], list[np.ndarray]]:
        return jobs, generate_videos(self.sampler, jobs, kwargs, threads)


def _device(cfg: GenerateConfig) -> str | None:
    return None if cfg.device == "auto" else cfg.device


def _local_batches(
    checkpoint: str, cfg: GenerateConfig, todo: list[Job], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], Iterator[tuple[list[Job], list[np.ndarray] | None, str | None]]]:
    from training.sample import Sampler

    sampler = Sampler.from_checkpoint(checkpoint, device=_device(cfg))

    def run() -> Iterator[tuple[list[Job], list[np.ndarray] | None, str | None]]:
        for batch in _batches(todo, cfg.batch_size):
            try:
                videos = generate_videos(sampler, batch, kwargs, cfg.threads)
            except Exception as e:  # a failing batch costs that batch; the rerun retries it
                yield batch, None, f"{type(e).__name__}: {e}"
                continue
            yield batch, videos, None

    return dict(sampler.settings), run()


def _ray_batches(
    checkpoint: str, cfg: GenerateConfig, todo: list[Job], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], Iterator[tuple[list[Job], list[np.ndarray] | None, str | None]]]:
    import ray
    from ray.util import ActorPool

    from training.ray_util import init_ray

    init_ray(cfg.address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = gpus > 0 and cfg.device != "cpu"
    n = cfg.workers or (gpus if use_gpu else 1)
    actor = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=1)(_SamplerActor)
    actors = [actor.remote(checkpoint, _device(cfg)) for _ in range(max(1, n))]
    settings = ray.get(actors[0].settings.remote())
    pool = ActorPool(actors)
    batches = list(_batches(todo, cfg.batch_size))

    def run() -> Iterator[tuple[list[Job], list[np.ndarray] | None, str | None]]:
        for b in batches:
            pool.submit(lambda a, batch: a.generate.remote(batch, kwargs, cfg.threads), b)
        done: set[str] = set()
        while pool.has_next():
            try:
                jobs, videos = pool.get_next_unordered()
            except Exception as e:  # ActorPool does not say which batch failed: the rest is retried
                remaining = [j for j in todo if j.key not in done]
                yield remaining, None, f"{type(e).__name__}: {e}"
                return
            done.update(j.key for j in jobs)
            yield jobs, videos, None

    return settings, run()


def generate_all(
    checkpoint: str,
    identity: str,
    jobs: list[Job],
    out: str,
    cfg: GenerateConfig,
    stage: dict[str, float],
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Generate what is missing; returns {"settings", "written", "reused", "failed": {key: reason}}."""
    os.makedirs(os.path.join(out, GENERATED), exist_ok=True)
    kwargs = generation_kwargs(cfg, stage)
    order = [j.key for j in jobs]
    ident = f"{checkpoint}#{identity}"
    hashes = {j.key: job_hash(ident, kwargs, j, cfg.threads) for j in jobs}
    rows: dict[str, dict[str, Any]] = {}
    todo: list[Job] = []
    for j in jobs:
        rec = _read_record(out, j.key)
        if rec and rec.get("hash") == hashes[j.key] and os.path.exists(video_path(out, j.key)):
            rows[j.key] = rec
        else:
            todo.append(j)
    reused = len(jobs) - len(todo)
    # One settings file per (checkpoint, kwargs): reused videos are described by the run that made them.
    run_id = config_hash({"checkpoint": ident, "kwargs": kwargs})
    settings_path = os.path.join(out, GENERATED, f"settings-{run_id}.json")
    failed: dict[str, str] = {}
    written = 0
    if todo:
        log(f"generating {len(todo)} videos ({reused} reused)")
        start = _ray_batches if cfg.runner == "ray" else _local_batches
        settings, batches = start(checkpoint, cfg, todo, kwargs)
        effective = {**settings, **{k: v for k, v in kwargs.items() if v is not None}}
        effective |= {"forward_batch": 1, "threads": cfg.threads}
        with atomic_output(settings_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump({"checkpoint": checkpoint, "kwargs": kwargs, "effective": effective}, f, sort_keys=True)
        fps = float(effective.get("fps") or stage["fps"])
        for batch, videos, error in batches:
            if videos is None:
                failed.update({j.key: error or "failed" for j in batch})
                continue
            for j, v in zip(batch, videos, strict=True):
                v = np.ascontiguousarray(v)
                try:
                    write_video(v, video_path(out, j.key), fps)
                except Exception as e:
                    failed[j.key] = f"writing the mp4 failed: {type(e).__name__}: {e}"
                    continue
                rows[j.key] = {
                    "key": j.key,
                    "prompt": j.prompt,
                    "seed": j.seed,
                    "file": f"{GENERATED}/{j.key}.mp4",
                    "hash": hashes[j.key],
                    "shape": list(v.shape),
                    # The generator's own output: x264 is not bit-reproducible (the same frames can
                    # encode to different bytes across processes), so identity is checked here.
                    "frames_sha256": frames_digest(v),
                }
                with atomic_output(_record_path(out, j.key)) as tmp, open(tmp, "w", encoding="utf-8") as f:
                    json.dump(rows[j.key], f, ensure_ascii=False, sort_keys=True)
                written += 1
            _write_prompts(out, rows, order)
            log(f"generated {written}/{len(todo)}")
    if not os.path.exists(settings_path):  # only when nothing was asked for (no jobs)
        return {"settings": {}, "written": 0, "reused": 0, "failed": failed}
    with open(settings_path, encoding="utf-8") as f:
        effective = json.load(f)["effective"]
    _write_prompts(out, rows, order)
    return {"settings": effective, "written": written, "reused": reused, "failed": failed}
