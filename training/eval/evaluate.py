"""The evaluation protocol of the seed report, end to end (what `vjp eval` runs).

1. the real set: N samples chosen by seed from a stage's split (optionally one source, e.g.
Pixabay as the seed did) or from an external folder with its prompts file, plus N more real
videos for the real-vs-real reference when the set holds 2N (samples.py, videos.py);
2. one video per Japanese caption with the checkpoint's sampler (generate.py, resumable);
3. real, generated, reference and baseline videos streamed through the I3D once per protocol
preset (protocol.py: fvd16 and stage by default; short clips left out and listed, never padded;
external videos optionally resampled to the stage fps and cropped to its aspect) and, when
enabled, the alignment proxy (align.py), saving report strips on the way;
4. per preset: FVD generated vs real, baseline vs real and real vs real (N vs N), each with a
bootstrap interval over the stored features (stats.py);
5. EVAL/metrics.json, EVAL/features/<set>.<preset>.npz and EVAL/report.html.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curation.atomic import atomic_output
from curation.configfile import package_version
from training.data.sample_format import decode_mp4
from training.eval.config import (
    AlignResult,
    BaselineInfo,
    Estimate,
    EvalConfig,
    EvalMetrics,
    ExternalVideos,
    PresetFVD,
    RealSet,
)
from training.eval.generate import (
    Job,
    checkpoint_size,
    generate_all,
    read_prompts,
    resolve_checkpoint,
    video_path,
)
from training.eval.protocol import Preset, conform, make_preset, select_frames
from training.eval.report import save_strip, write_report
from training.eval.samples import by_source, choose, iter_real_videos, read_samples, sample_seed, stage_size
from training.eval.stats import Interval, bootstrap_fvd, wilson
from training.eval.videos import FolderVideo, describe, list_videos, read_prompt_file, read_video

TIE = 1e-6
BASELINE_VIDEOS = "baseline_videos.jsonl"


@dataclass(frozen=True)
class Item:
    """One video of a set: key, prompt, frames, frame rate (None: unknown) and where it came from."""

    key: str
    prompt: str
    video: np.ndarray
    fps: float | None
    origin: str


@dataclass
class _Set:
    """One set of videos after the feature pass: features per preset, alignment scores, what was read."""

    name: str
    keys: dict[str, list[str]] = field(default_factory=dict)
    features: dict[str, list[np.ndarray]] = field(default_factory=dict)
    short: Counter = field(default_factory=Counter)
    align: dict[str, float] = field(default_factory=dict)
    info: list[dict[str, Any]] = field(default_factory=list)

    def matrix(self, preset: str) -> np.ndarray:
        feats = self.features.get(preset) or []
        return np.concatenate(feats) if feats else np.zeros((0, 400))


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
    name: str,
    items: Iterable[Item],
    net: Any,
    presets: list[Preset],
    aligner: Any,
    strip_keys: set[str],
    cfg: EvalConfig,
    out: str,
    errors: list[str],
    stage: dict[str, float],
    external: ExternalVideos | None = None,
) -> _Set:
    """Features per preset (and alignment scores) of a stream of videos, one batch in memory at a
    time. External videos are described (fps, size, frames as read) and conformed first."""
    result = _Set(name)
    for batch in _batched(items, cfg.fvd.batch_size):
        kept: list[tuple[Item, np.ndarray]] = []
        for it in batch:
            video = it.video
            if external is not None:
                result.info.append({"key": it.key, "file": it.origin, **describe(video, it.fps)})
                try:
                    video = conform(video, it.fps, stage, external.resample_fps, external.crop_aspect)
                except ValueError as e:
                    errors.append(f"{it.origin}: {name} video left out: {e}")
                    continue
            kept.append((it, video))
        for p in presets:
            clips, keys = [], []
            for it, video in kept:
                clip = select_frames(video, p)
                if clip is None:
                    result.short[p.name] += 1
                    errors.append(
                        f"{it.origin}: {name} video has {video.shape[0]} frames, preset {p.name} needs "
                        f"{p.frames}: left out of {p.name} (not padded)"
                    )
                    continue
                clips.append(clip)
                keys.append(it.key)
            if clips:
                result.features.setdefault(p.name, []).append(net.features(clips))
                result.keys.setdefault(p.name, []).extend(keys)
        if aligner is not None and kept:
            scores = aligner.scores([it.prompt for it, _ in kept], [v for _, v in kept])
            result.align.update({it.key: sc for (it, _), sc in zip(kept, scores, strict=True)})
        for it, video in kept:
            if it.key in strip_keys:
                save_strip(out, name, it.key, video, cfg.report.strip_frames, cfg.report.strip_height)
    return result


def _generated_videos(
    out: str, jobs: list[Job], failed: dict[str, str], errors: list[str], fps: float
) -> Iterator[Item]:
    rows = read_prompts(out)
    for j in jobs:
        if j.key in failed or j.key not in rows:
            continue
        path = video_path(out, j.key)
        try:
            with open(path, "rb") as f:
                video = decode_mp4(f.read())
        except Exception as e:
            errors.append(f"{path}: generated video does not decode ({type(e).__name__}: {e})")
            continue
        yield Item(j.key, j.prompt, video, fps, path)


def _shard_videos(samples: list[Any], errors: list[str]) -> Iterator[Item]:
    for s, video in iter_real_videos(samples, errors):
        yield Item(s.key, s.caption, video, s.fps, f"{s.shard}: sample {s.key}")


def folder_videos(videos: Iterable[FolderVideo], errors: list[str], what: str) -> Iterator[Item]:
    for v in videos:
        try:
            frames, fps = read_video(v.path)
        except Exception as e:
            errors.append(f"{v.path}: {what} video does not decode ({type(e).__name__}: {e})")
            continue
        yield Item(v.key, v.prompt, frames, fps, v.path)


def baseline_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"baseline folder not found: {folder}")
    return list_videos(folder)


def baseline_videos(files: list[str], prompts: dict[str, str], errors: list[str]) -> Iterator[Item]:
    rows = [FolderVideo(os.path.splitext(os.path.basename(p))[0], "", p) for p in files]
    for it in folder_videos(rows, errors, "baseline"):
        yield Item(it.key, prompts.get(it.key, ""), it.video, it.fps, it.origin)


def _save_features(out: str, s: _Set) -> None:
    for preset, feats in s.features.items():
        path = os.path.join(out, "features", f"{s.name}.{preset}.npz")
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=np.array(s.keys[preset], dtype=str), features=np.concatenate(feats))


def _estimate(iv: Interval | None) -> Estimate | None:
    return None if iv is None else Estimate(value=iv.value, low=iv.low, high=iv.high, level=iv.level)


def _fvd_or_none(
    a: np.ndarray, b: np.ndarray, what: str, errors: list[str], cfg: EvalConfig, seed: int
) -> Estimate | None:
    if len(a) < 2 or len(b) < 2:
        errors.append(f"FVD {what}: needs at least 2 videos on each side ({len(a)} and {len(b)})")
        return None
    return _estimate(bootstrap_fvd(a, b, cfg.fvd.bootstrap, cfg.fvd.ci_level, seed))


def _real_set(
    shards: str | None, real_dir: str | None, prompts_file: str | None, cfg: EvalConfig, errors: list[str]
) -> tuple[list[Any], list[Any], RealSet, Any]:
    """(chosen, reference, description, shard index) of the real set; reference is the next N of
    the same seeded draw when the set holds 2N, else empty."""
    from training.data.loader import resolve_shards

    index = None
    if real_dir:
        if not prompts_file:
            raise ValueError("--real-dir needs --prompts FILE (the videos' Japanese captions, JSONL)")
        pool, errs = read_prompt_file(prompts_file, real_dir)
        errors += errs
        desc = {
            "kind": "dir",
            "location": os.path.abspath(real_dir),
            "prompts": os.path.abspath(prompts_file),
        }
    else:
        if not shards:
            raise ValueError("give --shards (a stage folder) or --real-dir DIR --prompts FILE")
        urls, index = resolve_shards(shards, cfg.split)
        if not urls:
            raise FileNotFoundError(f"no {cfg.split} shards in {shards}")
        samples, errs = read_samples(urls)
        errors += errs
        pool = by_source(samples, cfg.real.sources)
        desc = {"kind": "shards", "location": os.path.abspath(shards), "split": cfg.split}
        if cfg.real.sources is not None:
            desc["sources"] = list(cfg.real.sources)
            if not pool:
                have = sorted({s.source for s in samples})
                raise ValueError(
                    f"{shards}: no {cfg.split} samples of sources {cfg.real.sources} (have {have})"
                )
    drawn = choose(pool, 2 * cfg.num, cfg.seed)  # prefix-stable: the first N are choose(pool, N)
    chosen = drawn[: cfg.num]
    reference = drawn[cfg.num :] if len(drawn) >= 2 * len(chosen) and cfg.fvd.real_vs_real else []
    where = desc["location"]
    if len(chosen) < 4:
        raise ValueError(f"{where}: {len(chosen)} readable real samples; the evaluation needs 4 or more")
    return chosen, reference, RealSet(**desc, available=len(pool), n_reference=len(reference)), index


def evaluate(
    ckpt: str,
    shards: str | None,
    out: str,
    cfg: EvalConfig,
    baseline_dir: str | None = None,
    log: Callable[[str], None] = lambda _m: None,
    real_dir: str | None = None,
    prompts_file: str | None = None,
) -> EvalMetrics:
    from training.eval.features import load_feature_network

    t0 = time.time()
    os.makedirs(out, exist_ok=True)
    errors: list[str] = []
    chosen, reference, real_set, index = _real_set(shards, real_dir, prompts_file, cfg, errors)
    if len(chosen) < cfg.num:
        log(f"{len(chosen)} real samples, fewer than the {cfg.num} asked for: using all")
    checkpoint, step, identity = resolve_checkpoint(ckpt)
    stage = stage_size(index, chosen) if shards and not real_dir else checkpoint_size(checkpoint)
    presets = [make_preset(name, int(stage["frames"]), cfg.fvd.resolution) for name in cfg.protocol]
    files = baseline_files(baseline_dir) if baseline_dir else []
    # The measuring models load before generation, so a bad weights path fails in seconds, not
    # after hours of sampling.
    net = load_feature_network(cfg.fvd)
    aligner = None
    if cfg.align.enabled:
        from training.eval.align import Aligner

        aligner = Aligner.from_config(cfg.align)
    captions = [(s.key, getattr(s, "caption", None) or getattr(s, "prompt", "")) for s in chosen]
    jobs = [Job(key, caption, sample_seed(cfg.seed, key)) for key, caption in captions]
    gen = generate_all(checkpoint, identity, jobs, out, cfg.generate, stage, log)
    errors += [f"{video_path(out, k)}: generation failed: {r}" for k, r in sorted(gen["failed"].items())]
    gen_fps = float(gen["settings"].get("fps") or stage["fps"])

    strip_keys = {j.key for j in jobs[: cfg.report.videos]}
    prompts = {j.key: j.prompt for j in jobs}

    def measure(name: str, items: Iterable[Item], external: ExternalVideos | None = None, **kw: Any) -> _Set:
        log(f"features: {name} videos")
        return _feature_pass(
            name, items, net, presets, kw.get("aligner", aligner), kw.get("strips", strip_keys),
            cfg, out, errors, stage, external,
        )  # fmt: skip

    if real_dir:
        real = measure("real", folder_videos(chosen, errors, "real"), cfg.real)
        ref = measure(
            "reference", folder_videos(reference, errors, "real"), cfg.real, aligner=None, strips=set()
        )
    else:
        real = measure("real", _shard_videos(chosen, errors))
        ref = measure("reference", _shard_videos(reference, errors), aligner=None, strips=set())
    generated = measure("generated", _generated_videos(out, jobs, gen["failed"], errors, gen_fps))
    baseline, baseline_info = None, None
    if baseline_dir:
        matched = [f for f in files if os.path.splitext(os.path.basename(f))[0] in prompts]
        use = matched or files  # named by eval key: only those; otherwise the whole folder
        # Without keys there are no prompts to score alignment with.
        baseline = measure(
            "baseline",
            baseline_videos(use, prompts, errors),
            cfg.baseline,
            aligner=aligner if matched else None,
        )
        baseline_info = _baseline_info(baseline_dir, files, matched, baseline, cfg, out)
    for s in (real, ref, generated, baseline):
        if s is not None:
            _save_features(out, s)

    fvd: dict[str, PresetFVD] = {}
    for i, p in enumerate(presets):
        rf, gf, ff = real.matrix(p.name), generated.matrix(p.name), ref.matrix(p.name)
        seed = cfg.seed * 1000 + i * 10
        entry: dict[str, Any] = {
            "preset": p.describe(),
            "generated_vs_real": _fvd_or_none(gf, rf, f"{p.name} generated vs real", errors, cfg, seed),
            "n_generated": len(gf),
            "n_real": len(rf),
            "left_out_short": {
                s.name: s.short[p.name]
                for s in (real, ref, generated, baseline)
                if s is not None and s.short[p.name]
            },
            "notes": []
            if p.standard
            else [f"non-standard: {p.name} at {p.resolution} px (the common code: fvd16 at 224)"],
        }
        if baseline is not None:
            bf = baseline.matrix(p.name)
            entry["baseline_vs_real"] = _fvd_or_none(
                bf, rf, f"{p.name} baseline vs real", errors, cfg, seed + 1
            )
            entry["n_baseline"] = len(bf)
        if len(ff) >= 2 and len(rf) >= 2:
            entry["real_vs_real"] = _estimate(
                bootstrap_fvd(ff, rf, cfg.fvd.bootstrap, cfg.fvd.ci_level, seed + 2)
            )
            entry["n_reference"] = len(ff)
            if len(ff) != len(rf):
                entry["notes"].append(f"real-vs-real reference has {len(ff)} videos, the real set {len(rf)}")
        elif cfg.fvd.real_vs_real:
            entry["notes"].append(
                f"no real-vs-real reference: it needs 2N = {2 * len(chosen)} real videos, the set has "
                f"{real_set.available}; the bootstrap interval is the noise statement"
            )
        fvd[p.name] = PresetFVD(**entry)
    alignment = None
    if aligner is not None and generated.align and real.align:
        alignment = _alignment(cfg, real, generated, baseline)

    metrics = EvalMetrics(
        checkpoint=checkpoint,
        checkpoint_step=step,
        real_set=real_set,
        stage=os.path.basename(os.path.normpath(shards)) if shards and not real_dir else "checkpoint",
        stage_size=stage,
        n_requested=cfg.num,
        n=len(chosen),
        seed=cfg.seed,
        protocol=list(cfg.protocol),
        fvd=fvd,
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


def _baseline_info(
    folder: str, files: list[str], matched: list[str], s: _Set, cfg: EvalConfig, out: str
) -> BaselineInfo:
    """What the baseline's videos are (fps, size, frames as read), summarised; per video in a JSONL."""
    with atomic_output(os.path.join(out, BASELINE_VIDEOS)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in s.info:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    frames = [int(r["frames"]) for r in s.info]
    return BaselineInfo(
        dir=folder,
        files=len(files),
        n=len(s.info),
        matched_by_key=bool(matched),
        unmatched_files=len(files) - len(matched) if matched else 0,
        resample_fps=cfg.baseline.resample_fps,
        crop_aspect=cfg.baseline.crop_aspect,
        fps=dict(Counter("unknown" if r["fps"] is None else f"{r['fps']:g}" for r in s.info)),
        sizes=dict(Counter(f"{r['width']}x{r['height']}" for r in s.info)),
        frames={"min": min(frames), "median": int(np.median(frames)), "max": max(frames)} if frames else {},
        videos_file=BASELINE_VIDEOS,
    )


def _alignment(cfg: EvalConfig, real: _Set, generated: _Set, baseline: _Set | None) -> AlignResult:
    base_mean, share, pairs, wins, ties = None, None, 0, 0, 0
    if baseline is not None and baseline.align:
        common = sorted(set(baseline.align) & set(generated.align))
        base_mean = float(np.mean(list(baseline.align.values())))
        diffs = [generated.align[k] - baseline.align[k] for k in common]
        pairs = len(common)
        # Cosines equal up to float rounding (the same video batched differently) are ties, not wins.
        wins = sum(d > TIE for d in diffs)
        ties = sum(abs(d) <= TIE for d in diffs)
        iv = wilson(wins, pairs - ties, cfg.fvd.ci_level)
        share = _estimate(iv)
    return AlignResult(
        model=cfg.align.model,
        revision=cfg.align.revision,
        frames=cfg.align.frames,
        generated=float(np.mean(list(generated.align.values()))),
        real=float(np.mean(list(real.align.values()))),
        baseline=base_mean,
        pairs=pairs,
        wins=wins,
        ties=ties,
        win_share_vs_baseline=share,
        n=len(generated.align),
    )
