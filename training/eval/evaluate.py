"""The evaluation protocol of the seed report, end to end (what `vjp eval` runs).

1. choose N eval samples by seed (samples.py), 2. generate one video per Japanese caption with
the checkpoint's sampler (generate.py, resumable), 3. stream real, generated and baseline videos
through the I3D (features.py) and, when enabled, the alignment model (align.py), saving report
strips on the way, 4. FVD generated vs real, baseline vs real, and real vs real over two halves of
the real videos (the floor), 5. EVAL/metrics.json, EVAL/features/*.npz and EVAL/report.html.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curation.atomic import atomic_output
from curation.configfile import package_version
from training.data.sample_format import decode_mp4
from training.eval.config import AlignResult, EvalConfig, EvalMetrics, FVDResult
from training.eval.fvd import fvd, split_halves
from training.eval.generate import Job, generate_all, read_prompts, resolve_checkpoint, video_path
from training.eval.report import save_strip, write_report
from training.eval.samples import choose, iter_real_videos, read_samples, sample_seed, stage_size

TIE = 1e-6
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


@dataclass
class _Set:
    """One set of videos after the feature pass."""

    keys: list[str] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    align: list[float] = field(default_factory=list)

    def matrix(self) -> np.ndarray:
        return np.concatenate(self.features) if self.features else np.zeros((0, 400))


def _read_video(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        return decode_mp4(f.read())


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _feature_pass(
    kind: str,
    videos: Iterable[tuple[str, str, np.ndarray]],
    net: Any,
    aligner: Any,
    frames: int,
    strip_keys: set[str],
    cfg: EvalConfig,
    out: str,
) -> _Set:
    """Features (and alignment scores) of (key, prompt, video) items, one batch in memory at a time."""
    result = _Set()
    for batch in _batched(videos, cfg.fvd.batch_size):
        keys = [k for k, _, _ in batch]
        vids = [v for _, _, v in batch]
        result.features.append(net.features(vids, frames))
        if aligner is not None:
            result.align += aligner.scores([p for _, p, _ in batch], vids)
        result.keys += keys
        for k, _, v in batch:
            if k in strip_keys:
                save_strip(out, kind, k, v, cfg.report.strip_frames, cfg.report.strip_height)
    return result


def _generated_videos(
    out: str, jobs: list[Job], failed: dict[str, str], errors: list[str]
) -> Iterator[tuple[str, str, np.ndarray]]:
    rows = read_prompts(out)
    for j in jobs:
        if j.key in failed or j.key not in rows:
            continue
        path = video_path(out, j.key)
        try:
            yield j.key, j.prompt, _read_video(path)
        except Exception as e:
            errors.append(f"{path}: generated video does not decode ({type(e).__name__}: {e})")


def baseline_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"baseline folder not found: {folder}")
    return sorted(
        os.path.join(folder, n)
        for n in os.listdir(folder)
        if n.lower().endswith(VIDEO_EXTENSIONS) and not n.startswith(".")
    )


def baseline_videos(
    files: list[str], prompts: dict[str, str], errors: list[str]
) -> Iterator[tuple[str, str, np.ndarray]]:
    for path in files:
        key = os.path.splitext(os.path.basename(path))[0]
        try:
            video = _read_video(path)
        except Exception as e:
            errors.append(f"{path}: baseline video does not decode ({type(e).__name__}: {e})")
            continue
        yield key, prompts.get(key, ""), video


def _save_features(out: str, name: str, s: _Set) -> None:
    path = os.path.join(out, "features", f"{name}.npz")
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, keys=np.array(s.keys, dtype=str), features=s.matrix())


def _fvd_or_none(a: np.ndarray, b: np.ndarray, what: str, errors: list[str]) -> float | None:
    if len(a) < 2 or len(b) < 2:
        errors.append(f"FVD {what}: needs at least 2 videos on each side ({len(a)} and {len(b)})")
        return None
    return fvd(a, b)


def evaluate(
    ckpt: str,
    shards: str,
    out: str,
    cfg: EvalConfig,
    baseline_dir: str | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> EvalMetrics:
    from training.data.loader import resolve_shards
    from training.eval.features import load_feature_network

    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    urls, index = resolve_shards(shards, cfg.split)
    if not urls:
        raise FileNotFoundError(f"no {cfg.split} shards in {shards}")
    samples, errors = read_samples(urls)
    chosen = choose(samples, cfg.num, cfg.seed)
    if len(chosen) < 4:
        raise ValueError(
            f"{shards}: {len(chosen)} readable {cfg.split} samples; the evaluation needs 4 or more"
        )
    if len(chosen) < cfg.num:
        log(f"{len(chosen)} {cfg.split} samples, fewer than the {cfg.num} asked for: using all")
    stage = stage_size(index, chosen)
    checkpoint, step, identity = resolve_checkpoint(ckpt)
    files = baseline_files(baseline_dir) if baseline_dir else []
    # The measuring models load before generation, so a bad weights path fails in seconds, not
    # after hours of sampling.
    net = load_feature_network(cfg.fvd)
    aligner = None
    if cfg.align.enabled:
        from training.eval.align import Aligner

        aligner = Aligner.from_config(cfg.align)
    jobs = [Job(s.key, s.caption, sample_seed(cfg.seed, s.key)) for s in chosen]
    gen = generate_all(checkpoint, identity, jobs, out, cfg.generate, stage, log)
    errors += [f"{video_path(out, k)}: generation failed: {r}" for k, r in sorted(gen["failed"].items())]

    gen_frames = int(gen["settings"].get("frames") or stage["frames"])
    frames = cfg.fvd.frames or min(int(stage["frames"]), gen_frames)
    strip_keys = {j.key for j in jobs[: cfg.report.videos]}
    prompts = {j.key: j.prompt for j in jobs}

    log("features: real videos")
    real_stream = ((s.key, s.caption, v) for s, v in iter_real_videos(chosen, errors))
    real = _feature_pass("real", real_stream, net, aligner, frames, strip_keys, cfg, out)
    log("features: generated videos")
    gen_stream = _generated_videos(out, jobs, gen["failed"], errors)
    generated = _feature_pass("generated", gen_stream, net, aligner, frames, strip_keys, cfg, out)
    baseline, baseline_info = None, None
    if baseline_dir:
        matched = [f for f in files if os.path.splitext(os.path.basename(f))[0] in prompts]
        use = matched or files  # named by eval key: only those; otherwise the whole folder
        log(f"features: {len(use)} baseline videos")
        baseline_aligner = aligner if matched else None  # without keys there are no prompts to score
        stream = baseline_videos(use, prompts, errors)
        baseline = _feature_pass("baseline", stream, net, baseline_aligner, frames, strip_keys, cfg, out)
        baseline_info = {
            "dir": baseline_dir,
            "files": len(files),
            "n": len(baseline.keys),
            "matched_by_key": bool(matched),
            "unmatched_files": len(files) - len(matched) if matched else 0,
        }
    for name, s in (("real", real), ("generated", generated), ("baseline", baseline)):
        if s is not None:
            _save_features(out, name, s)

    rf, gf = real.matrix(), generated.matrix()
    result: dict[str, Any] = {
        "generated_vs_real": _fvd_or_none(gf, rf, "generated vs real", errors),
        "n_generated": len(gf),
        "n_real": len(rf),
        "frames": frames,
    }
    if baseline is not None:
        bf = baseline.matrix()
        result |= {
            "baseline_vs_real": _fvd_or_none(bf, rf, "baseline vs real", errors),
            "n_baseline": len(bf),
        }
    if cfg.fvd.real_vs_real and len(rf) >= 4:
        a, b = split_halves(len(rf), cfg.seed)
        result |= {"real_vs_real": fvd(rf[a], rf[b]), "n_real_half": len(a)}
    alignment = None
    if aligner is not None and generated.align and real.align:
        alignment = _alignment(cfg, real, generated, baseline)

    metrics = EvalMetrics(
        checkpoint=checkpoint,
        checkpoint_step=step,
        shards=os.path.abspath(shards),
        stage=os.path.basename(os.path.normpath(shards)),
        split=cfg.split,
        stage_size=stage,
        n_requested=cfg.num,
        n=len(chosen),
        seed=cfg.seed,
        fvd=FVDResult(**result),
        feature_network=net.describe(),
        sampler=gen["settings"],
        baseline=baseline_info,
        alignment=alignment,
        generated={"written": gen["written"], "reused": gen["reused"], "failed": gen["failed"]},
        errors=errors,
        config=cfg.model_dump(mode="json"),
        package_version=package_version(),
        elapsed_s=round(time.time() - t0, 2),
    )
    with atomic_output(os.path.join(out, "metrics.json")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(metrics.model_dump_json(indent=2) + "\n")
    write_report(out)
    return metrics


def _alignment(cfg: EvalConfig, real: _Set, generated: _Set, baseline: _Set | None) -> AlignResult:
    base_mean, win_rate = None, None
    if baseline is not None and baseline.align:
        base = dict(zip(baseline.keys, baseline.align, strict=True))
        gen = dict(zip(generated.keys, generated.align, strict=True))
        common = sorted(set(base) & set(gen))
        base_mean = float(np.mean(list(base.values())))
        if common:
            # Cosines equal up to float rounding (the same video batched differently) are ties, not wins.
            win_rate = float(np.mean([gen[k] - base[k] > TIE for k in common]))
    return AlignResult(
        model=cfg.align.model,
        revision=cfg.align.revision,
        frames=cfg.align.frames,
        generated=float(np.mean(generated.align)),
        real=float(np.mean(real.align)),
        baseline=base_mean,
        win_rate_vs_baseline=win_rate,
        n=len(generated.align),
    )
