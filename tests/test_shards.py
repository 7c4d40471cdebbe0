"""Stage shards: per-sample rules, then `vjp shard` on a curated corpus with a Japanese caption manifest.

The helpers at the top (synthetic clips + manifests) are reused by test_loader and test_encode.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.data.sample_format import SampleMeta, ShardIndex, check_key
from training.data.shard_writer import (
    ClipProbe,
    crop_region,
    frame_window,
    pick_caption,
    split_of,
)
from training.data.stages import (
    CaptionChoice,
    ConfigError,
    SplitConfig,
    StagePreset,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_YAML = REPO / "jobs" / "configs" / "shard.yaml"
JA = [
    "森の中を流れる小川、木漏れ日。",
    "子どもたちが公園で遊んでいる。",
    "夜の街を走る電車。",
    "海辺に打ち寄せる波。",
]


# ---- helpers (also used by test_loader and test_encode) --------------------------------------
def write_clip(
    path: Path, width: int, height: int, frames: int, fps: float = 24, seed: int = 0, bars: int = 0
) -> None:
    """A textured slow pan (sharp, moving), optionally with black letterbox bars of `bars` px."""
    from curation.synth import texture

    base = texture(height + 64, width + 64, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.codec_context.thread_count = 1
        st.options = {"crf": "20", "preset": "ultrafast"}
        for i in range(frames):
            f = base[i % 64 : i % 64 + height, i % 64 : i % 64 + width].copy()
            if bars:
                f[:bars], f[height - bars :] = 0, 0
            out.mux(st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(st.encode(None))


def make_clips(out: Path, specs: list[dict[str, Any]]) -> Path:
    """OUT/clips/*.mp4 + OUT/manifests/clips/clips.parquet from specs; returns OUT/manifests.

    A spec: clip_id, video_id, and optionally width/height/frames/fps/bars/crop_top.../caption
    (source_caption)/status/write (False = no file).
    """
    rows = []
    for i, s in enumerate(specs):
        w, h, n, fps = s.get("width", 96), s.get("height", 64), s.get("frames", 60), s.get("fps", 24)
        rel = f"clips/{s['clip_id']}.mp4"
        if s.get("write", True):
            write_clip(out / rel, w, h, n, fps, seed=i, bars=s.get("bars", 0))
        rows.append(
            {
                "clip_id": s["clip_id"],
                "video_id": s["video_id"],
                "source": "pixabay",
                "status": s.get("status", "kept"),
                "clip_path": rel,
                "start_s": 1.0,
                "end_s": 1.0 + n / fps,
                "n_frames": n,
                "fps": float(fps),
                "width": w,
                "height": h,
                "crop_top": s.get("crop_top", 0.0),
                "crop_bottom": s.get("crop_bottom", 0.0),
                "crop_left": 0.0,
                "crop_right": 0.0,
                "motion": 0.01,
                "sharpness": 100.0,
                "source_caption": s.get("caption"),
                "decision_hash": "test",
            }
        )
    (out / "manifests" / "clips").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "manifests" / "clips" / "clips.parquet")
    return out / "manifests"


def write_captions(manifests: Path, rows: list[dict[str, Any]], run_id: str = "r1", minutes: int = 0) -> None:
    """A caption manifest part (CaptionRow) from dicts: clip_id, caption_type, caption, status."""
    from captioning.manifest import CaptionRow, write_part

    t = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=minutes)
    models = [
        CaptionRow(
            clip_id=r["clip_id"],
            caption_type=r["caption_type"],
            caption=r["caption"],
            status=r.get("status", "ok"),
            reason=None if r.get("status", "ok") == "ok" else "latin_ratio",
            model_id="Qwen/Qwen2-VL-7B-Instruct",
            backend="vllm",
            prompt_id=f"ja_{r['caption_type']}_v1",
            prompt_version=1,
            sampling_params="{}",
            japanese_ratio=0.9,
            tries=1,
            config_hash="caphash",
            package_version="0.1.0",
            run_id=run_id,
            created_at=t,
        )
        for r in rows
    ]
    write_part(models, manifests / "captions", run_id, "b0")


def cli(argv: list[str], module: str = "jobs.shard") -> int:
    import importlib

    mod = importlib.import_module(module)
    parser = argparse.ArgumentParser()
    mod.add_arguments(parser)
    return mod.run(parser.parse_args(argv))


def shard_local(manifests: Path, stage: str, out: Path, config: Path) -> int:
    """`vjp shard` without Ray, as most tests run it."""
    argv = ["--clips", str(manifests), "--stage", stage, "--out", str(out), "--config", str(config)]
    return cli([*argv, "--runner", "local"])


def write_config(path: Path, stages: dict[str, Any], **extra: Any) -> Path:
    import yaml

    data = {"stages": stages, "runner": {"progress": False, "max_in_flight": 2}, **extra}
    path.write_text(yaml.safe_dump({"shard": data}, allow_unicode=True))
    return path


def tar_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return tf.getmembers()


def mp4_frames(data: bytes) -> tuple[int, int, int]:
    """(frames, width, height) decoded with PyAV."""
    with av.open(io.BytesIO(data)) as c:
        frames = [f for f in c.decode(c.streams.video[0])]
    return len(frames), frames[0].width, frames[0].height


# ---- pure per-sample rules -------------------------------------------------------------------
STAGE = StagePreset(width=256, height=256, frames=48, fps=24)


def test_frame_window_is_deterministic_and_never_stretches() -> None:
    a = frame_window(200, 24.0, STAGE, 0, "vid_0000000_0000200")
    assert a == frame_window(200, 24.0, STAGE, 0, "vid_0000000_0000200")
    assert isinstance(a, list) and len(a) == 48 and a == list(range(a[0], a[0] + 48)) and a[-1] < 200
    starts = {frame_window(200, 24.0, STAGE, s, "vid_0000000_0000200")[0] for s in range(20)}  # type: ignore[index]
    assert len(starts) > 5  # the seed moves the window
    # 30 fps source at 24 fps: nearest frames, 1.25 apart on average, never repeated
    b = frame_window(90, 30.0, STAGE, 0, "x")
    assert isinstance(b, list) and len(set(b)) == 48 and b[-1] - b[0] == round(47 * 1.25)
    assert frame_window(47, 24.0, STAGE, 0, "x") == "too_short"
    assert frame_window(58, 30.0, STAGE, 0, "x") == "too_short"  # needs 60 frames at 30 fps
    assert frame_window(500, 15.0, STAGE, 0, "x") == "low_fps"
    assert frame_window(48, 23.976, STAGE, 0, "x") == list(range(48))  # NTSC rate is fine


def test_crop_region_applies_letterbox_then_center_crop() -> None:
    # 640x360 with 45 px bars top and bottom: content 640x270, square region 270x270 centered in it.
    region = crop_region(
        640, 360, (0.125, 0.125, 0.0, 0.0), StagePreset(width=256, height=256, min_area_kept=0.4)
    )
    assert region == ((185, 45, 455, 315), round(256 / 270, 6))
    assert crop_region(640, 360, (0.125, 0.125, 0, 0), STAGE) == "aspect_mismatch"  # keeps 42% < 50%
    stage2 = StagePreset(width=848, height=480)
    assert crop_region(640, 360, (0, 0, 0, 0), stage2) == "too_small"  # would upscale 1.33x
    (x0, y0, x1, y1), scale = crop_region(1920, 1080, (0, 0, 0, 0), stage2)  # type: ignore[misc]
    assert abs((x1 - x0) / (y1 - y0) - 848 / 480) < 0.01 and scale < 1
    assert crop_region(1080, 1920, (0, 0, 0, 0), stage2) == "aspect_mismatch"  # vertical video
    assert (
        crop_region(640, 360, (0, 0, 0, 0), StagePreset(width=848, height=480, max_upscale=1.5))
        != "too_small"
    )


def test_caption_choice_prefers_ok_types_in_order_and_records_the_field() -> None:
    from training.data.sample_format import CaptionVariant

    v = {
        "dense": CaptionVariant(caption="詳しい説明。", status="rejected"),
        "short": CaptionVariant(caption="短い説明。", status="ok"),
    }
    assert pick_caption(v, "A river.", CaptionChoice()) == ("短い説明。", "captions.short")
    v["dense"] = CaptionVariant(caption="詳しい説明。", status="ok")
    assert pick_caption(v, "A river.", CaptionChoice()) == ("詳しい説明。", "captions.dense")
    assert pick_caption({}, "A river.", CaptionChoice()) is None
    assert pick_caption({}, "A river.", CaptionChoice(fallback="source_caption")) == (
        "A river.",
        "source_caption",
    )
    assert pick_caption({}, None, CaptionChoice(fallback="source_caption")) is None


def test_split_is_by_source_video_and_matches_the_fraction() -> None:
    cfg = SplitConfig(eval_fraction=0.1)
    splits = [split_of(f"vid{i}", cfg) for i in range(20000)]
    assert 0.09 < splits.count("eval") / len(splits) < 0.11
    assert split_of("vid7", cfg) == split_of("vid7", cfg)
    assert {split_of(f"v{i}", SplitConfig(eval_fraction=0.0)) for i in range(100)} == {"train"}


def test_keys_are_webdataset_safe() -> None:
    from training.data.shard_writer import plan_sample

    assert check_key("pix0123abcd_0000010_0000090") == "pix0123abcd_0000010_0000090"
    for bad in ("a.b", "a/b", "", "clip 1"):
        with pytest.raises(ValueError):
            check_key(bad)
    cfg = parse_config({"stages": {"s": {"width": 64, "height": 64}}})
    assert plan_sample({"clip_id": "v.1_0_9", "video_id": "v"}, {}, "missing_file", "s", cfg) == "unsafe_key"


def test_config_presets_and_errors(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_YAML)
    s1, s2 = cfg.stage("stage1"), cfg.stage("stage2")
    assert (s1.width, s1.height, s1.frames) == (256, 256, 48) and (s2.width, s2.height, s2.frames) == (
        848,
        480,
        48,
    )
    assert s1.codec == "libx264" and cfg.split.eval_fraction > 0 and cfg.captions.fallback == "none"
    # A user stage in YAML; its hash leaves the others alone.
    data = json.loads(cfg.model_dump_json())
    data["stages"]["stage3"] = {"width": 1280, "height": 720, "frames": 96, "fps": 24}
    cfg3 = parse_config(data)
    assert cfg3.stage_hash("stage1") == cfg.stage_hash("stage1") != cfg3.stage_hash("stage3")
    bad = tmp_path / "bad.yaml"
    bad.write_text("shard:\n  stages:\n    s: {width: 250, height: 256}\n  split: {eval_fraktion: 0.1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "stages.s.width" in str(e.value) and "split.eval_fraktion" in str(e.value)
    with pytest.raises(ConfigError, match="unknown stage"):
        cfg.stage("stage9")
    assert isinstance(ClipProbe(1, 1, 1, 1.0, 1), ClipProbe)


# ---- the job on a curated corpus -------------------------------------------------------------
@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Path:
    """The sample corpus through `curate` (5 kept clips from 2 videos) + a Japanese caption manifest."""
    from curation.config import CurateConfig
    from jobs.curate import curate

    out = tmp_path_factory.mktemp("curated")
    curate(f"files:{corpus_dir}/*.mp4", str(out), CurateConfig(runner={"progress": False}), runner="local")
    kept = sorted(
        (
            r
            for r in pq.read_table(out / "manifests" / "clips" / "clips.parquet").to_pylist()
            if r["status"] == "kept"
        ),
        key=lambda r: r["clip_id"],
    )
    assert len(kept) == 5
    rows = []
    for i, c in enumerate(kept[:4]):  # the last clip has no caption at all
        rows.append({"clip_id": c["clip_id"], "caption_type": "short", "caption": JA[i]})
        dense_ok = i != 1  # clip 1: dense failed QA -> short is used
        rows.append(
            {
                "clip_id": c["clip_id"],
                "caption_type": "dense",
                "caption": JA[i] + "詳細。",
                "status": "ok" if dense_ok else "rejected",
            }
        )
    write_captions(out / "manifests", rows)
    return out


def _eval_fraction_splitting(videos: list[str], salt: str) -> float:
    """An eval fraction that puts exactly one of the videos into eval (the split is a hash)."""
    from training.data.shard_writer import _unit_hash

    us = sorted(_unit_hash(salt, v) / 2**64 for v in videos)
    return (us[0] + us[1]) / 2


@pytest.fixture(scope="module")
def stage1(curated: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from jobs.shard import read_kept_clips

    tmp = tmp_path_factory.mktemp("stage1")
    videos = sorted({r["video_id"] for r in read_kept_clips(curated / "manifests" / "clips")})
    frac = _eval_fraction_splitting(videos, "videojp-split-v1")
    stages = {
        "stage1": {
            "width": 256,
            "height": 256,
            "frames": 48,
            "fps": 24,
            "target_shard_bytes": None,
            "max_shard_samples": 2,
            "preset": "veryfast",
        },
        "stage2": {"width": 848, "height": 480, "frames": 48, "fps": 24},
    }
    config = write_config(tmp / "shard.yaml", stages, split={"eval_fraction": frac})
    out = tmp / "shards"
    argv = ["--clips", str(curated / "manifests"), "--stage", "stage1", "--out", str(out)]
    assert cli([*argv, "--config", str(config), "--runner", "local"]) == 0
    return {"out": out, "config": config, "argv": argv, "curated": curated}


def test_stage1_shards_layout_index_and_members(stage1: dict[str, Any]) -> None:
    import jsonschema

    from training.data.sample_format import json_schemas

    schemas = json_schemas()
    root = stage1["out"] / "stage1"
    indexes = {
        s: ShardIndex.model_validate_json((root / "__index__" / f"{s}.json").read_text())
        for s in ("train", "eval")
    }
    assert (
        indexes["train"].samples + indexes["eval"].samples == 3
    )  # 5 kept: 1 uncaptioned, 1 letterbox too wide
    assert indexes["train"].samples >= 1 and indexes["eval"].samples >= 1
    keys: dict[str, set[str]] = {}
    for split, index in indexes.items():
        assert [e.name for e in index.shards] == [f"{i:06d}.tar" for i in range(len(index.shards))]
        assert sorted(p.name for p in (root / split).iterdir()) == sorted([e.name for e in index.shards])
        assert (index.width, index.height, index.frames, index.fps) == (256, 256, 48, 24.0)
        index_json = json.loads((root / "__index__" / f"{split}.json").read_text())
        jsonschema.validate(index_json, schemas["shard_index.v1"])
        # the sample table beside it: one row per sample, its byte range read from the tar itself
        from training.data.sample_table import open_table, scan_tar

        assert index.sample_table is not None and index.sample_table.rows == index.samples
        cols = open_table(str(root / "__index__" / index.sample_table.name), rows=index.samples)
        for i, entry in enumerate(index.shards):
            ranges = scan_tar(str(root / split / entry.name))[1]
            assert cols.offset[cols.shard == i].tolist() == [r[0] for r in ranges]
        for entry in index.shards:
            path = root / split / entry.name
            assert path.stat().st_size == entry.bytes
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
            members = tar_members(path)
            assert {(m.mtime, m.uname, m.gname, m.uid, m.gid, m.mode) for m in members} == {
                (1704067200, "videojp", "videojp", 0, 0, 0o444)
            }
            assert len(members) == 3 * entry.samples
            with tarfile.open(path) as tf:
                for m in members:
                    key, field = m.name.split(".", 1)
                    assert field in ("json", "mp4", "txt") and "." not in key
                    data = tf.extractfile(m).read()  # type: ignore[union-attr]
                    if field == "mp4":
                        assert mp4_frames(data) == (48, 256, 256)
                    elif field == "json":
                        jsonschema.validate(json.loads(data), schemas["sample_json.v1"])
                        meta = SampleMeta.model_validate_json(data)
                        assert meta.key == key and meta.split == split and meta.stage == "stage1"
                        assert len(meta.window.frame_indices) == 48 and meta.config_hash == index.config_hash
                        keys.setdefault(meta.video_id, set()).add(split)
    assert all(len(splits) == 1 for splits in keys.values())  # no video in both splits


def test_captions_and_skip_reasons_are_recorded(stage1: dict[str, Any]) -> None:
    import webdataset as wds

    root = stage1["out"] / "stage1"
    rows = {r["clip_id"]: r for r in pq.read_table(root / "__index__" / "samples.parquet").to_pylist()}
    assert len(rows) == 5
    reasons = sorted(r["reason"] for r in rows.values() if r["status"] == "skipped")
    assert reasons == ["aspect_mismatch", "no_caption"]  # letterboxed 2.37:1 content; uncaptioned clip
    urls = [str(p) for p in sorted(root.glob("*/*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert len(samples) == 3
    for s in samples:
        meta = s["json"]
        assert s["txt"] == meta["caption"] and s["txt"] in {j + "詳細。" for j in JA} | set(JA)
        field = meta["caption_field"]
        assert field == (
            "captions.short" if meta["captions"]["dense"]["status"] == "rejected" else "captions.dense"
        )
        assert set(meta["captions"]) == {"dense", "short"} and meta["captions"]["short"]["model_id"]
        assert rows[s["__key__"]]["status"] == "written" and rows[s["__key__"]]["shard"].endswith(".tar")
        assert meta["scores"]["motion"] is not None and meta["clip"]["clip_path"].startswith("clips/")


def test_shards_open_in_huggingface_datasets(stage1: dict[str, Any], tmp_path: Path) -> None:
    import datasets

    root = stage1["out"] / "stage1"
    files = {s: [str(p) for p in sorted((root / s).glob("*.tar"))] for s in ("train", "eval")}
    dsd = datasets.load_dataset("webdataset", data_files=files, cache_dir=str(tmp_path / "a"))
    assert dsd["train"].num_rows + dsd["eval"].num_rows == 3
    # The stage folder as is: split folders hold only tars, __index__/ is skipped; eval maps to "test".
    whole = datasets.load_dataset(str(root), cache_dir=str(tmp_path / "b"))
    assert {k: v.num_rows for k, v in whole.items()} == {
        "train": dsd["train"].num_rows,
        "test": dsd["eval"].num_rows,
    }
    # datasets decodes mp4 with torchcodec (not installed here): take the bytes, decode with PyAV.
    train = dsd["train"].cast_column("mp4", datasets.Video(decode=False))
    row = train[0]
    assert mp4_frames(row["mp4"]["bytes"]) == (48, 256, 256)
    assert row["json"]["key"] == row["__key__"] and isinstance(row["txt"], str)


def test_rerun_is_byte_identical_and_resume_rewrites_only_missing(
    stage1: dict[str, Any], tmp_path: Path
) -> None:
    out, config, argv = stage1["out"], stage1["config"], stage1["argv"]
    root = out / "stage1"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.glob("*/*.tar"))}
    # A fresh run elsewhere gives the same bytes.
    other = tmp_path / "again"
    assert cli([*argv[:-1], str(other), "--config", str(config), "--runner", "local"]) == 0
    for p, (data, _) in before.items():
        assert (other / "stage1" / p.parent.name / p.name).read_bytes() == data
    # Kill simulation: one shard gone, a half-written temporary left behind.
    victim = sorted(before)[0]
    victim.unlink()
    (victim.parent / f".{victim.name}.tmp-999").write_bytes(b"half")
    assert cli([*argv, "--config", str(config), "--runner", "local"]) == 0
    for p, (data, mtime) in before.items():
        assert p.read_bytes() == data
        if p != victim:
            assert p.stat().st_mtime_ns == mtime  # left alone
    assert not list(root.glob("*/.*tmp*"))


def test_changed_caption_rewrites_only_its_shard(stage1: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    curated = tmp_path / "curated"
    shutil.copytree(stage1["curated"] / "manifests", curated / "manifests")
    os.symlink(stage1["curated"] / "clips", curated / "clips")
    out = tmp_path / "shards"
    shutil.copytree(stage1["out"] / "stage1", out / "stage1")
    argv = ["--clips", str(curated / "manifests"), "--stage", "stage1", "--out", str(out)]
    written = pq.read_table(out / "stage1" / "__index__" / "samples.parquet").to_pylist()
    target = next(r for r in written if r["status"] == "written")
    write_captions(
        curated / "manifests",
        [{"clip_id": target["clip_id"], "caption_type": "dense", "caption": "新しい説明。"}],
        run_id="r2",
        minutes=5,
    )
    before = {p.name + p.parent.name: p.stat().st_mtime_ns for p in (out / "stage1").glob("*/*.tar")}
    assert cli([*argv, "--config", str(stage1["config"]), "--runner", "local"]) == 0
    after = {p.name + p.parent.name: p.stat().st_mtime_ns for p in (out / "stage1").glob("*/*.tar")}
    changed = [k for k in before if before[k] != after[k]]
    assert changed == [target["shard"].split("/")[1] + target["shard"].split("/")[0]]


def test_stage2_leaves_small_clips_out_with_a_reason(stage1: dict[str, Any], tmp_path: Path) -> None:
    argv = ["--clips", str(stage1["curated"] / "manifests"), "--stage", "stage2", "--out", str(tmp_path)]
    assert cli([*argv, "--config", str(stage1["config"]), "--runner", "local"]) == 1  # nothing fits
    rows = pq.read_table(tmp_path / "stage2" / "__index__" / "samples.parquet").to_pylist()
    assert {r["reason"] for r in rows} == {"too_small", "no_caption"}  # 640x360 clips, never upscaled
    index = json.loads((tmp_path / "stage2" / "__index__" / "train.json").read_text())
    assert index["samples"] == 0 and index["skipped"]["too_small"] >= 1


def test_letterbox_crop_and_source_caption_fallback(tmp_path: Path) -> None:
    # 16:9 content inside a 4:3 frame with black bars; crop box from curation removes them.
    manifests = make_clips(
        tmp_path / "cur",
        [
            {
                "clip_id": "pixa_0000000_0000060",
                "video_id": "pixa",
                "width": 320,
                "height": 240,
                "bars": 30,
                "crop_top": 0.125,
                "crop_bottom": 0.125,
                "caption": "A river in a forest.",
            },
            {"clip_id": "pixb_0000000_0000060", "video_id": "pixb", "caption": None},
            {"clip_id": "pixc_0000000_0000060", "video_id": "pixc", "caption": "x", "write": False},
            {"clip_id": "pixd_0000000_0000030", "video_id": "pixd", "caption": "short", "frames": 30},
        ],
    )
    config = write_config(
        tmp_path / "c.yaml",
        {"s": {"width": 128, "height": 96, "frames": 48}},
        captions={"fallback": "source_caption"},
        split={"eval_fraction": 0.0},
    )
    out = tmp_path / "out"
    assert shard_local(manifests, "s", out, config) == 0
    rows = {r["clip_id"]: r for r in pq.read_table(out / "s" / "__index__" / "samples.parquet").to_pylist()}
    assert {k: r["reason"] for k, r in rows.items()} == {
        "pixa_0000000_0000060": None,
        "pixb_0000000_0000060": "no_caption",
        "pixc_0000000_0000060": "missing_file",
        "pixd_0000000_0000030": "too_short",
    }
    import webdataset as wds

    (sample,) = list(wds.WebDataset(str(out / "s" / "train" / "000000.tar"), shardshuffle=False))
    meta = json.loads(sample["json"])
    assert meta["caption_field"] == "source_caption" and sample["txt"].decode() == "A river in a forest."
    assert meta["window"]["region"] == [40, 30, 280, 210] and meta["clip"]["crop_box"] == [
        0.125,
        0.125,
        0.0,
        0.0,
    ]
    from training.data.sample_format import decode_mp4

    frames = decode_mp4(sample["mp4"])
    assert frames.shape == (48, 96, 128, 3)
    assert frames[:, :4].mean() > 40 and frames[:, -4:].mean() > 40  # no black bar left
    # Without the fallback nothing is captioned: exit 1, every clip recorded.
    strict = write_config(tmp_path / "strict.yaml", {"s": {"width": 128, "height": 96}})
    assert shard_local(manifests, "s", tmp_path / "o2", strict) == 1
    rows = pq.read_table(tmp_path / "o2" / "s" / "__index__" / "samples.parquet").to_pylist()
    assert {r["reason"] for r in rows} == {"no_caption"}


@pytest.mark.slow
def test_ray_runner_gives_the_same_bytes(stage1: dict[str, Any], tmp_path: Path, local_ray: Any) -> None:
    argv = [*stage1["argv"][:-1], str(tmp_path), "--config", str(stage1["config"]), "--runner", "ray"]
    assert cli(argv) == 0
    for p in sorted((stage1["out"] / "stage1").glob("*/*.tar")):
        assert (tmp_path / "stage1" / p.parent.name / p.name).read_bytes() == p.read_bytes()


def test_encode_mp4_gives_the_same_bytes_every_time(tmp_path: Path) -> None:
    """x264's AVX-512 code gave different bytes run to run at 64/96/160 px: capped at AVX2 there."""
    from curation.x264 import asm_param
    from training.data.shard_writer import encode_mp4, load_window

    write_clip(tmp_path / "c.mp4", 192, 160, 60, seed=3)
    for size in (64, 96, 160):
        frames = load_window(str(tmp_path / "c.mp4"), list(range(5, 53)), (16, 0, 176, 160), size, size)
        assert len({encode_mp4(frames, 24, "libx264", 18, "veryfast") for _ in range(5)}) == 1, size
    assert "AVX512" not in asm_param()
