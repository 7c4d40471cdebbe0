"""Videos from folders (a baseline's, or a published eval set's with its captions): read with their
frame rate, described (fps, size, frames), and kept inside their folder.

An external eval set is a folder of videos and a JSONL prompts file, one line per video:
    {"file": "clips/0001.mp4", "prompt": "夕暮れの海辺を柴犬が走っている。"}
`key` (default: the file name without extension) names the video in the evaluation, and `caption`
is accepted for `prompt`; `file` defaults to `<key>.mp4`. Paths are relative to the folder and may
not leave it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


@dataclass(frozen=True)
class FolderVideo:
    key: str
    prompt: str
    path: str


def read_video(path: str) -> tuple[np.ndarray, float | None]:
    """All frames of a video file as uint8 [T, H, W, 3] RGB, and its average frame rate (None if
    the container does not say). One decode thread: decoded pixels are then reproducible."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        rate = stream.average_rate or stream.guessed_rate
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError("no frames")
    return np.stack(frames), (float(rate) if rate else None)


def describe(video: np.ndarray, fps: float | None) -> dict[str, object]:
    return {
        "frames": int(video.shape[0]),
        "height": int(video.shape[1]),
        "width": int(video.shape[2]),
        "fps": fps,
    }


def list_videos(folder: str) -> list[str]:
    """The video files of a folder (not recursive; hidden files and writers' temporaries skipped)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"video folder not found: {folder}")
    return sorted(
        os.path.join(folder, n)
        for n in os.listdir(folder)
        if n.lower().endswith(VIDEO_EXTENSIONS) and not n.startswith(".")
    )


def inside(root: str, rel: str) -> str | None:
    """root/rel when it stays inside root (symlinks resolved), else None."""
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, rel))
    return path if os.path.commonpath([base, path]) == base and path != base else None


@dataclass
class PromptRow:
    where: str  # path:line, for error messages
    key: str
    prompt: str  # stripped; "" when the row has none
    file: str  # the row's "file", else KEY.mp4


def read_prompt_rows(path: str) -> Iterator[PromptRow | str]:
    """The rows of a prompts JSONL (`vjp eval`'s prompts.jsonl, or {"key", "prompt"[, "file"]} lines),
    in file order; an unreadable row is yielded as its error message, so each caller picks its policy
    (eval collects them, the human study refuses the file)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompts file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
                prompt = str(row.get("prompt") or row.get("caption") or "").strip()
                rel = str(row.get("file") or f"{row['key']}.mp4")
                key = str(row.get("key") or os.path.splitext(os.path.basename(rel))[0])
            except (ValueError, KeyError) as e:
                yield f"{path}:{n}: unreadable row ({type(e).__name__}: {e})"
                continue
            yield PromptRow(f"{path}:{n}", key, prompt, rel)


def read_prompt_file(path: str, root: str) -> tuple[list[FolderVideo], list[str]]:
    """The (key, prompt, file) rows of a prompts JSONL for videos in `root`; bad rows become errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompts file not found: {path}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"video folder not found: {root}")
    out: list[FolderVideo] = []
    errors: list[str] = []
    seen: set[str] = set()
    for row in read_prompt_rows(path):
        if isinstance(row, str):
            errors.append(row)
            continue
        full = inside(root, row.file)
        if not row.prompt:
            errors.append(f"{row.where}: {row.key}: empty prompt")
        elif full is None:
            errors.append(f"{row.where}: {row.file}: outside {root}")
        elif not os.path.isfile(full):
            errors.append(f"{row.where}: {full}: no such video")
        elif row.key in seen:
            errors.append(f"{row.where}: {row.key}: duplicate key")
        else:
            seen.add(row.key)
            out.append(FolderVideo(row.key, row.prompt, full))
    return out, errors
