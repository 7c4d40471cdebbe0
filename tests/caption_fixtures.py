"""Test helpers for captioning: tiny random Qwen2-VL / Qwen2.5-VL models, tiny clips, clip manifests.

No hub access: the models are built from real config classes with tiny sizes, a small byte-level
BPE tokenizer that carries the Qwen2-VL special tokens and chat template, saved to a directory and
loaded back through from_pretrained like a real checkpoint. Runs under either venv (.venv or
.venv-vllm), and as a script: `python tests/caption_fixtures.py model DIR` builds a model there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# `python tests/caption_fixtures.py model DIR` (the vLLM venv has no install of this package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The tiny models live in the package (the demo pipeline builds them too); re-exported here.
from captioning.tiny import (
    QWEN2_VL_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    build_tiny_model,
    build_tokenizer,
)

__all__ = ["QWEN2_VL_CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_model", "build_tokenizer"]


def make_clip(path: str | Path, *, size: int = 112, frames: int = 16, fps: int = 8, color: int = 0) -> Path:
    """A tiny H.264 mp4: a coloured square moving over a plain background."""
    import av
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    palette = [(220, 40, 40), (40, 180, 60), (40, 80, 220), (230, 200, 40)]
    fg = np.array(palette[color % len(palette)], dtype=np.uint8)
    bg = np.array(palette[(color + 2) % len(palette)], dtype=np.uint8) // 3
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        side = size // 4
        for i in range(frames):
            img = np.empty((size, size, 3), dtype=np.uint8)
            img[:] = bg
            x = int((size - side) * i / max(frames - 1, 1))
            img[size // 3 : size // 3 + side, x : x + side] = fg
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_clip_manifest(out: str | Path, clips: list[dict[str, Any]], part: str = "part-000000") -> Path:
    """Write OUT/manifests/clips/<part>.parquet with curation's clip columns.

    Each dict needs clip_id; the rest defaults to a kept Pixabay clip at clips/<clip_id>.mp4.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    rows = []
    for c in clips:
        kept = c.get("status", "kept") == "kept"
        rows.append(
            {
                "clip_id": c["clip_id"],
                "video_id": c.get("video_id", c["clip_id"].split("_")[0]),
                "source": c.get("source", "pixabay"),
                "status": c.get("status", "kept"),
                "clip_path": c.get("clip_path", f"clips/{c['clip_id']}.mp4" if kept else None),
                "start_s": float(c.get("start_s", 0.0)),
                "end_s": float(c.get("end_s", 2.0)),
                "fps": float(c.get("fps", 8.0)),
                "width": int(c.get("width", 112)),
                "height": int(c.get("height", 112)),
                "source_caption": c.get("source_caption"),
                "source_meta": c.get("source_meta", json.dumps({})),
            }
        )
    schema = pa.schema(
        [
            ("clip_id", pa.string()),
            ("video_id", pa.string()),
            ("source", pa.string()),
            ("status", pa.string()),
            ("clip_path", pa.string()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("fps", pa.float64()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("source_caption", pa.string()),
            ("source_meta", pa.string()),
        ]
    )
    d = out / "manifests" / "clips"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{part}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def make_dataset(out: str | Path, n_kept: int = 2, *, corrupt: bool = False, rejected: bool = True) -> Path:
    """OUT with n_kept real clips (+ one corrupt kept clip, + one rejected row) and their manifest."""
    out = Path(out)
    clips: list[dict[str, Any]] = []
    for i in range(n_kept):
        cid = f"pix{i:04d}abcd_0000000_0000016"
        make_clip(out / "clips" / f"{cid}.mp4", color=i)
        meta = {"youtube_title": "red square", "youtube_tags": ["test", "square"]} if i % 2 else {}
        clips.append(
            {
                "clip_id": cid,
                "source": "finevideo" if i % 2 else "pixabay",
                "source_caption": None if i % 2 else "A coloured square moves to the right.",
                "source_meta": json.dumps(meta),
            }
        )
    if corrupt:
        cid = "pixbad0000_0000000_0000016"
        (out / "clips").mkdir(parents=True, exist_ok=True)
        (out / "clips" / f"{cid}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
        clips.append({"clip_id": cid})
    if rejected:
        clips.append({"clip_id": "pixrej0000_0000000_0000016", "status": "rejected"})
    make_clip_manifest(out, clips)
    return out


def tiny_frames_config() -> dict[str, Any]:
    """Frame settings for 112x112 test clips: 4 frames of 112x112, i.e. 32 video tokens."""
    return {
        "fps": 2.0,
        "min_frames": 4,
        "max_frames": 8,
        "min_pixels": 56 * 56,
        "max_pixels": 112 * 112,
        "total_pixels": 4 * 112 * 112,
    }


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "model":
        fam = sys.argv[3] if len(sys.argv) > 3 else "qwen2_vl"
        print(build_tiny_model(sys.argv[2], fam))
    elif len(sys.argv) >= 3 and sys.argv[1] == "dataset":
        print(make_dataset(sys.argv[2], n_kept=int(sys.argv[3]) if len(sys.argv) > 3 else 2))
    else:
        sys.exit("usage: caption_fixtures.py model DIR [qwen2_vl|qwen2_5_vl] | dataset DIR [N]")


_MODEL_CACHE: dict[str, Path] = {}


def tiny_model_dir(family: str = "qwen2_vl") -> Path:
    """Build the tiny model once per test process (a few seconds) and reuse it across modules."""
    if family not in _MODEL_CACHE:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix=f"tiny-{family}-"))
        atexit.register(shutil.rmtree, root, True)
        _MODEL_CACHE[family] = build_tiny_model(root / family, family)
    return _MODEL_CACHE[family]


def tiny_cli_args(model: Path, max_tokens: int = 12) -> list[str]:
    """CLI overrides that make a CPU run over tiny clips quick."""
    frames = json.dumps(tiny_frames_config())
    return [
        "--model", str(model),
        "--set", f"frames={frames}",
        "--set", f"caption_types.short.max_tokens={max_tokens}",
        "--set", f"caption_types.dense.max_tokens={max_tokens}",
        "--no-progress",
    ]  # fmt: skip
