"""`pixabay:PATH`: Pixabay videos as released by Open-Sora-Plan, with their English captions.

PATH is a folder holding one of three layouts (detected in this order):

* v1.0.0: split archive `pixabay.tar.gz.00`, `.01`, ... (or a whole `pixabay.tar.gz`) plus
  `llava_path_cap_64x512x512.json` (`[{"path": "/remote-home1/.../pixabay/<cat>/<name>.mp4", "cap": [...]}]`);
* v1.1.0: `pixabay_v2_tar/folder_NN.tar.gz` (or `folder_NN.tar.gz` directly in PATH) plus
  `video_pixabay_65f_601513.json`, many `{"path", "cap", "frame_idx": "start:end"}` entries per video;
* folder: the videos unpacked anywhere below PATH plus either JSON.

The annotation JSONs may also sit in `PATH/anno_jsons/` (their place in the v1.1.0 repository).
Annotation paths point at the authors' machines, so they are matched to archive members or files by
their longest common path suffix (at least the file name), never opened.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fsspec import AbstractFileSystem

from curation.sources.archive import Opener, TarEntry, iter_tar_entries
from curation.sources.base import SplitHint, VideoItem
from curation.sources.files import find_videos, full_url, open_fs, relative_to

log = logging.getLogger(__name__)

Release = Literal["v1.0.0", "v1.1.0", "folder"]

_SPLIT_PART = re.compile(r"^(pixabay\.tar\.gz)\.(\d+)$")
_V11_ARCHIVE_AT_ROOT = re.compile(r"^folder_\d+\.(tar\.gz|tgz)$")
_V11_ARCHIVE_IN_DIR = re.compile(r"^.+\.(tar\.gz|tgz)$")
# v1.1.0 annotations name the archive folder (`.../folder_07/x.mp4`); used to tell a video that is
# missing from a folder we scanned from one in a folder that simply was not downloaded.
_FOLDER_SEGMENT = re.compile(r"^folder_\d+$")
_LLAVA_JSONS = ("llava_path_cap_64x512x512.json", "llava_path_cap_*.json")
_V11_JSONS = ("video_pixabay_65f_601513.json", "video_pixabay_65f_*.json", "video_pixabay_*.json")


# ---------------------------------------------------------------------------------------------- paths


def normalize_segments(path: str) -> tuple[str, ...] | None:
    """Lexically normalised path segments, or None when a `..` climbs above the path's start.

    Absolute paths are treated like relative ones: `/..` cannot be silently clamped to `/` as
    `posixpath.normpath` does, because that would hide an escape attempt.
    """
    out: list[str] = []
    for segment in path.replace("\\", "/").split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not out:
                return None
            out.pop()
        else:
            out.append(segment)
    return tuple(out)


def member_segments(name: str) -> tuple[str, ...]:
    return tuple(s for s in name.split("/") if s not in ("", "."))


def common_suffix_length(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


# ---------------------------------------------------------------------------------------- annotations


@dataclass
class AnnotatedVideo:
    """Everything the annotation says about one video path (v1.1.0 has many entries per video)."""

    raw_path: str
    segments: tuple[str, ...]
    captions: list[str] = field(default_factory=list)
    hints: list[SplitHint] = field(default_factory=list)
    matched: bool = False


class AnnotationIndex:
    """Annotation entries grouped per normalised path, findable by file name then path suffix."""

    def __init__(self) -> None:
        self.videos: dict[str, AnnotatedVideo] = {}
        self.by_name: dict[str, list[str]] = {}
        self.escaped: list[str] = []
        self.skipped = 0

    @classmethod
    def from_entries(cls, entries: Sequence[Any]) -> AnnotationIndex:
        index = cls()
        # The v1.0.0 JSON annotates mixkit and pexels too; when it names a `pixabay` folder at all,
        # entries outside one belong to other sources and must not become "not found" rows here.
        only_pixabay = any("pixabay" in (_entry_segments(e) or ())[:-1] for e in entries)
        escaped: set[str] = set()
        # Per-video caption sets, only while building: v1.1.0 repeats a caption across many clips.
        seen: dict[str, set[str]] = {}
        for entry in entries:
            raw = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(raw, str) or not raw.strip():
                index.skipped += 1
                continue
            segments = normalize_segments(raw)
            if segments is None:
                escaped.add(raw)
                continue
            if not segments or (only_pixabay and "pixabay" not in segments[:-1]):
                continue
            index._add(raw, segments, entry, seen)
        index.escaped = sorted(escaped)
        for video in index.videos.values():
            video.hints = sorted(set(video.hints), key=lambda h: (h.start, h.end))
        if index.skipped:
            log.warning("pixabay annotations: skipped %d entries without a usable path", index.skipped)
        return index

    def _add(
        self, raw: str, segments: tuple[str, ...], entry: dict[str, Any], seen: dict[str, set[str]]
    ) -> None:
        norm = "/".join(segments)
        video = self.videos.get(norm)
        if video is None:
            video = self.videos[norm] = AnnotatedVideo(raw_path=raw, segments=segments)
            self.by_name.setdefault(segments[-1], []).append(norm)
        known = seen.setdefault(norm, set())
        for caption in _captions(entry.get("cap")):
            if caption not in known:
                known.add(caption)
                video.captions.append(caption)
        hint = _frame_hint(entry.get("frame_idx"))
        if hint is not None:
            video.hints.append(hint)

    def match(self, segments: Sequence[str]) -> AnnotatedVideo | None:
        """The annotation sharing the longest path suffix with `segments`.

        Ties go to the annotation with the fewest unmatched leading segments (an exact relative
        path beats a remote absolute one), then to the smallest path. Every annotation tied on the
        suffix counts as found: they all plausibly name this video, none is "missing".
        """
        if not segments:
            return None
        candidates = self.by_name.get(segments[-1])
        if not candidates:
            return None
        scored = [(common_suffix_length(segments, self.videos[n].segments), n) for n in candidates]
        top = max(score for score, _ in scored)
        tied = [self.videos[n] for score, n in scored if score == top]
        for video in tied:
            video.matched = True
        return min(tied, key=lambda v: (len(v.segments), "/".join(v.segments)))

    def unmatched(self) -> list[AnnotatedVideo]:
        return [self.videos[n] for n in sorted(self.videos) if not self.videos[n].matched]


def _entry_segments(entry: Any) -> tuple[str, ...] | None:
    raw = entry.get("path") if isinstance(entry, dict) else None
    return normalize_segments(raw) if isinstance(raw, str) else None


def _captions(cap: Any) -> list[str]:
    values = cap if isinstance(cap, list) else [cap]
    return [c for c in values if isinstance(c, str) and c.strip()]


def _frame_hint(frame_idx: Any) -> SplitHint | None:
    if not isinstance(frame_idx, str) or ":" not in frame_idx:
        return None
    start_text, _, end_text = frame_idx.partition(":")
    try:
        start, end = float(start_text), float(end_text)
    except ValueError:
        return None
    if not (0 <= start < end):
        return None
    return SplitHint(start, end, unit="frame")


def load_annotations(fs: AbstractFileSystem, path: str) -> AnnotationIndex:
    with fs.open(path, "rb") as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise ValueError(
            f"pixabay annotation {path}: expected a JSON list of entries, got {type(entries).__name__}"
        )
    return AnnotationIndex.from_entries(entries)


# ---------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Archive:
    name: str  # key prefix: "pixabay.tar.gz" (split parts joined) or "folder_01.tar.gz"
    parts: tuple[str, ...]  # fs paths, in concatenation order
    problem: str | None = None  # e.g. a missing split part, reported with the archive's error


@dataclass(frozen=True)
class Layout:
    release: Release
    annotation: str | None
    archives: tuple[Archive, ...] = ()


def detect_layout(fs: AbstractFileSystem, root: str) -> Layout:
    if not fs.isdir(root):
        raise FileNotFoundError(f"pixabay source: {root} is not a folder")
    children = _children(fs, root)
    split = _split_archive(root, children)
    folders = _folder_archives(fs, root, children)
    if split and folders:
        raise ValueError(
            f"pixabay source: {root} holds both v1.0.0 and v1.1.0 archives; point at one of them"
        )
    json_dirs = [root]
    if children.get("anno_jsons") == "directory":
        json_dirs.append(f"{root}/anno_jsons")
    if split:
        return Layout("v1.0.0", _find_json(fs, json_dirs, _LLAVA_JSONS), (split,))
    if folders:
        return Layout("v1.1.0", _find_json(fs, json_dirs, _V11_JSONS), tuple(folders))
    return Layout("folder", _find_json(fs, json_dirs, _V11_JSONS + _LLAVA_JSONS))


def _children(fs: AbstractFileSystem, folder: str) -> dict[str, str]:
    """Base name -> "file" | "directory" of a folder's direct entries."""
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e.get("type", "") for e in fs.ls(folder, detail=True)}


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _split_archive(root: str, children: dict[str, str]) -> Archive | None:
    numbered = sorted(
        (int(m.group(2)), name)
        for name in children
        if (m := _SPLIT_PART.match(name)) and children[name] == "file"
    )
    if not numbered:
        if children.get("pixabay.tar.gz") == "file":
            return Archive("pixabay.tar.gz", (f"{root}/pixabay.tar.gz",))
        return None
    parts: list[str] = []
    problem = None
    for expected, (number, name) in enumerate(numbered):
        if number != expected:
            problem = f"split part pixabay.tar.gz.{expected:02d} is missing"
            break
        parts.append(f"{root}/{name}")
    return Archive("pixabay.tar.gz", tuple(parts), problem)


def _folder_archives(fs: AbstractFileSystem, root: str, children: dict[str, str]) -> list[Archive]:
    if children.get("pixabay_v2_tar") == "directory":
        folder, pattern = f"{root}/pixabay_v2_tar", _V11_ARCHIVE_IN_DIR
        names = _children(fs, folder)
    else:
        folder, pattern, names = root, _V11_ARCHIVE_AT_ROOT, children
    chosen = sorted((n for n, kind in names.items() if kind == "file" and pattern.match(n)), key=_natural_key)
    return [Archive(n, (f"{folder}/{n}",)) for n in chosen]


def _find_json(fs: AbstractFileSystem, folders: Sequence[str], patterns: Sequence[str]) -> str | None:
    listings = [(folder, _children(fs, folder)) for folder in folders]
    for pattern in patterns:
        for folder, children in listings:
            hits = sorted(
                n for n, kind in children.items() if kind == "file" and fnmatch.fnmatchcase(n, pattern)
            )
            if hits:
                return f"{folder}/{hits[0]}"
    return None


# ---------------------------------------------------------------------------------------------- source


class PixabaySource:
    """Open-Sora-Plan Pixabay videos; archive members are streamed, one member's bytes at a time."""

    name = "pixabay"

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})

    def iter_items(self) -> Iterator[VideoItem]:
        fs, root = open_fs(self.url, self.storage_options)
        layout = detect_layout(fs, root)
        if layout.annotation is None:
            log.warning(
                "pixabay source %s (%s): no annotation JSON found; items get no caption", root, layout.release
            )
            index = AnnotationIndex()
        else:
            index = load_annotations(fs, layout.annotation)
        scan = _Scan(self.name, layout.release, index)
        for raw in index.escaped:
            yield scan.annotation_error(raw, f"annotation path escapes the source root: {raw}")
        if layout.release == "folder":
            yield from self._iter_folder(fs, root, scan)
        else:
            for archive in layout.archives:
                yield from self._iter_archive(fs, archive, scan)
        yield from scan.not_found()

    def _iter_folder(self, fs: AbstractFileSystem, root: str, scan: _Scan) -> Iterator[VideoItem]:
        for path in find_videos(fs, root):
            key = relative_to(path, root)
            url = full_url(fs, path)
            yield scan.item(key, url, member_segments(key), path=url)

    def _iter_archive(self, fs: AbstractFileSystem, archive: Archive, scan: _Scan) -> Iterator[VideoItem]:
        scan.present.add(archive.name.split(".", 1)[0])
        archive_url = full_url(fs, archive.parts[0] if len(archive.parts) == 1 else _joined_name(archive))
        openers = [_opener(fs, part) for part in archive.parts]
        failed = False
        names: set[str] = set()
        for entry in iter_tar_entries(openers, archive.name):
            if not entry.fatal and entry.name in names:
                # An appended tar can repeat a member; a second item would duplicate the video id.
                log.warning("pixabay %s: duplicate member %s skipped", archive.name, entry.name)
                continue
            names.add(entry.name)
            if entry.fatal:
                failed = True
                reason = f"{archive.problem}; {entry.error}" if archive.problem else entry.error
                scan.incomplete.append(archive.name)
                yield scan.error(f"{archive.name}::<unreadable>", archive_url, reason or "archive unreadable")
            else:
                yield self._member_item(entry, archive, archive_url, scan)
        if archive.problem and not failed:
            scan.incomplete.append(archive.name)
            yield scan.error(f"{archive.name}::<unreadable>", archive_url, archive.problem)

    @staticmethod
    def _member_item(entry: TarEntry, archive: Archive, archive_url: str, scan: _Scan) -> VideoItem:
        key = f"{archive.name}::{entry.name}"
        uri = f"{archive_url}::{entry.name}"
        if entry.error is not None:
            return scan.error(key, uri, entry.error)
        return scan.item(key, uri, member_segments(entry.name), data=entry.data)


def _joined_name(archive: Archive) -> str:
    folder = archive.parts[0].rsplit("/", 1)[0]
    return f"{folder}/{archive.name}"


def _opener(fs: AbstractFileSystem, path: str) -> Opener:
    return lambda: fs.open(path, "rb")


class _Scan:
    """Per-iteration state: which annotations were matched, which folders/archives were seen."""

    def __init__(self, source: str, release: Release, index: AnnotationIndex) -> None:
        self.source = source
        self.release = release
        self.index = index
        self.present: set[str] = set()
        self.incomplete: list[str] = []

    def item(
        self,
        key: str,
        uri: str,
        segments: Sequence[str],
        *,
        data: bytes | None = None,
        path: str | None = None,
    ) -> VideoItem:
        self.present.update(segments[:-1])
        video = self.index.match(segments)
        return VideoItem(
            source=self.source,
            key=key,
            uri=uri,
            path=path,
            data=data,
            source_caption=video.captions[0] if video and video.captions else None,
            meta=self._meta(video),
            hints=list(video.hints) if video else [],
        )

    def error(self, key: str, uri: str, message: str) -> VideoItem:
        return VideoItem(source=self.source, key=key, uri=uri, meta=self._meta(None), error=message)

    def annotation_error(self, raw: str, message: str, video: AnnotatedVideo | None = None) -> VideoItem:
        meta = self._meta(video)
        meta["annotation_path"] = raw
        return VideoItem(source=self.source, key=f"annotation::{raw}", uri=raw, meta=meta, error=message)

    def not_found(self) -> Iterable[VideoItem]:
        """Error items for annotated videos the scan never met, in path order.

        Videos under a `folder_NN` that was neither an archive nor a folder here are skipped: that
        folder was not downloaded, which is a choice, not a defect of this source.
        """
        suffix = f" (scan incomplete: {', '.join(self.incomplete)} unreadable)" if self.incomplete else ""
        for video in self.index.unmatched():
            if any(_FOLDER_SEGMENT.match(s) and s not in self.present for s in video.segments[:-1]):
                continue
            message = f"annotated video not found in source: {video.raw_path}{suffix}"
            yield self.annotation_error(video.raw_path, message, video)

    def _meta(self, video: AnnotatedVideo | None) -> dict[str, Any]:
        return {
            "annotation_path": video.raw_path if video else None,
            "source_captions": list(video.captions) if video else [],
            "release": self.release,
        }
