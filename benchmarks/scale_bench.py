"""Curation at corpus scale: per-video cost, driver memory and manifest files as the corpus grows.

    python benchmarks/scale_bench.py run --videos 1000 [--videos 10000] [--runner local|ray]
    python benchmarks/scale_bench.py sim --videos 1000000 [--clips-per-video 6]

`run`: generates N small videos (160x96, 5 s, two shots each) and runs curate -> caption (the
tiny Qwen2-VL of the demo, transformers on the CPU) -> shard in this process (the driver),
printing per step the wall and CPU seconds per video (driver + its child processes), the driver's
peak resident memory, the manifest file count and the time to read the manifests back. With two
--videos values it prints the ratios of the larger to the smaller. Every step does real work at a
reduced model/render cost per clip, since the point is how the per-video overhead grows with N:
caption writes one caption type (`short`) from 2 frames per clip, 64 clips per part file
(SCALE_CAPTION); shard renders every kept clip into a 128x96, 12-frame stage sized for these clips
(SCALE_STAGE; the demo stage's 128x128 is larger than the clips, so it would skip them all).

`sim`: manifest-only, no video: synthetic rows for N videos x K clips go through the real
writers (parts of 1,000 videos), compaction, readers, the resume index, `vjp decide` (finalize),
caption bookkeeping (parts written, compacted, read, pending work) and shard planning (the job's
columnar readers, plan_samples and group_shards with a synthetic probe per clip; plus the plan-hash
check a rerun makes, timed per sample on the first 1,000 shards). Each step runs in its own
process so its peak memory is its own. Clip files are simulated: the staging listing is given,
moves are counted. `--steps shard-driver` (after write,compact,stage,decide,caption) prints the
driver CPU per sample and memory of `vjp shard`'s fresh dispatch and rerun done-check on Ray, the
previous driver against the current one (SHARD_DRIVER_STEPS).

Timings on a shared machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEMO = ROOT / "jobs" / "configs" / "demo.yaml"
# `run`'s cheaper per-clip settings (the model and render cost per clip is constant in N; the
# benchmark is about the per-video overhead): merged over the demo's caption and shard sections.
_FRAMES = {"fps": 1.0, "min_frames": 2, "max_frames": 2, "min_pixels": 3136, "max_pixels": 12544}
_SHORT = {"prompt_id": "short_ja", "max_tokens": 64, "min_chars": 10, "max_chars": 120}
SCALE_CAPTION: dict[str, Any] = {
    "frames": {**_FRAMES, "total_pixels": 25088},
    "caption_types": {"short": _SHORT},
    "transformers": {"device": "cpu", "batch_size": 64},
}
SCALE_STAGE: dict[str, Any] = {"width": 128, "height": 96, "frames": 12, "fps": 12.0, "codec": "libx264",
                               "crf": 28, "preset": "ultrafast", "max_shard_samples": 500}  # fmt: skip


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    """CPU seconds of this process, its reaped children and its live descendants, with what each
    live descendant has reaped: Ray's raylet reaps the workers it replaces, and their CPU counted
    nowhere else (a 10k-video Ray curate read 11 ms a video without it, below the work itself)."""
    import psutil

    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
            live += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime + live


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), cpu_s()
    out = fn()
    return out, time.perf_counter() - w0, cpu_s() - c0


def manifest_files(out: str) -> dict[str, int]:
    from curation.manifest import file_count

    m = os.path.join(out, "manifests")
    return {d: file_count(os.path.join(m, d)) for d in ("videos", "scores", "thumbs", "clips", "captions")}


# ---------------------------------------------------------------- run: real videos


def make_videos(folder: str, n: int) -> None:
    """N small videos (160x96, 5 s): two 2.5 s shots each, each with its own texture seed."""
    from curation.synth import Segment, SynthVideo, write_video

    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        path = os.path.join(folder, f"v{i:06d}.mp4")
        if not os.path.exists(path):
            segs = (Segment("moving", 60, seed=2 * i), Segment("moving", 60, seed=2 * i + 1))
            write_video(SynthVideo(f"v{i}", segs, fps=24, width=160, height=96, crf=28), path)


def read_time(out: str) -> float:
    from curation.manifest import read_table
    from curation.pipeline import Layout

    layout = Layout(out)
    t0 = time.perf_counter()
    read_table(layout.videos)
    read_table(layout.scores)
    return time.perf_counter() - t0


def git_commit() -> str:
    p = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return p.stdout.strip() or "unknown"


def _shard_counts(summary: dict[str, Any]) -> dict[str, Any]:
    """The shard summary's sample and skip counts (what was rendered, not only planned)."""
    keep = ("clips_kept", "samples_written", "skipped_by_reason", "shards_written", "failed_shards")
    return {k: summary[k] for k in keep if k in summary}


RUN_STEPS = ("curate", "caption", "shard")


def _progress(n: int, res: dict[str, Any], step: str) -> None:
    """One line per finished step on stderr: a run that cannot finish still shows how far it got."""
    line = {"videos": n, "step_done": step, **res["steps"][step], "at": time.strftime("%H:%M:%S")}
    print(json.dumps(line), file=sys.stderr, flush=True)


def run_one(
    n: int, work: str, runner: str, progress: bool = False, steps: tuple[str, ...] = RUN_STEPS
) -> dict[str, Any]:
    from curation.config import parse_config
    from curation.configfile import load_section
    from jobs.curate import curate

    src, out = os.path.join(work, f"src{n}"), os.path.join(work, f"out{n}")
    _, gen_s, _ = timed(lambda: make_videos(src, n))
    shutil.rmtree(out, ignore_errors=True)
    res: dict[str, Any] = {"videos": n, "commit": git_commit(), "generate_s": round(gen_s, 1), "steps": {}}
    print(
        json.dumps({"videos": n, "commit": res["commit"], "generated_s": res["generate_s"]}), file=sys.stderr
    )
    rss0 = peak_rss_mb()

    # 160x96 videos: the short-side minimum lowered so that clips are kept and go on to caption/shard.
    overrides = [f"runner.progress={str(progress).lower()}", "filters.min_short_side=64"]
    cfg = parse_config(*load_section(str(DEMO), "curate", overrides))
    summary, w, c = timed(lambda: curate(f"files:{src}/*.mp4", out, cfg, runner))
    res["steps"]["curate"] = {"wall_per_video_ms": 1e3 * w / n, "cpu_per_video_ms": 1e3 * c / n,
                              "driver_peak_rss_mb": peak_rss_mb()}  # fmt: skip
    res["clips_kept"] = summary["clips_kept"]
    _progress(n, res, "curate")
    if "caption" in steps:
        _caption_step(n, work, out, res, progress)
    if "shard" in steps:
        _shard_step(n, out, res, runner, progress)
    for s in res["steps"].values():
        for k in s:
            s[k] = round(s[k], 1)
    res["driver_peak_rss_mb"] = round(peak_rss_mb(), 1)
    res["driver_rss_growth_mb"] = round(peak_rss_mb() - rss0, 1)
    res["manifest_files"] = manifest_files(out)
    res["manifest_read_s"] = round(read_time(out), 3)
    return res


def _caption_step(n: int, work: str, out: str, res: dict[str, Any], progress: bool) -> None:
    from captioning.config import config_from_dict
    from curation.configfile import load_section
    from jobs.caption import caption_clips

    data, origin = load_section(str(DEMO), "caption", [])
    data = {**data, **SCALE_CAPTION}
    ccfg = config_from_dict(data, origin)
    model = os.path.join(work, "captioner")
    if not os.path.exists(os.path.join(model, "config.json")):
        from captioning.frames import sample_frames
        from captioning.manifest import read_kept_clips
        from captioning.tiny import build_demo_captioner

        first = read_kept_clips(os.path.join(out, "manifests", "clips"))[0]
        t, h, w_, _ = sample_frames(os.path.join(out, first["clip_path"]), ccfg.frames).shape
        build_demo_captioner(model, (h, w_), t, steps=40, cfg=ccfg)
    ccfg = config_from_dict({**data, "model": {"id": model}}, origin)
    cap, w, c = timed(
        lambda: caption_clips(
            os.path.join(out, "manifests"), ccfg, "transformers", "local", progress=progress
        )
    )
    res["caption"] = {k: cap[k] for k in ("status", "pending", "clips") if k in cap}
    res["steps"]["caption"] = {"wall_per_video_ms": 1e3 * w / n, "cpu_per_video_ms": 1e3 * c / n,
                              "driver_peak_rss_mb": peak_rss_mb()}  # fmt: skip
    _progress(n, res, "caption")


def _shard_step(n: int, out: str, res: dict[str, Any], runner: str, progress: bool) -> None:
    from curation.configfile import load_section
    from jobs.shard import shard_stage
    from training.data.stages import parse_config as parse_shard

    sdata, sorigin = load_section(str(DEMO), "shard", ["runner.progress=" + str(progress).lower()])
    scfg = parse_shard({**sdata, "stages": {"scale": SCALE_STAGE}}, sorigin)
    shards = os.path.join(out, "shards")
    shard_summary, w, c = timed(
        lambda: shard_stage(os.path.join(out, "manifests"), "scale", shards, scfg, runner)
    )
    res["shard"] = _shard_counts(shard_summary)
    res["steps"]["shard"] = {"wall_per_video_ms": 1e3 * w / n, "cpu_per_video_ms": 1e3 * c / n,
                              "driver_peak_rss_mb": peak_rss_mb()}  # fmt: skip
    _progress(n, res, "shard")


def cmd_run(args: argparse.Namespace) -> None:
    results = []
    for n in sorted(args.videos):
        # One process per size: peak memory is that size's own.
        cmd = [
            sys.executable,
            __file__,
            "run-one",
            "--n",
            str(n),
            "--work",
            args.work,
            "--runner",
            args.runner,
            "--steps",
            args.steps,
            *(["--progress"] if args.progress else []),
        ]
        # stderr passes through: per-step progress lines (and bars with --progress) reach the log.
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(json.dumps(r), flush=True)
    if len(results) > 1:
        a, b = results[0], results[-1]

        def ratios(key: str) -> dict[str, float]:
            return {step: round(b["steps"][step][key] / a["steps"][step][key], 3) for step in a["steps"]}

        # The driver's memory through curate (caption then loads a model into the same process).
        grown = b["steps"]["curate"]["driver_peak_rss_mb"] - a["steps"]["curate"]["driver_peak_rss_mb"]
        growth = grown / ((b["videos"] - a["videos"]) / 1e4)
        wall, cpu = ratios("wall_per_video_ms"), ratios("cpu_per_video_ms")
        mb = round(growth, 1)
        print(
            json.dumps(
                {"wall_per_video_ratio": wall, "cpu_per_video_ratio": cpu, "driver_mb_per_10k_videos": mb}
            )
        )


# ---------------------------------------------------------------- sim: manifests only


def _batch_tables(first: int, n: int, k: int, analysis_hash: str) -> dict[str, Any]:
    """Rows of videos [first, first+n) with k clips each, built column-wise (no dict per row)."""
    import numpy as np
    import pyarrow as pa

    from curation.manifest import SCORES_SCHEMA, THUMB_SCHEMA, VIDEO_SCHEMA

    rng = np.random.default_rng(first)
    vids = [f"fil{i:016x}" for i in range(first, first + n)]
    v = {name: pa.nulls(n, VIDEO_SCHEMA.field(name).type) for name in VIDEO_SCHEMA.names}
    v.update(
        video_id=pa.array(vids), source=pa.array(["files"] * n),
        source_key=pa.array([f"{x}.mp4" for x in vids]), uri=pa.array([f"/data/{x}.mp4" for x in vids]),
        status=pa.array(["ok"] * n),
        width=pa.array(np.full(n, 640)), height=pa.array(np.full(n, 360)), fps=pa.array(np.full(n, 24.0)),
        duration_s=pa.array(np.full(n, 6.0 * k)), source_meta=pa.array(["{}"] * n),
        hints=pa.array(["[]"] * n),
        cuts=pa.array([[] for _ in range(n)], pa.list_(pa.int64())), n_candidates=pa.array(np.full(n, k)),
        analysis_hash=pa.array([analysis_hash] * n), package_version=pa.array(["0"] * n),
        schema_version=pa.array(np.ones(n, dtype=np.int64)),
    )  # fmt: skip
    m = n * k
    PH = pa.list_(pa.int64())
    start = np.tile(np.arange(k) * 144, n)
    cids = [f"{vid}_{s:07d}_{s + 144:07d}" for vid in vids for s in range(0, 144 * k, 144)]
    s = {name: pa.nulls(m, SCORES_SCHEMA.field(name).type) for name in SCORES_SCHEMA.names}
    # Scores spread around the thresholds: about half of the clips pass every check.
    s.update(
        clip_id=pa.array(cids), video_id=pa.array(np.repeat(vids, k)), source=pa.array(["files"] * m),
        start_frame=pa.array(start), end_frame=pa.array(start + 144), start_s=pa.array(start / 24.0),
        end_s=pa.array((start + 144) / 24.0), duration_s=pa.array(np.full(m, 6.0)),
        n_frames=pa.array(np.full(m, 144)), fps=pa.array(np.full(m, 24.0)), width=pa.array(np.full(m, 640)),
        height=pa.array(np.full(m, 360)), shot_index=pa.array(np.tile(np.arange(k), n)),
        window_index=pa.array(np.zeros(m, dtype=np.int64)), n_samples=pa.array(np.full(m, 8)),
        motion=pa.array(rng.uniform(0.0, 0.02, m)), luma_mean=pa.array(rng.uniform(20, 240, m)),
        luma_std=pa.array(rng.uniform(10, 60, m)), luma_p99=pa.array(rng.uniform(100, 255, m)),
        dark_fraction=pa.array(rng.uniform(0, 0.5, m)), sharpness=pa.array(rng.uniform(0, 400, m)),
        text_fraction=pa.array(rng.uniform(0, 0.05, m)),
        crop_top=pa.array(np.zeros(m)), crop_bottom=pa.array(np.zeros(m)), crop_left=pa.array(np.zeros(m)),
        crop_right=pa.array(np.zeros(m)), border_fraction=pa.array(np.zeros(m)),
        phashes=pa.array(list(rng.integers(-(2**63), 2**63 - 1, (m, 3), dtype=np.int64)), PH),
        source_meta=pa.array(["{}"] * m), analysis_hash=pa.array([analysis_hash] * m),
        package_version=pa.array(["0"] * m), schema_version=pa.array(np.ones(m, dtype=np.int64)),
    )  # fmt: skip
    t = {
        "clip_id": pa.array(cids),
        "video_id": pa.array(np.repeat(vids, k)),
        "jpeg": pa.array([b"\xff" * 16] * m),
    }
    return {
        "videos": pa.table(v, schema=VIDEO_SCHEMA),
        "scores": pa.table(s, schema=SCORES_SCHEMA),
        "thumbs": pa.table(t, schema=THUMB_SCHEMA),
    }


def _simulate_clip_files(out: str) -> dict[str, int]:
    """Clip files are not written in the simulation: every clip passing the local checks is listed
    as present in staging (as after curate), and moves are counted instead of made."""
    import curation.atomic as atomic

    staged_path = os.path.join(out, "staged.txt")
    moves = {"n": 0}
    names = Path(staged_path).read_text().split() if os.path.exists(staged_path) else []
    real_listdir = atomic.listdir

    def listdir(folder: str) -> list[str]:
        return names if folder.rstrip("/").endswith("/staging") else real_listdir(folder)

    def move(src: str, dst: str) -> None:
        moves["n"] += 1

    atomic.listdir = listdir  # type: ignore[assignment]
    atomic.move = move  # type: ignore[assignment]
    return moves


def sim_step(step: str, out: str, n: int, k: int) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa

    from curation.config import CurateConfig
    from curation.manifest import read_table, write_parquet
    from curation.pipeline import Layout, ResumeIndex, compact_manifests, finalize

    cfg = CurateConfig()
    layout = Layout(out)
    res: dict[str, Any] = {"step": step}
    if step == "write":
        per = 1000
        for b, first in enumerate(range(0, n, per)):
            tables = _batch_tables(first, min(per, n - first), k, cfg.analysis_hash)
            for name in ("thumbs", "scores", "videos"):  # the video part last: its commit marker
                write_parquet(tables[name], os.path.join(getattr(layout, name), f"batch-{b:06d}.parquet"))
        res["parts"] = sum(len(os.listdir(getattr(layout, x))) for x in ("videos", "scores", "thumbs"))
    elif step == "compact":
        t0 = time.perf_counter()
        res["compacted"] = compact_manifests(out)
        res["compact_s"] = round(time.perf_counter() - t0, 2)
        res["files"] = manifest_files(out)
    elif step == "read":
        t0 = time.perf_counter()
        t = read_table(layout.videos)
        s = read_table(layout.scores)
        res["read_s"] = round(time.perf_counter() - t0, 2)  # the manifests of every video, imports excluded
        res["rows"] = {"videos": t.num_rows, "scores": s.num_rows}
    elif step == "stage":
        # Which clips would be in staging: those passing the local checks (what curate extracts).
        from curation.decide import failing_matrix
        from curation.pipeline import DECISION_COLUMNS

        s = read_table(layout.scores, columns=[c for c in DECISION_COLUMNS if c != "phashes"])
        m = failing_matrix(s, np.full(s.num_rows, 640.0), np.full(s.num_rows, 360.0), cfg.split, cfg.filters)
        ids = s.column("clip_id").filter(pa.array(~m.any(axis=1))).to_pylist()
        Path(out, "staged.txt").write_text("\n".join(f"{c}.mp4" for c in ids))
        res["staged"] = len(ids)
    elif step == "resume":
        # The staging listing is made in its own process: this step's peak memory is the index's.
        if not os.path.exists(os.path.join(out, "staged.txt")):
            cmd = [sys.executable, __file__, "sim-step", "stage", "--out", out, "--n", str(n), "--k", str(k)]
            subprocess.run(cmd, check=True, capture_output=True)
        _simulate_clip_files(out)
        t0, c0 = time.perf_counter(), cpu_s()
        idx = ResumeIndex.load(out, cfg)
        res["resume_index_s"] = round(time.perf_counter() - t0, 2)
        res["resume_index_cpu_s"] = round(cpu_s() - c0, 2)
        res["finished"], res["partial"] = len(idx.finished), len(idx.partial)
    elif step == "decide":
        moves = _simulate_clip_files(out)
        t0, c0 = time.perf_counter(), cpu_s()
        summary = finalize(out, cfg)
        res["decide_s"] = round(time.perf_counter() - t0, 2)
        res["decide_cpu_s"] = round(cpu_s() - c0, 2)
        res.update(clips=summary["clips"], kept=summary["clips_kept"], moves=moves["n"])
        res["rejected"] = summary["rejected_by_reason"]
    elif step == "caption":
        import pyarrow.dataset as pds

        from captioning.manifest import (
            ARROW_SCHEMA,
            compact_captions,
            pending_mask,
            read_captions,
            read_kept_clips,
        )

        cap = os.path.join(out, "manifests", "captions")
        t0 = time.perf_counter()
        ids = read_table(os.path.join(out, "manifests", "clips"), columns=["clip_id"], group_key=None,
                         filter=pds.field("status") == "kept").column("clip_id")  # fmt: skip
        half = ids.slice(0, len(ids) // 2).combine_chunks()
        per = 2000
        for i in range(0, len(half), per):
            part = half.slice(i, per)
            m = len(part)
            rows = {name: pa.nulls(2 * m, ARROW_SCHEMA.field(name).type) for name in ARROW_SCHEMA.names}
            rows.update(
                schema_version=pa.array(["caption_row.v1"] * 2 * m), clip_id=pa.concat_arrays([part, part]),
                caption_type=pa.array(["short"] * m + ["dense"] * m),
                caption=pa.array(["赤い四角が動く。"] * 2 * m),
                model_id=pa.array(["tiny"] * 2 * m), backend=pa.array(["transformers"] * 2 * m),
                prompt_id=pa.array(["p"] * 2 * m), prompt_version=pa.array(np.ones(2 * m, np.int32)),
                sampling_params=pa.array(["{}"] * 2 * m), status=pa.array(["ok"] * 2 * m),
                tries=pa.array(np.ones(2 * m, np.int32)), backend_attempts=pa.array(np.ones(2 * m, np.int32)),
                config_hash=pa.array(["h"] * 2 * m), package_version=pa.array(["0"] * 2 * m),
                run_id=pa.array(["r"] * 2 * m),
                created_at=pa.array(np.full(2 * m, 1_700_000_000_000_000), pa.timestamp("us", tz="UTC")),
            )  # fmt: skip
            write_parquet(pa.table(rows, schema=ARROW_SCHEMA), os.path.join(cap, f"part-r-{i:09d}.parquet"))
        res["write_captions_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        compact_captions(cap)
        res["compact_captions_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        clips = read_kept_clips(os.path.join(out, "manifests", "clips"))
        captions = read_captions(cap)
        masks = pending_mask(clips.table.column("clip_id"), captions, ["short", "dense"], False)
        res["planning_s"] = round(time.perf_counter() - t0, 2)
        res.update(
            kept=len(clips), captions=captions.num_rows, pending={t: int(v.sum()) for t, v in masks.items()}
        )
    elif step == "shard":
        from curation.configfile import load_section
        from jobs.shard import read_caption_table, read_kept_table
        from training.data.planning import plan_samples
        from training.data.shard_writer import ClipProbe, group_shards, samples_per_shard
        from training.data.stages import parse_config as parse_shard

        scfg = parse_shard(*load_section(str(DEMO), "shard", []))
        t0 = time.perf_counter()
        clips = read_kept_table(Path(out, "manifests", "clips"))
        captions = read_caption_table(Path(out, "manifests", "captions"), clips.column("clip_id"))
        res["read_s"] = round(time.perf_counter() - t0, 2)
        probe = ClipProbe(width=640, height=360, n_frames=144, fps=24.0, size_bytes=300_000)
        t0 = time.perf_counter()
        plans, skips = plan_samples(clips, captions, lambda _: probe, "demo", scfg)
        res["plan_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        shards = group_shards(plans, samples_per_shard(scfg.stage("demo"), 300_000.0), scfg.seed)
        res["group_s"] = round(time.perf_counter() - t0, 2)
        # A rerun checks every shard's plan hash (a meta per sample): timed on the first 1,000 shards.
        t0 = time.perf_counter()
        few = shards[:1000]
        for sh in few:
            sh.plan_hash  # noqa: B018
        per = (time.perf_counter() - t0) / max(1, sum(len(sh.samples) for sh in few))
        res["plan_hash_us_per_sample"] = round(1e6 * per, 1)
        res.update(clips=clips.num_rows, planned=len(plans), skipped=len(skips), shards=len(shards))
    elif step in SHARD_DRIVER_STEPS:
        res.update(_shard_driver(step, out))
    return res


# ---------------------------------------------------------------- sim: vjp shard's driver per sample
# `--steps shard-driver` runs these in order, each in its own process: a fresh run's dispatch and a
# rerun's done-check, by the previous driver (every sample's meta built in the driver: plan hashes
# in `shard_is_done`, plans pickled into each Ray task) and by the current one (`run_shards`: each
# Ray task gets its rows' columns of the plan source, builds the metas and checks the record). The
# fresh dispatch runs a task that does nothing (what the driver pays to hand the shards out);
# `shard-done` writes every shard first (a stand-in renderer: the key and a 1-byte txt member per
# sample) so that the reruns find every shard done; the rerun tasks are the real ones.
SHARD_DRIVER_STEPS = (
    "shard-fresh-old",
    "shard-fresh-new",
    "shard-done",
    "shard-rerun-old",
    "shard-rerun-new",
)
SHARD_YAML = ROOT / "jobs" / "configs" / "shard.yaml"


def _noop_task(item: Any, *extra: Any) -> None:
    return None


def _fake_render(plan: Any, *a: Any, **k: Any) -> dict[str, Any]:
    return {"__key__": plan.key, "txt": b"x"}


def _phase(fn: Callable[[], Any], samples: int) -> tuple[Any, dict[str, Any]]:
    """fn() with the driver's own CPU (this process, every thread; not Ray's or other processes),
    wall time, and resident memory before and at its peak (sampled every 20 ms)."""
    import threading

    import psutil

    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    peak = [rss0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = fn()
    wall, r1 = time.perf_counter() - w0, resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    t.join()
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    return out, {
        "driver_cpu_s": round(cpu, 2),
        "driver_cpu_us_per_sample": round(1e6 * cpu / max(1, samples), 1),
        "phase_wall_s": round(wall, 2),
        "rss_before_mb": round(rss0 / 2**20, 1),
        "phase_peak_rss_mb": round(max(peak[0], proc.memory_info().rss) / 2**20, 1),
    }


def _shard_driver(step: str, out: str) -> dict[str, Any]:
    from curation.configfile import load_section
    from jobs.runner import init_ray, map_ray, map_threads
    from jobs.shard import read_caption_table, read_kept_table, run_shards
    from training.data import shard_writer as sw
    from training.data.planning import plan_samples
    from training.data.shard_writer import ClipProbe, group_shards, samples_per_shard, shard_tasks
    from training.data.stages import parse_config as parse_shard

    cfg = parse_shard(*load_section(str(SHARD_YAML), "shard", []))
    stage = "stage1"  # 256x256 from the 640x360 probes below; ~3,333 samples a shard at 300 kB each
    clips = read_kept_table(Path(out, "manifests", "clips"))
    captions = read_caption_table(Path(out, "manifests", "captions"), clips.column("clip_id"))
    probe = ClipProbe(width=640, height=360, n_frames=144, fps=24.0, size_bytes=300_000)
    plans, _ = plan_samples(clips, captions, lambda _: probe, stage, cfg)
    shards = group_shards(plans, samples_per_shard(cfg.stage(stage), 300_000.0), cfg.seed)
    n = len(plans)
    res: dict[str, Any] = {"planned": n, "shards": len(shards)}
    root, shard_out = out, os.path.join(out, "shard-driver")
    so, in_flight, cpus = cfg.storage_options, cfg.runner.max_in_flight, cfg.runner.num_cpus_per_shard
    if step in ("shard-fresh-old", "shard-fresh-new", "shard-rerun-new"):
        init_ray(None)  # started before the phase: its start is not the driver's per-sample cost
    if step == "shard-fresh-old":
        fresh = os.path.join(out, "shard-driver-empty")

        def old_fresh() -> int:
            todo = [sh for sh in shards if sw.shard_is_done(sh, fresh, stage, False, so) is None]
            return sum(1 for _ in map_ray(_noop_task, todo, (root, fresh, stage, cfg), in_flight, cpus))

        res["tasks"], ph = _phase(old_fresh, n)
    elif step == "shard-fresh-new":

        def new_fresh() -> int:
            return sum(1 for _ in run_shards(shards, root, shard_out, stage, cfg, "ray", fn=_noop_task))

        res["tasks"], ph = _phase(new_fresh, n)
    elif step == "shard-done":
        shutil.rmtree(shard_out, ignore_errors=True)
        sw.render_sample = _fake_render  # type: ignore[assignment]
        source, tasks = shard_tasks(shards)
        extra = (source, root, shard_out, stage, cfg, False)

        def write_all() -> int:
            return sum(1 for _, o, e in map_threads(sw.run_shard_task, tasks, extra, 2) if e is None)

        res["written"], ph = _phase(write_all, n)
    elif step == "shard-rerun-old":

        def old_rerun() -> int:
            return sum(sw.shard_is_done(sh, shard_out, stage, False, so) is not None for sh in shards)

        res["reused"], ph = _phase(old_rerun, n)
    else:

        def new_rerun() -> int:
            results = run_shards(shards, root, shard_out, stage, cfg, "ray")
            return sum(1 for _, o, e in results if e is None and o.reused)

        res["reused"], ph = _phase(new_rerun, n)
    res.update(ph)
    return res


def cmd_sim(args: argparse.Namespace) -> None:
    out = os.path.join(args.work, f"sim{args.videos}")
    if "write" in args.steps.split(","):  # otherwise later steps rerun on a kept (--keep) folder
        shutil.rmtree(out, ignore_errors=True)
    print(
        json.dumps({"sim": {"videos": args.videos, "clips": args.videos * args.clips_per_video}}), flush=True
    )
    steps = [
        x
        for step in args.steps.split(",")
        for x in (SHARD_DRIVER_STEPS if step == "shard-driver" else [step])
    ]
    for step in steps:
        cmd = [sys.executable, __file__, "sim-step", step, "--out", out, "--n", str(args.videos),
               "--k", str(args.clips_per_video)]  # fmt: skip
        w0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            print(json.dumps({"step": step, "error": p.stderr[-2000:]}), flush=True)
            return
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["process_wall_s"] = round(time.perf_counter() - w0, 1)
        print(json.dumps(r, ensure_ascii=False), flush=True)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--videos", type=int, action="append", required=True)
    r.add_argument("--runner", choices=["local", "ray"], default="local")
    r.add_argument("--progress", action="store_true", help="progress bars of curate and caption on stderr")
    r.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "vjp-scale-bench"))
    r.add_argument("--steps", default=",".join(RUN_STEPS), help="curate always runs; caption, shard optional")
    one = sub.add_parser("run-one")
    one.add_argument("--n", type=int, required=True)
    one.add_argument("--work", required=True)
    one.add_argument("--runner", default="local")
    one.add_argument("--progress", action="store_true")
    one.add_argument("--steps", default=",".join(RUN_STEPS))
    s = sub.add_parser("sim")
    s.add_argument("--videos", type=int, default=1_000_000)
    s.add_argument("--clips-per-video", type=int, default=6)
    s.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "vjp-scale-bench"))
    s.add_argument("--keep", action="store_true")
    s.add_argument("--steps", default="write,compact,read,resume,decide,caption,shard")
    st = sub.add_parser("sim-step")
    st.add_argument("step")
    st.add_argument("--out", required=True)
    st.add_argument("--n", type=int, required=True)
    st.add_argument("--k", type=int, required=True)
    args = p.parse_args()
    if args.cmd == "run":
        cmd_run(args)
    elif args.cmd == "run-one":
        os.makedirs(args.work, exist_ok=True)
        print(
            json.dumps(run_one(args.n, args.work, args.runner, args.progress, tuple(args.steps.split(","))))
        )
    elif args.cmd == "sim":
        os.makedirs(args.work, exist_ok=True)
        cmd_sim(args)
    else:
        w0, c0 = time.perf_counter(), cpu_s()
        res = sim_step(args.step, args.out, args.n, args.k)
        res.update(wall_s=round(time.perf_counter() - w0, 2), cpu_s=round(cpu_s() - c0, 2),
                   peak_rss_mb=round(peak_rss_mb(), 1))  # fmt: skip
        print(json.dumps(res, ensure_ascii=False))


if __name__ == "__main__":
    main()
