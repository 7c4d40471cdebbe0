"""Per-batch caption logic (pure, no Ray) and the two executors: local threads and Ray Data.

caption_batch: frames + clip rows -> prompts -> backend -> post-process -> QA -> retry failing
captions with the next sampling of the schedule -> CaptionRow per (clip, caption type). Frames that
cannot be read and backend errors become status=error rows; captions that still fail QA after
max_tries become status=rejected rows with the reasons. Nothing is dropped.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioning.backends.base import CaptionBackend, GenRequest, Sampling, sampling_for_try
from captioning.config import CaptionConfig
from captioning.frames import FrameError, FrameSample, sample_frames
from captioning.manifest import CaptionRow, now_utc, write_part
from captioning.prompts import build_messages, hint_lines
from captioning.qa import QAResult, evaluate, postprocess
from curation import atomic
from curation.configfile import package_version
from training.data.store import UnsafePath, member


@dataclass
class ClipWork:
    clip: dict[str, Any]  # clip manifest row + "caption_types" to do
    frames: FrameSample | None = None
    error: str | None = None


@dataclass
class RunContext:
    backend_name: str
    model_id: str
    model_revision: str | None
    run_id: str
    config_hash: str
    package_version: str = field(default_factory=package_version)


def prepare_clip(clip: dict[str, Any], out_dir: str | Path, cfg: CaptionConfig) -> ClipWork:
    """Frame sampling for one clip; never raises (a bad clip becomes an error row later).

    A clip on an object store (OUT = s3://...) is downloaded to a temporary file first."""
    try:
        path = clip_abspath(clip, out_dir)
    except UnsafePath as e:
        return ClipWork(clip, error=f"frames: unsafe_path: {e}")
    if path is None:
        return ClipWork(clip, error="frames: clip_path is empty")
    try:
        with atomic.local_file(path) as local:
            return ClipWork(clip, frames=sample_frames(local, cfg.frames))
    except FrameError as e:
        return ClipWork(clip, error=f"frames: {e}")
    except FileNotFoundError:
        return ClipWork(clip, error=f"frames: clip file not found: {path}")
    except Exception as e:  # belt and braces: nothing in one clip may stop the batch
        return ClipWork(clip, error=f"frames: {type(e).__name__}: {e}"[:500])


def clip_abspath(clip: dict[str, Any], out_dir: str | Path) -> str | None:
    """The clip file under OUT; a clip_path that would leave OUT (absolute, a URL, '..') raises
    UnsafePath, as `vjp shard` refuses it: the manifest is input, not trusted."""
    if not clip.get("clip_path"):
        return None
    return member(os.fspath(out_dir), str(clip["clip_path"]), f"clip {clip.get('clip_id')}")


@dataclass
class _Task:
    work: ClipWork
    ctype: str
    messages: list[dict[str, Any]]
    tries: int = 0
    attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    gen_s: float = 0.0
    sampling: Sampling | None = None
    raw: str | None = None
    text: str | None = None
    qa: QAResult | None = None
    error: str | None = None
    done: bool = False


def caption_batch(
    works: list[ClipWork], backend: CaptionBackend, cfg: CaptionConfig, ctx: RunContext, out_dir: str | Path
) -> list[CaptionRow]:
    """Caption a batch of prepared clips; one row per (clip, caption type) it asks for."""
    tasks: list[_Task] = []
    for w in works:
        hints = hint_lines(
            w.clip.get("source_caption"),
            w.clip.get("source_meta"),
            use_caption=cfg.hints.source_caption,
            use_meta=cfg.hints.source_meta,
            meta_keys=cfg.hints.meta_keys,
            max_chars=cfg.hints.max_chars,
        )
        for ctype in w.clip.get("caption_types") or cfg.enabled_types():
            tpl = cfg.prompts[cfg.caption_types[ctype].prompt_id]
            task = _Task(w, ctype, build_messages(cfg.system_prompt, tpl, hints))
            if w.error is not None:
                task.error, task.done = w.error, True
            tasks.append(task)

    for try_index in range(cfg.retry.max_tries):
        active = [t for t in tasks if not t.done]
        if not active:
            break
        requests = []
        for t in active:
            ct = cfg.caption_types[t.ctype]
            t.sampling = sampling_for_try(cfg.sampling, cfg.retry.schedule, ct.max_tokens, try_index)
            assert t.work.frames is not None
            requests.append(
                GenRequest(
                    key=f"{t.work.clip['clip_id']}/{t.ctype}",
                    messages=t.messages,
                    frames=t.work.frames,
                    sampling=t.sampling,
                    clip_path=clip_abspath(t.work.clip, out_dir),
                )
            )
        results = backend.generate(requests)
        if len(results) != len(requests):
            raise RuntimeError(f"backend returned {len(results)} results for {len(requests)} requests")
        for t, res in zip(active, results, strict=True):
            t.tries += 1
            t.attempts += res.attempts
            t.tokens_in += res.tokens_in or 0
            t.tokens_out += res.tokens_out or 0
            t.gen_s += res.gen_s
            if res.error is not None:
                # A backend error is not a bad caption: stop here, the rerun picks the clip up again.
                t.error, t.done = res.error, True
                continue
            t.raw = res.text
            t.text = postprocess(res.text, cfg.postprocess)
            t.qa = evaluate(t.text, res.finish_reason, cfg.caption_types[t.ctype], cfg.qa)
            t.done = t.qa.passed

    return [_row(t, cfg, ctx) for t in tasks]


def _row(t: _Task, cfg: CaptionConfig, ctx: RunContext) -> CaptionRow:
    ct = cfg.caption_types[t.ctype]
    tpl = cfg.prompts[ct.prompt_id]
    sampling = t.sampling or sampling_for_try(cfg.sampling, cfg.retry.schedule, ct.max_tokens, 0)
    if t.error is not None:
        status, reason = "error", t.error
    elif t.qa is not None and t.qa.passed:
        status, reason = "ok", None
    else:
        status = "rejected"
        reason = ";".join(t.qa.reasons) if t.qa is not None else "no caption"
    fr = t.work.frames
    scores: dict[str, Any] = {}
    if t.qa is not None:
        scores = t.qa.scores()
    return CaptionRow(
        clip_id=t.work.clip["clip_id"],
        video_id=t.work.clip.get("video_id"),
        caption_type=t.ctype,
        caption=t.text if status != "error" else None,
        raw_caption=t.raw,
        model_id=ctx.model_id,
        model_revision=ctx.model_revision,
        backend=ctx.backend_name,
        prompt_id=tpl.id,
        prompt_version=tpl.version,
        sampling_params=sampling.to_json(),
        status=status,
        reason=reason,
        tries=t.tries,
        backend_attempts=t.attempts,
        tokens_in=t.tokens_in if t.tries else None,
        tokens_out=t.tokens_out if t.tries else None,
        num_frames=fr.shape[0] if fr is not None else None,
        frame_height=fr.shape[1] if fr is not None else None,
        frame_width=fr.shape[2] if fr is not None else None,
        sample_fps=round(fr.sample_fps, 4) if fr is not None else None,
        prep_s=round(fr.prep_s, 4) if fr is not None else None,
        gen_s=round(t.gen_s, 4) if t.tries else None,
        config_hash=ctx.config_hash,
        package_version=ctx.package_version,
        run_id=ctx.run_id,
        created_at=now_utc(),
        **scores,
    )


def error_rows(
    clips: list[dict[str, Any]], reason: str, cfg: CaptionConfig, ctx: RunContext
) -> list[CaptionRow]:
    """Error rows for every pending caption of these clips (a batch lost to a crash or dead worker)."""
    tasks = []
    for clip in clips:
        for ctype in clip.get("caption_types") or cfg.enabled_types():
            tasks.append(_Task(ClipWork(clip), ctype, [], error=reason[:500], done=True))
    return [_row(t, cfg, ctx) for t in tasks]


def missing_keys(
    work: list[dict[str, Any]], produced: set[tuple[str, str]], cfg: CaptionConfig
) -> list[dict]:
    """Clips (with the caption types) of `work` that got no row at all, e.g. their Ray block failed."""
    out = []
    for clip in work:
        types = [
            t
            for t in (clip.get("caption_types") or cfg.enabled_types())
            if (clip["clip_id"], t) not in produced
        ]
        if types:
            out.append({**clip, "caption_types": types})
    return out


def batch_key(clips: list[dict[str, Any]]) -> str:
    """Deterministic short name of a batch (part files are named run_id + this)."""
    h = hashlib.sha256("\n".join(sorted(c["clip_id"] for c in clips)).encode()).hexdigest()
    return h[:12]


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class RunStats:
    clips: int = 0
    rows: int = 0
    status: Counter[str] = field(default_factory=Counter)
    tokens_out: int = 0
    prep_s: float = 0.0  # summed over clips (CPU time spent preparing frames)
    gen_s: float = 0.0  # wall time inside backend.generate
    wall_s: float = 0.0
    parts: list[str] = field(default_factory=list)

    def add_rows(self, rows: list[CaptionRow]) -> None:
        self.rows += len(rows)
        for r in rows:
            self.status[r.status] += 1
            self.tokens_out += r.tokens_out or 0

    def summary(self) -> str:
        st = ", ".join(f"{k}={v}" for k, v in sorted(self.status.items()))
        return f"{self.clips} clips, {self.rows} caption rows ({st}) in {self.wall_s:.1f}s"


def run_local(
    work: list[dict[str, Any]],
    backend: CaptionBackend,
    cfg: CaptionConfig,
    ctx: RunContext,
    out_dir: str | Path,
    captions_dir: str | Path,
    batch_size: int,
    progress: bool = True,
    on_batch: Callable[[list[CaptionRow]], None] | None = None,
) -> RunStats:
    """Caption without Ray: frame prep of the next batch overlaps generation of the current one."""
    from tqdm import tqdm

    stats = RunStats()
    t_start = time.perf_counter()
    batches = list(chunks(work, batch_size))
    bar = tqdm(total=len(work), desc=f"caption[{ctx.backend_name}]", unit="clip", disable=not progress)
    with ThreadPoolExecutor(cfg.run.frame_workers) as pool:

        def submit(batch: list[dict[str, Any]]) -> list[Future[ClipWork]]:
            return [pool.submit(prepare_clip, c, out_dir, cfg) for c in batch]

        pending = submit(batches[0]) if batches else []
        for i, batch in enumerate(batches):
            works = [f.result() for f in pending]
            pending = submit(batches[i + 1]) if i + 1 < len(batches) else []
            stats.prep_s += sum(w.frames.prep_s for w in works if w.frames is not None)
            t0 = time.perf_counter()
            try:
                rows = caption_batch(works, backend, cfg, ctx, out_dir)
            except Exception as e:  # a backend crash costs this batch (as error rows), not the run
                rows = error_rows(batch, f"batch: {type(e).__name__}: {e}", cfg, ctx)
            stats.gen_s += time.perf_counter() - t0
            part = write_part(rows, captions_dir, ctx.run_id, batch_key(batch))
            if part is not None:
                stats.parts.append(str(part))
            stats.clips += len(batch)
            stats.add_rows(rows)
            if on_batch is not None:
                on_batch(rows)
            bar.update(len(batch))
            bar.set_postfix(stats.status)
    bar.close()
    stats.wall_s = time.perf_counter() - t_start
    return stats
