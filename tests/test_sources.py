"""Sources on small corpora built in tmp_path: fake videos are random bytes (sources never decode)."""

from __future__ import annotations

import inspect
import io
import json
import os
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.sources import FilesSource, FineVideoSource, PixabaySource, SplitHint, VideoItem, open_source
from curation.sources.archive import ChainedReader, iter_tar_entries, unsafe_member_reason
from curation.sources.finevideo import parse_timestamp
from curation.sources.pixabay import normalize_segments

REMOTE = "/remote-home1/dataset/data_split_tt"


def blob(seed: int, size: int = 2048) -> bytes:
    """Incompressible bytes, so archive offsets are predictable and truncation lands mid-archive."""
    return random.Random(seed).randbytes(size)


def make_tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_json(path: Path, entries: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))


def items(spec: str) -> list[VideoItem]:
    return list(open_source(spec).iter_items())


def by_key(found: list[VideoItem]) -> dict[str, VideoItem]:
    return {item.key: item for item in found}


# ------------------------------------------------------------------------------------------------ specs


def test_unknown_prefix_lists_valid_kinds() -> None:
    with pytest.raises(ValueError, match=r"pixabay:PATH, finevideo:PATH, files:PATH"):
        open_source("youtube:/data")
    with pytest.raises(ValueError, match="unknown source spec"):
        open_source("/data/videos")
    with pytest.raises(ValueError, match="names no path"):
        open_source("files:")


def test_open_source_builds_each_kind_without_touching_storage() -> None:
    missing = "/definitely/not/here"
    assert isinstance(open_source(f"files:{missing}/*.mp4"), FilesSource)
    assert isinstance(open_source(f"pixabay:{missing}"), PixabaySource)
    source = open_source(f"finevideo:{missing}", {"anon": True})
    assert isinstance(source, FineVideoSource)
    assert [open_source(f"{k}:{missing}").name for k in ("pixabay", "finevideo", "files")] == [
        "pixabay",
        "finevideo",
        "files",
    ]
    with pytest.raises(FileNotFoundError):
        list(source.iter_items())


# ------------------------------------------------------------------------------------------------ files


@pytest.fixture
def video_tree(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    for rel in ("b/z.mp4", "a/y.MOV", "a/x.mp4", "a/deep/w.webm", "a/notes.txt", "c.mkv"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    return root


def test_files_glob_sorted_relative_keys(video_tree: Path) -> None:
    found = items(f"files:{video_tree}/*/*.mp4")
    assert [i.key for i in found] == ["a/x.mp4", "b/z.mp4"]
    assert found[0].path == str(video_tree / "a/x.mp4") == found[0].uri
    assert all(i.data is None and i.error is None and i.source == "files" for i in found)


def test_files_directory_is_recursive_and_video_only(video_tree: Path) -> None:
    found = items(f"files:{video_tree}")
    assert [i.key for i in found] == ["a/deep/w.webm", "a/x.mp4", "a/y.MOV", "b/z.mp4", "c.mkv"]
    assert all(Path(i.path or "").is_file() for i in found)


def test_files_keys_do_not_depend_on_location(video_tree: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "mount"
    moved.parent.mkdir()
    os.rename(video_tree, moved)
    keys = [i.key for i in items(f"files:file://{moved}")]
    assert keys == ["a/deep/w.webm", "a/x.mp4", "a/y.MOV", "b/z.mp4", "c.mkv"]
    assert items(f"files:{moved}/c.mkv")[0].key == "c.mkv"


# ---------------------------------------------------------------------------------------- pixabay 1.0.0


V10_MEMBERS = {
    "catA/v1.mp4": blob(1),
    "catB/v1.mp4": blob(2),
    "catA/v2.mp4": blob(3),
    "readme.txt": b"not a video",
    "catC/unannotated.mp4": blob(4),
}


def v10_annotations() -> list[dict[str, Any]]:
    return [
        {"path": f"{REMOTE}/pixabay/catA/v1.mp4", "cap": ["A one.", "A one, again."]},
        {"path": f"{REMOTE}/pixabay/catB/v1.mp4", "cap": ["B one."]},
        {"path": f"{REMOTE}/pixabay/catA/v2.mp4", "cap": ["A two."]},
        {"path": f"{REMOTE}/pixabay/catZ/missing.mp4", "cap": ["gone"]},
        {"path": f"{REMOTE}/mixkit/catA/other.mp4", "cap": ["another source"]},
        {"path": f"{REMOTE}/pixabay/../../../../../etc/evil.mp4", "cap": ["escape"]},
    ]


def build_v10(root: Path, prefix: str, cuts: tuple[int, int] = (37, 4000)) -> None:
    archive = make_tar_gz({prefix + name: data for name, data in V10_MEMBERS.items()})
    assert 0 < cuts[0] < cuts[1] < len(archive)
    root.mkdir(parents=True, exist_ok=True)
    bounds = [0, *cuts, len(archive)]
    for i in range(3):
        (root / f"pixabay.tar.gz.{i:02d}").write_bytes(archive[bounds[i] : bounds[i + 1]])
    # Other Open-Sora sources live in the same repository folder and must be ignored.
    (root / "mixkit.tar.gz").write_bytes(make_tar_gz({"mixkit/catA/other.mp4": blob(9)}))
    write_json(root / "llava_path_cap_64x512x512.json", v10_annotations())


@pytest.mark.parametrize("prefix", ["pixabay/", "data_split_tt/pixabay/", "./"])
def test_pixabay_v100_split_archive_maps_remote_paths(tmp_path: Path, prefix: str) -> None:
    build_v10(tmp_path / "v100", prefix)
    found = items(f"pixabay:{tmp_path / 'v100'}")
    videos = [i for i in found if i.error is None]
    assert [i.key for i in videos] == [
        f"pixabay.tar.gz::{prefix}{name}" for name in V10_MEMBERS if name.endswith(".mp4")
    ]
    got = by_key(videos)
    a1 = got[f"pixabay.tar.gz::{prefix}catA/v1.mp4"]
    assert a1.data == V10_MEMBERS["catA/v1.mp4"] and a1.path is None
    assert a1.source_caption == "A one."
    assert a1.meta == {
        "annotation_path": f"{REMOTE}/pixabay/catA/v1.mp4",
        "source_captions": ["A one.", "A one, again."],
        "release": "v1.0.0",
    }
    # Same file name in two categories: the category decides.
    assert got[f"pixabay.tar.gz::{prefix}catB/v1.mp4"].source_caption == "B one."
    unannotated = got[f"pixabay.tar.gz::{prefix}catC/unannotated.mp4"]
    assert unannotated.source_caption is None and unannotated.meta["annotation_path"] is None

    errors = [i for i in found if i.error is not None]
    assert [i.error for i in errors] == [
        f"annotation path escapes the source root: {REMOTE}/pixabay/../../../../../etc/evil.mp4",
        f"annotated video not found in source: {REMOTE}/pixabay/catZ/missing.mp4",
    ]
    assert all(i.data is None and i.path is None for i in errors)
    assert not any("mixkit" in i.key for i in found)


def test_pixabay_missing_split_part_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "v100"
    build_v10(root, "pixabay/")
    (root / "pixabay.tar.gz.01").unlink()
    found = items(f"pixabay:{root}")
    unreadable = [i for i in found if i.key == "pixabay.tar.gz::<unreadable>"]
    assert len(unreadable) == 1
    assert "pixabay.tar.gz.01 is missing" in (unreadable[0].error or "")
    assert not any(i.data for i in found)


def test_video_ids_are_stable_across_iterations(tmp_path: Path) -> None:
    build_v10(tmp_path / "v100", "pixabay/")
    source = open_source(f"pixabay:{tmp_path / 'v100'}")
    first = [(i.key, i.video_id) for i in source.iter_items()]
    second = [(i.key, i.video_id) for i in source.iter_items()]
    assert first == second
    assert len({vid for _, vid in first}) == len(first)
    assert all(vid.startswith("pix") for _, vid in first)


# ---------------------------------------------------------------------------------------- pixabay 1.1.0


def v11_entry(folder: str, name: str, frames: str, cap: Any) -> dict[str, Any]:
    return {"path": f"/storage/dataset/pixabay_v2/{folder}/{name}", "cap": cap, "frame_idx": frames}


def build_v11(root: Path) -> dict[str, bytes]:
    members = {
        "pixabay_v2/folder_01/a.mp4": blob(11),
        "pixabay_v2/folder_01/b.mp4": blob(12),
        "pixabay_v2/folder_02/a.mp4": blob(13),
        "pixabay_v2/folder_02/c.mp4": blob(14),
    }
    archives = root / "pixabay_v2_tar"
    archives.mkdir(parents=True)
    for folder in ("folder_01", "folder_02"):
        part = {k: v for k, v in members.items() if f"/{folder}/" in k}
        (archives / f"{folder}.tar.gz").write_bytes(make_tar_gz(part))
    entries = [
        v11_entry("folder_01", "a.mp4", "65:130", "first caption of a"),
        v11_entry("folder_01", "a.mp4", "0:65", ["second caption of a", "ignored alternative"]),
        v11_entry("folder_01", "a.mp4", "65:130", "first caption of a"),
        v11_entry("folder_01", "a.mp4", "bad", "third caption of a"),
        v11_entry("folder_02", "a.mp4", "0:65", "caption of 02/a"),
        v11_entry("folder_01", "b.mp4", "0:513", "caption of b"),
        v11_entry("folder_02", "gone.mp4", "0:65", "missing from folder_02"),
        v11_entry("folder_03", "never.mp4", "0:65", "folder_03 was not downloaded"),
    ]
    write_json(root / "anno_jsons" / "video_pixabay_65f_601513.json", entries)
    return members


def test_pixabay_v110_groups_frame_ranges_per_video(tmp_path: Path) -> None:
    members = build_v11(tmp_path / "v110")
    found = items(f"pixabay:{tmp_path / 'v110'}")
    videos = by_key([i for i in found if i.error is None])
    assert list(videos) == [f"{k.split('/')[1]}.tar.gz::{k}" for k in members]
    a = videos["folder_01.tar.gz::pixabay_v2/folder_01/a.mp4"]
    assert a.data == members["pixabay_v2/folder_01/a.mp4"]
    assert a.hints == [SplitHint(0, 65, unit="frame"), SplitHint(65, 130, unit="frame")]
    assert a.source_caption == "first caption of a"
    assert a.meta["source_captions"] == [
        "first caption of a",
        "second caption of a",
        "ignored alternative",
        "third caption of a",
    ]
    assert a.meta["release"] == "v1.1.0"
    # Same file name in another folder: matched by folder, not merged.
    other = videos["folder_02.tar.gz::pixabay_v2/folder_02/a.mp4"]
    assert other.source_caption == "caption of 02/a" and other.hints == [SplitHint(0, 65, unit="frame")]
    assert videos["folder_02.tar.gz::pixabay_v2/folder_02/c.mp4"].source_caption is None

    errors = [i.error for i in found if i.error is not None]
    assert errors == ["annotated video not found in source: /storage/dataset/pixabay_v2/folder_02/gone.mp4"]


def test_pixabay_unsafe_tar_members_become_error_items(tmp_path: Path) -> None:
    root = tmp_path / "v110"
    (root / "pixabay_v2_tar").mkdir(parents=True)
    archive = make_tar_gz({"../x.mp4": blob(1), "/abs/y.mp4": blob(2), "folder_01/ok.mp4": blob(3)})
    (root / "pixabay_v2_tar" / "folder_01.tar.gz").write_bytes(archive)
    write_json(root / "video_pixabay_65f_601513.json", [v11_entry("folder_01", "x.mp4", "0:65", "x")])
    found = by_key(items(f"pixabay:{root}"))
    assert found["folder_01.tar.gz::../x.mp4"].error == "unsafe tar member name ('..' segment): ../x.mp4"
    assert "absolute path" in (found["folder_01.tar.gz::/abs/y.mp4"].error or "")
    assert found["folder_01.tar.gz::../x.mp4"].data is None
    assert found["folder_01.tar.gz::folder_01/ok.mp4"].data == blob(3)
    assert not (tmp_path / "x.mp4").exists()


def test_pixabay_truncated_archive_yields_read_items_then_error(tmp_path: Path) -> None:
    members = build_v11(tmp_path / "v110")
    path = tmp_path / "v110" / "pixabay_v2_tar" / "folder_01.tar.gz"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) * 3 // 4])  # a.mp4 complete, b.mp4 cut
    found = items(f"pixabay:{tmp_path / 'v110'}")
    keys = [i.key for i in found]
    assert keys[:2] == ["folder_01.tar.gz::pixabay_v2/folder_01/a.mp4", "folder_01.tar.gz::<unreadable>"]
    assert found[0].data == members["pixabay_v2/folder_01/a.mp4"]
    assert "folder_01.tar.gz" in (found[1].error or "") and found[1].data is None
    # The next archive is still read; the missing-video report says the scan was incomplete.
    assert "folder_02.tar.gz::pixabay_v2/folder_02/c.mp4" in keys
    not_found = [i.error or "" for i in found if (i.error or "").startswith("annotated video not found")]
    assert any("folder_01/b.mp4" in e and "scan incomplete: folder_01.tar.gz" in e for e in not_found)


def test_archive_cut_after_last_member_is_still_an_error(tmp_path: Path) -> None:
    archive = make_tar_gz({"a.mp4": blob(1), "b.mp4": blob(2)})
    entries = list(iter_tar_entries([lambda: io.BytesIO(archive[:-4])], "cut.tar.gz"))
    assert [e.name for e in entries[:2]] == ["a.mp4", "b.mp4"]
    assert entries[2].fatal and "cut.tar.gz" in (entries[2].error or "")
    intact = list(iter_tar_entries([lambda: io.BytesIO(archive)], "ok.tar.gz"))
    assert [(e.name, e.fatal) for e in intact] == [("a.mp4", False), ("b.mp4", False)]


# ------------------------------------------------------------------------------------- pixabay folder


def test_pixabay_unpacked_folder_with_escaping_annotation(tmp_path: Path) -> None:
    root = tmp_path / "pixabay_unpacked"
    for rel in ("pixabay/catA/v1.mp4", "pixabay/catB/deeper/v3.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"v")
    secret = tmp_path / "secret.mp4"  # outside the root, same name as an annotated path
    secret.write_bytes(b"do not read")
    write_json(
        root / "llava_path_cap_64x512x512.json",
        [
            {"path": f"{REMOTE}/pixabay/catA/v1.mp4", "cap": ["one"]},
            {"path": "pixabay/catB/deeper/v3.mp4", "cap": "three"},
            {"path": "pixabay/../../secret.mp4", "cap": ["escape"]},
            {"path": "pixabay/catA/../catA/v1.mp4", "cap": ["normalised inside"]},
        ],
    )
    source = open_source(f"pixabay:{root}")
    found = list(source.iter_items())
    assert [(i.key, i.error) for i in found] == [
        (
            "annotation::pixabay/../../secret.mp4",
            "annotation path escapes the source root: pixabay/../../secret.mp4",
        ),
        ("pixabay/catA/v1.mp4", None),
        ("pixabay/catB/deeper/v3.mp4", None),
    ]
    v1 = found[1]
    assert v1.path == str(root / "pixabay/catA/v1.mp4") and v1.data is None
    assert v1.meta["release"] == "folder"
    # Two entries name v1.mp4 with the same suffix: the exact relative path wins, neither is "missing".
    assert v1.source_caption == "normalised inside"
    assert found[2].source_caption == "three"
    assert all(str(secret) not in (i.path or "") + i.uri for i in found)


def test_normalize_segments_rejects_climbing() -> None:
    assert normalize_segments("/a/./b/../c.mp4") == ("a", "c.mp4")
    assert normalize_segments("a/../../c.mp4") is None
    assert normalize_segments("/../etc/c.mp4") is None
    assert unsafe_member_reason("./ok/a.mp4") is None
    assert unsafe_member_reason("ok/../../a.mp4") == "'..' segment"


# ------------------------------------------------------------------------------------------- streaming


def test_archive_reading_is_incremental() -> None:
    members = {f"m{i:02d}.mp4": blob(i, 256 * 1024) for i in range(48)}
    archive = make_tar_gz(members)
    readers: list[ChainedReader] = []
    entries = iter_tar_entries(
        [lambda: io.BytesIO(archive[:50_000]), lambda: io.BytesIO(archive[50_000:])],
        "big.tar.gz",
        reader_hook=readers.append,
    )
    first = next(entries)
    assert first.name == "m00.mp4" and first.data == members["m00.mp4"]
    assert readers[0].bytes_read < len(archive) // 4
    assert [e.name for e in entries] == list(members)[1:]
    assert readers[0].bytes_read == len(archive)


def test_pixabay_first_item_arrives_before_a_corrupt_tail(tmp_path: Path) -> None:
    root = tmp_path / "v100"
    build_v10(root, "pixabay/")
    last = root / "pixabay.tar.gz.02"
    last.write_bytes(last.read_bytes()[:-100] + b"\xff" * 100)
    stream = open_source(f"pixabay:{root}").iter_items()
    assert inspect.isgenerator(stream)
    assert next(stream).key.startswith("annotation::")  # the escaping entry is reported up front
    first = next(stream)
    assert first.key == "pixabay.tar.gz::pixabay/catA/v1.mp4" and first.data == V10_MEMBERS["catA/v1.mp4"]
    rest = list(stream)
    assert any(i.key == "pixabay.tar.gz::<unreadable>" for i in rest)


# ------------------------------------------------------------------------------------------- finevideo


def fv_row(mp4: bytes, title: str, scenes: list[tuple[Any, Any, str]]) -> dict[str, Any]:
    return {
        "mp4": mp4,
        "json": {
            "youtube_title": title,
            "youtube_categories": ["Education"],
            "youtube_tags": ["tag"],
            "youtube_channel": "chan",
            "youtube_upload_date": "20200102",
            "content_parent_category": "Science",
            "content_fine_category": "Physics",
            "duration_seconds": 95,
            "resolution": "640x360",
            "youtube_view_count": 5,
            "content_metadata": {
                "title": f"{title} (content)",
                "description": "desc",
                "fps": 29.97,
                "scenes": [
                    {
                        "sceneId": n + 1,
                        "title": label,
                        "timestamps": {"start_timestamp": str(s), "end_timestamp": str(e)},
                        "dynamismScore": 0.5,
                    }
                    for n, (s, e, label) in enumerate(scenes)
                ],
            },
        },
    }


def fv_rows() -> list[dict[str, Any]]:
    return [
        fv_row(
            blob(21),
            "zero",
            [
                ("00:00:00.000", "00:00:04.500", "intro"),
                ("garbage", "00:00:09.000", "bad"),
                ("01:01.5", "75", "mm"),
            ],
        ),
        fv_row(blob(22), "one", [("00:00:10.000", "00:00:05.000", "reversed"), ("2.25", "3.0", "seconds")]),
        fv_row(b"", "empty", [("00:00:00.000", "00:00:01.000", "s")]),
    ]


def write_shards(folder: Path, rows: list[dict[str, Any]], as_string: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if as_string:
        rows = [{"mp4": r["mp4"], "json": json.dumps(r["json"])} for r in rows]
    table = pa.Table.from_pylist(rows)
    assert pa.types.is_string(table.schema.field("json").type) == as_string
    pq.write_table(table.slice(0, 2), folder / "train-00000-of-00002.parquet", row_group_size=1)
    pq.write_table(table.slice(2), folder / "train-00001-of-00002.parquet", row_group_size=1)


def test_finevideo_struct_rows(tmp_path: Path) -> None:
    write_shards(tmp_path / "fv" / "data", fv_rows())
    found = items(f"finevideo:{tmp_path / 'fv'}")
    assert [i.key for i in found] == [
        "train-00000-of-00002.parquet#0",
        "train-00000-of-00002.parquet#1",
        "train-00001-of-00002.parquet#0",
    ]
    zero, one, empty = found
    assert zero.data == blob(21) and zero.path is None and zero.source_caption is None
    assert zero.hints == [
        SplitHint(0.0, 4.5, unit="s", label="intro"),
        SplitHint(61.5, 75.0, unit="s", label="mm"),
    ]
    assert zero.meta["scenes"][0] == {
        "sceneId": 1,
        "title": "intro",
        "start": 0.0,
        "end": 4.5,
        "dynamismScore": 0.5,
    }
    assert zero.meta["skipped_scenes"] == 1
    assert zero.meta["youtube_title"] == "zero" and zero.meta["duration_seconds"] == 95
    assert zero.meta["content_title"] == "zero (content)" and zero.meta["content_fps"] == pytest.approx(29.97)
    assert "youtube_view_count" not in zero.meta
    assert one.hints == [SplitHint(2.25, 3.0, unit="s", label="seconds")]
    assert empty.error == "row has no mp4 bytes" and empty.data is None
    for item in found:
        assert json.loads(json.dumps(item.meta)) == item.meta


def test_finevideo_accepts_string_json_and_every_path_form(tmp_path: Path) -> None:
    data = tmp_path / "fv" / "data"
    write_shards(data, fv_rows(), as_string=True)
    expected = [i.key for i in items(f"finevideo:{tmp_path / 'fv'}")]
    assert len(expected) == 3
    assert [i.key for i in items(f"finevideo:{data}")] == expected
    assert [i.key for i in items(f"finevideo:{data}/train-*.parquet")] == expected
    single = items(f"finevideo:{data}/train-00001-of-00002.parquet")
    assert [i.key for i in single] == expected[2:]
    first = items(f"finevideo:{data}")[0]
    assert first.hints[0] == SplitHint(0.0, 4.5, unit="s", label="intro")


def test_finevideo_streams_and_reports_a_corrupt_shard(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_shards(data, fv_rows())
    (data / "train-00002-of-00002.parquet").write_bytes(b"PAR1 not really parquet")
    stream = open_source(f"finevideo:{tmp_path}").iter_items()
    assert inspect.isgenerator(stream)
    found = list(stream)
    assert len(found) == 4
    assert found[-1].key == "train-00002-of-00002.parquet#<unreadable>"
    assert "train-00002-of-00002.parquet" in (found[-1].error or "")
    ids = [i.video_id for i in open_source(f"finevideo:{tmp_path}").iter_items()]
    assert ids == [i.video_id for i in found]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("00:01:02.500", 62.5),
        ("01:00:00.000", 3600.0),
        ("02:03.25", 123.25),
        ("4.75", 4.75),
        ("00:00:01,5", 1.5),
        (7, 7.0),
        (2.5, 2.5),
        ("", None),
        ("abc", None),
        ("1:2:3:4", None),
        ("-1.0", None),
        (-3, None),
        (float("nan"), None),
        (None, None),
        (True, None),
    ],
)
def test_parse_timestamp(value: Any, seconds: float | None) -> None:
    assert parse_timestamp(value) == seconds


def _count(it: Iterator[Any]) -> int:
    return sum(1 for _ in it)


def test_files_source_is_lazy(video_tree: Path) -> None:
    stream = FilesSource(str(video_tree)).iter_items()
    assert inspect.isgenerator(stream)
    assert _count(stream) == 5


# ---------------------------------------------------------------------------------- non-local fsspec


@pytest.fixture
def memory_root(tmp_path: Path) -> Iterator[str]:
    """A copy of tmp_path on fsspec's in-memory filesystem, standing in for a bucket."""
    fs = fsspec.filesystem("memory")
    root = f"/{tmp_path.name}"
    yield root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def copy_to_memory(local: Path, root: str) -> None:
    fs = fsspec.filesystem("memory")
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.pipe(f"{root}/{path.relative_to(local).as_posix()}", path.read_bytes())


def test_sources_read_through_fsspec_urls(tmp_path: Path, memory_root: str) -> None:
    build_v11(tmp_path / "v110")
    write_shards(tmp_path / "fv" / "data", fv_rows())
    copy_to_memory(tmp_path, memory_root)
    for kind, sub in (("pixabay", "v110"), ("finevideo", "fv")):
        local = items(f"{kind}:{tmp_path / sub}")
        remote = items(f"{kind}:memory://{memory_root}/{sub}")
        assert [(i.key, i.data, i.error) for i in remote] == [(i.key, i.data, i.error) for i in local]
        assert [i.video_id for i in remote] == [i.video_id for i in local]
        assert len(remote) >= 3
        assert all(i.uri.startswith("memory://") for i in remote if not i.key.startswith("annotation::"))
    files = items(f"files:memory://{memory_root}/v110")
    assert files == []  # archives are not videos; the files source never looks inside them
    copy_to_memory(tmp_path / "v110", f"{memory_root}/plain")
    fsspec.filesystem("memory").pipe(f"{memory_root}/plain/x/y.mp4", b"v")
    (only,) = items(f"files:memory://{memory_root}/plain/*/*.mp4")
    assert only.key == "x/y.mp4" and only.path == f"memory://{memory_root}/plain/x/y.mp4"


def test_pixabay_duplicate_member_keeps_first(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for data in (blob(1), blob(2)):
            info = tarfile.TarInfo("folder_01/dup.mp4")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "folder_01.tar.gz").write_bytes(buf.getvalue())
    found = items(f"pixabay:{tmp_path}")
    assert [(i.key, i.data) for i in found] == [("folder_01.tar.gz::folder_01/dup.mp4", blob(1))]
    assert found[0].meta["release"] == "v1.1.0"


def _link_tree(tmp_path: Path) -> Path:
    """A folder of symbolic links: to videos inside the root, out of it, nowhere, to a folder."""
    root, store, outside = tmp_path / "links", tmp_path / "links" / "store", tmp_path / "outside"
    store.mkdir(parents=True)
    outside.mkdir()
    (store / "real.mp4").write_bytes(b"video bytes")
    (outside / "far.mp4").write_bytes(b"video bytes")
    (root / "a.mp4").symlink_to("store/real.mp4")
    (root / "b.mp4").symlink_to(store / "real.mp4")  # absolute target, still inside
    (root / "escape.mp4").symlink_to(outside / "far.mp4")
    (root / "dangling.mp4").symlink_to("store/missing.mp4")
    (root / "dir_link").symlink_to("store")
    return root


def test_symbolic_links_are_followed_or_recorded_never_dropped(tmp_path: Path) -> None:
    root = _link_tree(tmp_path)
    src = open_source(f"files:{root}/*")
    items = {i.key: i for i in src.iter_items()}
    assert set(items) == {"a.mp4", "b.mp4", "escape.mp4", "dangling.mp4"}
    for key in ("a.mp4", "b.mp4"):
        assert items[key].error is None
        with open(items[key].path, "rb") as f:  # the link path itself opens the video
            assert f.read() == b"video bytes"
    assert "escapes the source root" in items["escape.mp4"].error
    assert "dangling symbolic link" in items["dangling.mp4"].error
    # What matched but is no video is counted by reason (the store folder and the folder link).
    assert dict(src.skipped) == {"directory": 1, "link to a directory": 1}
