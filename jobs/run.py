"""`vjp run CONFIG`: the whole pipeline from one config file, each step resumable.

    vjp run jobs/configs/demo.yaml [--steps curate,caption,shard,encode,train] [--address RAY]
            [--set caption.qa.max_latin_ratio=0.2] [--set run.out=/shared/out] [--check]

Steps run in pipeline order, each one on what the previous one wrote:

    OUT/                    curate: manifests/, clips/ (+ OUT/sample_videos for `sample:`)
    OUT/manifests/captions  caption
    OUT/shards/<stage>/     shard (one folder per stage in run.stages)
    OUT/latents/<stage>/    encode (optional)
    OUT/train/              train: checkpoints/, metrics.jsonl, summary.json, samples/ (run.train.folder)
    OUT/models/             tiny models built here when run.tiny_models asks (nothing downloaded)
    OUT/run/steps.json      one summary per step (counts, wall and CPU seconds); config.json, log.txt
    OUT/report.html         the whole run on one page

OUT may be an object-store URL (`run.out: s3://bucket/prefix`): every step then reads its inputs from
and writes its outputs to the bucket, and only the tiny models and the trainer's checkpoints live
in a local folder (run.local); see jobs/run_paths.py for what goes where and why.

Rerun the same command after a crash or a kill: every step skips what is finished (curated
videos, captions, shards whose plan is unchanged, encoded shards, training checkpoints), so the
final manifests and shards equal those of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.configfile import ConfigError, add_set_argument, apply_overrides
from jobs.run_config import STEPS, RunConfig, load_run_config, missing_requirements, parse_run_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config: a `run:` section and one section per step")
    p.add_argument(
        "--steps", default=None, help=f"comma-separated subset of {','.join(STEPS)} (default: run.steps)"
    )
    p.add_argument("--address", default=None, help="Ray address (overrides run.address)")
    p.add_argument("--out", default=None, help="output root (overrides run.out)")
    add_set_argument(p, "curate.filters.blur_min=30")
    p.add_argument("--check", action="store_true", help="validate the config and print the plan; run nothing")
    p.add_argument("--no-report", action="store_true", help="skip OUT/report.html")


# ---- measuring a step -----------------------------------------------------------------------
def process_cpu_s() -> float:
    """CPU seconds of this process and every live descendant (Ray workers, forked decoders),
    including the children they have waited for."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue  # gone between the listing and the read
        total += t.user + t.system + t.children_user + t.children_system
    return total


@dataclass
class StepResult:
    name: str
    ok: bool
    line: str
    summary: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def caption_reason(reason: str | None) -> str:
    """First QA failure of a rejected caption, without its threshold (`japanese_ratio<0.7`)."""
    first = (reason or "unknown").split(";")[0]
    m = re.match(r"[A-Za-z_]+", first)
    return m.group(0) if m else first


# ---- the pipeline ---------------------------------------------------------------------------
class Pipeline:
    def __init__(self, config_path: str, cfg: RunConfig, raw: dict[str, Any], overrides: list[str]) -> None:
        from jobs.run_paths import RunPaths

        self.config_path = config_path
        self.cfg = cfg
        self.raw = raw
        self.overrides = overrides
        self.paths = RunPaths.of(cfg.run.out, cfg.run.local, cfg.run.train.folder)
        self.out = self.paths.out
        self.shards_root = self.paths.shards_root
        self.latents_root = self.paths.latents_root
        self.train_dir = self.paths.train_dir
        self.models_dir = self.paths.models_dir
        self.run_dir = self.paths.run_dir
        self.steps: list[str] = list(cfg.run.steps)
        self.ray_env: dict[str, str] = {}
        self._log_lines: list[str] = []

    # The tiny models replace hub ids in the sections, then everything is validated again.
    def _reconfigure(self, overrides: list[str]) -> None:
        self.raw = apply_overrides(self.raw, overrides)
        self.cfg = parse_run_config(self.raw, f"{self.config_path} (with tiny model paths)")

    def _uses_ray(self) -> bool:
        r = self.cfg.run
        caption_ray = "caption" in self.steps and (
            r.caption.executor == "ray" or (r.caption.executor == "auto" and r.caption.backend == "vllm")
        )
        data_ray = r.runner == "ray" and any(s in self.steps for s in ("curate", "shard"))
        data_ray = data_ray or ("encode" in self.steps and (r.encode.runner or r.runner) == "ray")
        return data_ray or caption_ray or ("train" in self.steps and r.train.launcher == "ray")

    def _storage(self) -> None:
        """run.storage_options become the defaults of every filesystem of OUT's protocol, here and
        in every process started from here; the shard and train sections get them explicitly
        unless they set their own (their workers may run on other nodes)."""
        from jobs.run_paths import install_storage_options

        so = self.cfg.run.storage_options
        self.ray_env = install_storage_options(self.out, so)
        if so and not self.cfg.shard.storage_options:
            self._reconfigure([f"shard.storage_options={json.dumps(so)}"])
        train_data = (self.raw.get("train") or {}).get("data") or {}
        if so and self.cfg.train is not None and not train_data.get("storage_options"):
            self.overrides = [*self.overrides, f"train.data.storage_options={json.dumps(so)}"]

    def _init_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if not self.ray_env:
            from jobs.runner import init_ray

            init_ray(self.cfg.run.address)
            return
        # The storage settings reach the workers of every node, not only those started from here.
        address = self.cfg.run.address
        try:
            ray.init(
                address=address or None,
                log_to_driver=False,
                include_dashboard=False if not address else None,
                runtime_env={"env_vars": self.ray_env},
            )
        except ValueError:
            # A submitted job whose own runtime_env sets the same variable (Ray refuses to merge
            # conflicting keys): the job's value holds for its workers.
            from jobs.runner import init_ray

            init_ray(address)

    def prepare(self) -> None:
        """Storage settings in place, OUT/run/config.json written (run.storage_options holds no
        credential: refused when the config is parsed)."""
        from curation import atomic

        self._storage()
        atomic.makedirs(self.run_dir)
        atomic.write_bytes(
            atomic.join(self.run_dir, "config.json"),
            json.dumps(self.raw, indent=2, ensure_ascii=False).encode("utf-8"),
        )

    def run(self, log: Callable[[str], None]) -> list[StepResult]:
        if self._uses_ray():
            self._init_ray()
        results: list[StepResult] = []
        for name in STEPS:
            if name not in self.steps:
                continue
            t0, c0 = time.perf_counter(), process_cpu_s()
            try:
                res = getattr(self, f"step_{name}")()
            except (FileNotFoundError, ValueError, RuntimeError, ConfigError) as e:
                res = StepResult(name, False, f"{name}: failed: {type(e).__name__}: {e}")
            res.wall_s, res.cpu_s = time.perf_counter() - t0, process_cpu_s() - c0
            res.summary.update(wall_s=round(res.wall_s, 2), cpu_s=round(res.cpu_s, 2))
            log(f"{res.line}; {res.wall_s:.1f} s wall, {res.cpu_s:.1f} s CPU")
            results.append(res)
            self._save(results)
            if not res.ok:
                log(f"stopped after {name}: fix the cause and rerun the same command to resume")
                break
        return results

    def record(self, line: str) -> None:
        """Append a line to OUT/run/log.txt (the `vjp run:` lines of every attempt; one PUT each on
        a store, where nothing can be appended to)."""
        from curation import atomic

        path = atomic.join(self.run_dir, "log.txt")
        if not self._log_lines and atomic.exists(path):
            self._log_lines = atomic.read_bytes(path).decode("utf-8", errors="replace").splitlines()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._log_lines.append(f"{stamp} {line}")
        atomic.write_bytes(path, ("\n".join(self._log_lines) + "\n").encode("utf-8"))

    def _save(self, results: list[StepResult]) -> None:
        from curation import atomic

        path = atomic.join(self.run_dir, "steps.json")
        prev = json.loads(atomic.read_bytes(path)) if atomic.exists(path) else {}
        prev.update({r.name: {"ok": r.ok, "line": r.line, **r.summary} for r in results})
        atomic.write_bytes(path, json.dumps(prev, indent=2, ensure_ascii=False).encode("utf-8"))

    # ---- steps ----------------------------------------------------------------------------
    def step_curate(self) -> StepResult:
        from jobs.curate import curate

        r = self.cfg.run
        # One source after the other into one output: finalize decides (and deduplicates) over
        # every video curated so far, so after the last source the decisions span all of them.
        per_source = {}
        for source in r.sources:
            per_source[source] = curate(source, self.out, self.cfg.curate, r.runner, r.address, r.limit)
        s = {**per_source[r.sources[-1]], "sources": r.sources}
        rejected = sum(s["rejected_by_reason"].values())
        line = (
            f"curate: {s['videos']} videos in ({s['videos_error']} unreadable), {s['clips']} clips: "
            f"{s['clips_kept']} kept ({s['kept_seconds'] / 3600:.3f} h), {rejected} rejected "
            f"({_reasons(s['rejected_by_reason'])}), errors: {_reasons(s['errors_by_stage'])}"
        )
        return StepResult("curate", not (s["videos"] and s["videos_ok"] == 0), line, s)

    def _tiny_captioner(self) -> None:
        """Build LOCAL/models/captioner once (atomic), sized to the frames the caption step samples."""
        from captioning.frames import sample_frames
        from captioning.manifest import read_kept_clips, resolve_layout
        from captioning.runner import clip_abspath
        from curation import atomic

        path = os.path.join(self.models_dir, "captioner")
        if not os.path.exists(os.path.join(path, "config.json")):
            from captioning.tiny import build_demo_captioner

            root, clips_dir, _ = resolve_layout(self.paths.manifests)
            clips = read_kept_clips(clips_dir)
            if not clips:
                raise FileNotFoundError("no kept clips to size the tiny captioner's frames on")
            with atomic.local_file(clip_abspath(clips[0], root) or "") as local:
                frames = sample_frames(local, self.cfg.caption.frames)
            t, h, w, _ = frames.shape
            build_demo_captioner(
                path, (h, w), t, steps=self.cfg.run.tiny_models.captioner_steps, cfg=self.cfg.caption
            )
        if self.cfg.caption.model.id != path:
            self._reconfigure([f"caption.model.id={json.dumps(path)}"])

    def _captions(self) -> list[dict[str, Any]]:
        from captioning.manifest import read_captions
        from curation import atomic

        return read_captions(atomic.join(self.paths.manifests, "captions"), latest=True).to_pylist()

    def step_caption(self) -> StepResult:
        from jobs.caption import caption_clips

        if self.cfg.run.tiny_models.captioner:
            self._tiny_captioner()
        r = self.cfg.run
        s = caption_clips(
            self.paths.manifests,
            self.cfg.caption,
            r.caption.backend,
            r.caption.executor,
            r.address,
            retry_rejected=r.caption.retry_rejected,
            redo_stale=r.caption.redo_stale,
        )
        rows = self._captions()
        status = Counter(row["status"] for row in rows)
        reasons = Counter(caption_reason(row["reason"]) for row in rows if row["status"] == "rejected")
        s.update(
            total_status=dict(status),
            rejected_by_reason=dict(reasons),
            captions_ok_clips=len({row["clip_id"] for row in rows if row["status"] == "ok"}),
        )
        line = (
            f"caption: {s['kept_clips']} kept clips in, {s['clips']} captioned now; all captions: "
            f"{status.get('ok', 0)} ok, {status.get('rejected', 0)} rejected ({_reasons(dict(reasons))}), "
            f"{status.get('error', 0)} errors"
        )
        return StepResult("caption", not status.get("error"), line, s)

    def step_shard(self) -> StepResult:
        from jobs.shard import shard_stage

        r = self.cfg.run
        # Read where curation and captioning wrote, a folder or the bucket: no local copy.
        clips_arg = self.paths.manifests
        per_stage, lines, ok = {}, [], True
        for stage in r.stages:
            s = shard_stage(clips_arg, stage, self.shards_root, self.cfg.shard, r.runner, r.address)
            per_stage[stage] = s
            shards = s["train"]["shards"] + s["eval"]["shards"]
            lines.append(
                f"{stage}: {s['clips_kept']} kept clips in, {s['samples_written']} samples "
                f"(train {s['train']['samples']}, eval {s['eval']['samples']}) in {shards} shards "
                f"({s['shards_written']} written, {s['shards_reused']} reused), left out: "
                f"{_reasons(s['skipped_by_reason'])}, {len(s['failed_shards'])} failed"
            )
            ok = ok and not s["failed_shards"] and not (s["clips_kept"] and not s["samples_written"])
        return StepResult("shard", ok, "shard " + "; ".join(lines), {"stages": per_stage})

    def _tiny_trainer_models(self) -> dict[str, str]:
        """training.tiny's VAE + text encoder in LOCAL/models/train (built once, kill-safe)."""
        from training.tiny import build_tiny_models

        return build_tiny_models(Path(self.models_dir) / "train")

    def step_encode(self) -> StepResult:
        from curation import atomic
        from jobs.encode import encode_stage

        r = self.cfg.run
        if r.tiny_models.trainer:
            from training.tiny import TINY_TEXT_LEN

            m = self._tiny_trainer_models()
            self._reconfigure(
                [
                    f"shard.encode.vae={json.dumps(m['vae'])}",
                    "shard.encode.vae_subfolder=null",
                    f"shard.encode.text_encoder={json.dumps(m['text_encoder'])}",
                    f"shard.encode.text_max_length={TINY_TEXT_LEN}",
                ]
            )
        per_stage, lines, ok = {}, [], True
        for stage in r.stages:
            s = encode_stage(
                atomic.join(self.shards_root, stage),  # the stage's tars streamed from where they are
                self.latents_root,
                self.cfg.shard,
                list(r.encode.splits),
                r.encode.runner or r.runner,
                r.address,
                r.encode.workers,
                progress=True,
            )
            per_stage[stage] = s
            n = sum(s.get(sp, {}).get("samples", 0) for sp in r.encode.splits)
            lines.append(
                f"{stage}: {s['shards_written'] + s['shards_reused']} shards in "
                f"({s['shards_written']} encoded, {s['shards_reused']} reused), {n} samples, "
                f"{len(s['failed_shards'])} failed"
            )
            ok = ok and not s["failed_shards"]
        return StepResult("encode", ok, "encode " + "; ".join(lines), {"stages": per_stage})

    def train_data(self) -> str:
        """The stage the trainer streams: OUT/latents/<stage> or OUT/shards/<stage> (a URL when OUT
        is on a store: the trainer reads the bucket itself, one ranged GET per sample)."""
        from curation import atomic
        from training.data import store
        from training.data.sample_format import index_path

        t = self.cfg.run.train
        kind = t.data if t.data != "auto" else ("latents" if "encode" in self.steps else "shards")
        latents = atomic.join(self.latents_root, t.stage)
        if t.data == "auto" and kind == "shards" and store.exists(index_path(latents, "train")):
            kind = "latents"  # encoded by an earlier run of this config
        return latents if kind == "latents" else atomic.join(self.shards_root, t.stage)

    def step_train(self) -> StepResult:
        try:
            from jobs.train import train_from_config
        except ModuleNotFoundError as e:
            return StepResult("train", False, f"train: not available in this checkout ({e.name} missing)")
        if self.cfg.train is None:
            return StepResult("train", False, "train: the config has no train: section")
        t = self.cfg.run.train
        overrides = [o for o in self.overrides if o.startswith("train.")]
        if self.cfg.run.tiny_models.trainer:
            from training.tiny import tiny_train_overrides

            overrides = [*tiny_train_overrides(self._tiny_trainer_models()), *overrides]
        data = self.train_data()
        s = train_from_config(
            self.config_path,
            data,
            self.train_dir,
            resume=True,
            overrides=overrides,
            launcher=t.launcher,
            address=self.cfg.run.address,
            num_workers=t.num_workers,
            nproc=t.nproc,
            gpus_per_worker=t.gpus_per_worker,
            cpus_per_worker=t.cpus_per_worker,
        )
        if t.samples:
            s["samples"] = self._samples(s, t.samples)
        if self.paths.remote:
            s["published"] = self._publish_train(s)
        loss = s.get("final_loss")
        where = data.removeprefix(self.out).lstrip("/") if data.startswith(self.out) else data
        line = (
            f"train: {s.get('steps')} steps on {where}, final loss {loss:.4f}"
            if isinstance(loss, float)
            else f"train: {s.get('steps')} steps, no loss"
        )
        return StepResult("train", True, f"{line}, checkpoint {s.get('checkpoint')}", dict(s))

    def _publish_train(self, summary: dict[str, Any]) -> str:
        """The training results into OUT/<folder>: summary, metrics, the trainer's config copy,
        sample videos, and the final checkpoint's export (the weights `vjp sample`/`vjp eval`
        load) at the same relative path as in the run folder. The resumable state (optimizer,
        every checkpoint) stays in the run folder; a rerun publishes again (idempotent)."""
        from jobs.run_paths import publish

        dest = self.paths.train_results
        publish(self.train_dir, dest, TRAIN_LOCAL_ONLY)
        ckpt = summary.get("checkpoint")
        if ckpt and os.path.isdir(os.path.join(ckpt, "export")):
            rel = os.path.relpath(os.path.join(ckpt, "export"), self.train_dir)
            if not rel.startswith(".."):
                from curation import atomic

                publish(os.path.join(ckpt, "export"), atomic.join(dest, *rel.split(os.sep)))
        return dest

    def sample_prompts(self, n: int) -> list[str]:
        """Captions of the trained stage's held-out samples first, then of its training samples."""
        import io

        import pyarrow.parquet as pq

        from curation import atomic
        from training.data.sample_format import samples_path

        path = samples_path(atomic.join(self.shards_root, self.cfg.run.train.stage))
        rows = pq.read_table(io.BytesIO(atomic.read_bytes(path))).to_pylist() if atomic.exists(path) else []
        order = sorted(
            (r for r in rows if r["status"] == "written"), key=lambda r: (r["split"] != "eval", r["clip_id"])
        )
        caps: dict[str, dict[str, str]] = {}
        for c in self._captions():
            if c["status"] == "ok" and c["caption"]:
                caps.setdefault(c["clip_id"], {})[c["caption_type"]] = c["caption"]
        prompts: list[str] = []
        for r in order:
            text = next(
                (
                    caps.get(r["clip_id"], {}).get(t)
                    for t in self.cfg.shard.captions.types
                    if t in caps.get(r["clip_id"], {})
                ),
                None,
            )
            if text and text not in prompts:
                prompts.append(text)
        # Fewer distinct captions than samples: the same caption again, with another seed.
        return [prompts[i % len(prompts)] for i in range(n)] if prompts else []

    def _samples(self, summary: dict[str, Any], n: int) -> dict[str, Any]:
        """n videos from the final checkpoint into RUN/samples/step_N/ (once per checkpoint)."""
        import shutil

        from training.sample import Sampler, write_mp4

        step = int(summary.get("steps") or 0)
        folder = Path(self.train_dir) / "samples" / f"step_{step:06d}"
        if (folder / "prompts.json").exists():
            return {"folder": str(folder), "reused": True}
        prompts = self.sample_prompts(n)
        if not prompts or not summary.get("checkpoint"):
            return {"folder": None, "reason": "no checkpoint" if prompts else "no captions to prompt with"}
        sampler = Sampler.from_checkpoint(summary["checkpoint"])
        seeds = list(range(len(prompts)))
        videos = sampler.generate(prompts, seeds)
        fps = float(sampler.settings["fps"])
        tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta = []
        for i, (prompt, seed, video) in enumerate(zip(prompts, seeds, videos, strict=True)):
            write_mp4(video, str(tmp / f"{i:06d}.mp4"), fps)
            meta.append({"file": f"{i:06d}.mp4", "prompt": prompt, "seed": seed, "fps": fps, "step": step})
        settings = {k: v for k, v in sampler.settings.items() if isinstance(v, (int, float, str))}
        doc = {"step": step, "checkpoint": summary["checkpoint"], "settings": settings, "samples": meta}
        (tmp / "prompts.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return {"folder": str(folder), "videos": len(meta)}


# The trainer's resumable state and caches: local (or a shared volume), never copied to OUT.
TRAIN_LOCAL_ONLY = ("checkpoints", "stream", "ray")


def select_steps(cfg: RunConfig, steps_arg: str | None) -> list[str]:
    if not steps_arg:
        return list(cfg.run.steps)
    asked = [s.strip() for s in steps_arg.split(",") if s.strip()]
    unknown = [s for s in asked if s not in STEPS]
    if unknown:
        raise ConfigError(f"--steps: unknown step(s) {unknown}; steps are {', '.join(STEPS)}")
    return [s for s in STEPS if s in asked]


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"run.out={json.dumps(args.out)}")
    if args.address:
        overrides.append(f"run.address={json.dumps(args.address)}")
    cfg, raw = load_run_config(args.config, overrides)
    pipe = Pipeline(args.config, cfg, raw, overrides)
    pipe.steps = select_steps(cfg, args.steps)

    def log(msg: str) -> None:
        print(f"vjp run: {msg}", file=sys.stderr, flush=True)
        if not args.check:
            pipe.record(msg)

    missing = missing_requirements(cfg, raw, pipe.steps)
    if missing:  # fail before any step starts (and before an image build or a Slurm job goes on)
        raise ConfigError(
            "\n".join(
                [
                    f"{args.config}: this environment lacks what the config needs:",
                    *missing,
                    "  (bash jobs/deploy/install.sh installs them; see README, On a cluster)",
                ]
            )
        )
    if args.check:
        log(f"config ok; steps {', '.join(pipe.steps)} -> {pipe.out}")
        return 0
    pipe.prepare()
    log(
        f"steps {', '.join(pipe.steps)} -> {pipe.out}"
        + (f" (local: {pipe.paths.local})" if pipe.paths.remote else "")
    )
    results = pipe.run(log)
    if cfg.run.report and not args.no_report:
        from jobs.report import write_report

        t0 = time.perf_counter()
        path = write_report(pipe.out, train_folder=cfg.run.train.folder)
        log(f"report: {path}; {time.perf_counter() - t0:.1f} s")
    return 0 if results and all(r.ok for r in results) else 1
