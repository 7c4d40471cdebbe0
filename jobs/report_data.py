"""What the report shows, read from a run's output folder or object-store prefix (OUT = s3://...:
manifests through curation.manifest's readers, the rest as objects); every part is optional (a run
that stopped after curation still gets a report of what it did)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow.dataset as ds

from curation import atomic
from curation.config import CurateConfig
from curation.manifest import THUMB_SCHEMA, VIDEO_SCHEMA, read_rows, read_table
from curation.pipeline import Layout


@dataclass
class StageShards:
    name: str
    kind: str  # "shards" | "latents"
    splits: dict[str, Any] = field(default_factory=dict)  # split -> index (pydantic model)
    samples: list[dict[str, Any]] = field(default_factory=list)  # samples.parquet rows (shards only)


@dataclass
class RunData:
    out: str
    videos: list[dict[str, Any]]
    clips: list[dict[str, Any]]
    thumbs: Mapping[str, bytes]  # clip_id -> JPEG, read on demand
    captions: list[dict[str, Any]]  # latest row per (clip, caption type)
    curate_cfg: CurateConfig
    caption_cfg: Any
    curate_summary: dict[str, Any]
    stages: list[StageShards]
    metrics: list[dict[str, Any]]
    train_summary: dict[str, Any] | None
    samples: list[dict[str, Any]]  # generated videos: {"prompt", "seed", "path", "step"}
    steps: dict[str, Any]  # OUT/run/steps.json
    config: dict[str, Any] | None  # OUT/run/config.json (the resolved run config)


class Thumbs(Mapping[str, bytes]):
    """Clip thumbnails read on demand: the report shows a few dozen, and the thumbs manifest of a
    large corpus holds gigabytes of JPEGs (a filtered read touches one row group per file)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.cache: dict[str, bytes | None] = {}

    def _get(self, clip_id: str) -> bytes | None:
        if clip_id not in self.cache:
            rows = read_table(self.folder, THUMB_SCHEMA, filter=ds.field("clip_id") == clip_id).to_pylist()
            self.cache[clip_id] = rows[0]["jpeg"] if rows else None
        return self.cache[clip_id]

    def __contains__(self, clip_id: object) -> bool:
        return isinstance(clip_id, str) and self._get(clip_id) is not None

    def __getitem__(self, clip_id: str) -> bytes:
        jpeg = self._get(clip_id)
        if jpeg is None:
            raise KeyError(clip_id)
        return jpeg

    def __iter__(self) -> Iterator[str]:
        return iter(read_table(self.folder, THUMB_SCHEMA, columns=["clip_id"]).column("clip_id").to_pylist())

    def __len__(self) -> int:
        return read_table(self.folder, THUMB_SCHEMA, columns=["clip_id"]).num_rows


def _json(path: str) -> Any:
    return json.loads(atomic.read_bytes(path)) if atomic.exists(path) else None


def _parquet_rows(path: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(atomic.read_bytes(path))).to_pylist() if atomic.exists(path) else []


def _stage_folders(root: str) -> list[str]:
    """Stage names below OUT/shards or OUT/latents: the folders that have an index folder."""
    if not atomic.is_url(root):
        if not os.path.isdir(root):
            return []
        return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, "__index__")))
    return [d for d in atomic.listdir(root) if "__index__" in atomic.listdir(atomic.join(root, d))]


def read_stages(out: str) -> list[StageShards]:
    from training.data.sample_format import SPLITS, index_path, read_index, samples_path

    stages = []
    for kind in ("shards", "latents"):
        root = atomic.join(out, kind)
        for name in _stage_folders(root):
            folder = atomic.join(root, name)
            st = StageShards(name, kind)
            for split in SPLITS:
                if atomic.exists(index_path(folder, split)):
                    st.splits[split] = read_index(index_path(folder, split))
            st.samples = _parquet_rows(samples_path(folder))
            stages.append(st)
    return stages


def read_metrics(train_dir: str) -> list[dict[str, Any]]:
    path = atomic.join(train_dir, "metrics.jsonl")
    rows: list[dict[str, Any]] = []
    if not atomic.exists(path):
        return rows
    for line in atomic.read_bytes(path).decode("utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill; the rest of the file is fine
    # A resumed run appends the steps it redoes after its last checkpoint: keep the newest.
    by_step = {int(r["step"]): r for r in rows if "step" in r}
    return [by_step[s] for s in sorted(by_step)]


def read_samples(train_dir: str) -> list[dict[str, Any]]:
    """Generated videos of the newest step that has them (RUN/samples/step_N/prompts.json); each
    with its `path` (a local path or a URL: report_media reads both)."""
    root = atomic.join(train_dir, "samples")
    for step_dir in sorted(atomic.listdir(root), reverse=True):
        meta = _json(atomic.join(root, step_dir, "prompts.json"))
        if meta:
            present = set(atomic.listdir(atomic.join(root, step_dir)))
            return [
                {**m, "path": atomic.join(root, step_dir, m["file"])}
                for m in meta["samples"]
                if m["file"] in present
            ]
    return []


def read_run(out: str, train_folder: str | None = None) -> RunData:
    """Everything the report shows. `train_folder` is run.train.folder (default: the one in
    OUT/run/config.json, else "train"); with OUT on a store the trainer's results are read from
    where `vjp run` published them (jobs.run_paths.train_results)."""
    from captioning.config import CaptionConfig
    from captioning.manifest import read_captions
    from jobs.run_paths import train_results

    if not atomic.is_url(out):
        out = atomic.strip_file(out)
    layout = Layout(out)
    videos = read_rows(layout.videos, VIDEO_SCHEMA)
    clips = read_table(os.path.dirname(layout.clips_manifest), group_key=None).to_pylist()
    thumbs = Thumbs(layout.thumbs)
    captions = read_captions(atomic.join(out, "manifests", "captions"), latest=True).to_pylist()
    config = _json(atomic.join(out, "run", "config.json"))
    curate_json = _json(atomic.join(out, "manifests", "config.json"))
    curate_cfg = CurateConfig.model_validate(curate_json) if curate_json else CurateConfig()
    caption_cfg = CaptionConfig.model_validate((config or {}).get("caption") or {})
    if train_folder is None:
        train_folder = ((config or {}).get("run") or {}).get("train", {}).get("folder", "train")
    train_dir = train_results(out, train_folder or "train")
    return RunData(
        out=out,
        videos=videos,
        clips=clips,
        thumbs=thumbs,
        captions=captions,
        curate_cfg=curate_cfg,
        caption_cfg=caption_cfg,
        curate_summary=_json(atomic.join(out, "manifests", "summary.json")) or {},
        stages=read_stages(out),
        metrics=read_metrics(train_dir),
        train_summary=_json(atomic.join(train_dir, "summary.json")),
        samples=read_samples(train_dir),
        steps=_json(atomic.join(out, "run", "steps.json")) or {},
        config=config,
    )
