"""Real (generated) videos through the Pixabay archive and FineVideo parquet sources, end to end."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.config import CurateConfig
from curation.manifest import read_rows
from curation.pipeline import Layout
from jobs.curate import curate
from tests.conftest import parquet_rows

CFG = CurateConfig()


def _pixabay_v100(root: Path, corpus: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("cuts", "long"):
            tar.add(corpus / f"{name}.mp4", arcname=f"pixabay/nature/{name}.mp4")
    data = buf.getvalue()
    third = len(data) // 3
    for i, part in enumerate((data[:third], data[third : 2 * third], data[2 * third :])):
        (root / f"pixabay.tar.gz.{i:02d}").write_bytes(part)
    anno = [
        {"path": f"/remote-home1/dataset/data_split_tt/pixabay/nature/{n}.mp4", "cap": [f"A {n} video."]}
        for n in ("cuts", "long")
    ]
    anno.append(
        {
            "path": "/remote-home1/dataset/data_split_tt/pixabay/nature/../../../../../../../etc/x.mp4",
            "cap": ["x"],
        }
    )
    (root / "llava_path_cap_64x512x512.json").write_text(json.dumps(anno))


def test_pixabay_split_archive_streamed_end_to_end(
    tmp_path: Path, corpus_dir: Path, local_ray: object
) -> None:
    src, out = tmp_path / "pixabay", tmp_path / "out"
    src.mkdir()
    _pixabay_v100(src, corpus_dir)
    # On Ray: archive members travel to the workers as bytes through the object store.
    summary = curate(f"pixabay:{src}", str(out), CFG, runner="ray")
    videos = read_rows(Layout(str(out)).videos)
    ok = [v for v in videos if v["status"] == "ok"]
    assert sorted(v["source_caption"] for v in ok) == ["A cuts video.", "A long video."]
    assert all("::" in v["source_key"] for v in ok)
    escaped = [v for v in videos if v["status"] == "error"]
    assert len(escaped) == 1 and "escapes" in escaped[0]["error"]
    clips = parquet_rows(Layout(str(out)).clips_manifest)
    kept = [c for c in clips if c["status"] == "kept"]
    assert summary["clips_kept"] == len(kept) >= 4
    assert {c["source_caption"] for c in kept} == {"A cuts video.", "A long video."}
    assert all((out / c["clip_path"]).exists() for c in kept)


def test_finevideo_parquet_scene_hints_become_cuts(tmp_path: Path, corpus_dir: Path) -> None:
    shard = tmp_path / "fv" / "data"
    shard.mkdir(parents=True)
    meta = {
        "youtube_title": "Forest walk",
        "youtube_tags": ["nature"],
        "duration_seconds": 25.0,
        "resolution": "640x360",
        "content_metadata": {
            "title": "t",
            "description": "d",
            "fps": 24.0,
            "scenes": [
                {
                    "sceneId": 1,
                    "title": "a",
                    "timestamps": {"start_timestamp": "00:00:00.000", "end_timestamp": "00:00:12.000"},
                    "dynamismScore": 0.5,
                },
                {
                    "sceneId": 2,
                    "title": "b",
                    "timestamps": {"start_timestamp": "00:00:12.000", "end_timestamp": "00:00:25.000"},
                    "dynamismScore": 0.7,
                },
            ],
        },
    }
    table = pa.table(
        {"mp4": [(corpus_dir / "long.mp4").read_bytes(), b""], "json": [json.dumps(meta), json.dumps(meta)]}
    )
    pq.write_table(table, shard / "train-00000-of-00001.parquet", row_group_size=1)
    out = tmp_path / "out"
    curate(f"finevideo:{tmp_path / 'fv'}", str(out), CFG, runner="local")
    videos = {v["source_key"].split("#")[1]: v for v in read_rows(Layout(str(out)).videos)}
    assert videos["1"]["status"] == "error" and "mp4" in videos["1"]["error"]
    v = videos["0"]
    assert v["status"] == "ok" and json.loads(v["source_meta"])["youtube_title"] == "Forest walk"
    # The long video has no visual cut: the annotated scene boundary at 12 s is the only one.
    assert v["cuts"] == [pytest.approx(12 * 24, abs=1)]
    clips = parquet_rows(Layout(str(out)).clips_manifest)
    assert all(c["end_frame"] <= 12 * 24 or c["start_frame"] >= 12 * 24 for c in clips)


def test_a_folder_of_symbolic_links_is_curated(tmp_path: Path, corpus_dir: Path) -> None:
    """Links to videos are videos; a dangling link is an error row; a folder is counted as skipped."""
    root = tmp_path / "links"
    (root / "store").mkdir(parents=True)
    for name in ("short", "duplicate"):
        (root / "store" / f"{name}.mp4").write_bytes((corpus_dir / f"{name}.mp4").read_bytes())
        (root / f"{name}.mp4").symlink_to(f"store/{name}.mp4")
    (root / "gone.mp4").symlink_to("store/gone.mp4")
    summary = curate(f"files:{root}/*", str(tmp_path / "out"), CFG, runner="local")
    rows = {r["source_key"]: r for r in read_rows(Layout(str(tmp_path / "out")).videos)}
    assert {k: r["status"] for k, r in rows.items()} == {
        "short.mp4": "ok",
        "duplicate.mp4": "ok",
        "gone.mp4": "error",
    }
    assert "dangling symbolic link" in rows["gone.mp4"]["error"]
    assert summary["videos_ok"] == 2 and summary["clips_kept"] >= 1
    assert summary["inputs_skipped"] == {"directory": 1}
