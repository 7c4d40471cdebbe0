"""The eval samples: read from a stage's split, chosen by seed, and their real videos streamed.

Shards are found through their index (training.data.loader.resolve_shards) and read member by
member with the rules of training.data.sample_format. Two passes: the first reads only the json
and txt members (which samples exist, their captions); the second decodes the mp4 of the chosen
samples, one at a time, so 1,000 eval videos never sit in memory together.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.data.sample_format import JSON, MP4, TXT, ShardIndex, decode_mp4, parse_meta


@dataclass(frozen=True)
class EvalSample:
    key: str
    caption: str
    shard: str
    frames: int
    height: int
    width: int
    fps: float
    source: str = ""


def _open(url: str) -> Any:
    import fsspec

    return fsspec.open(url, "rb").open()


def _members(url: str, wanted: set[str] | None = None) -> Iterator[tuple[str, str, bytes]]:
    """(key, field, bytes) of every regular member of a shard, optionally only some fields."""
    with _open(url) as f, tarfile.open(fileobj=f, mode="r|*") as tf:
        for m in tf:
            if not m.isfile():
                continue
            base = os.path.basename(m.name)
            key, dot, field = base.partition(".")
            if not dot or (wanted is not None and field not in wanted):
                continue
            data = tf.extractfile(m)
            if data is not None:
                yield key, field, data.read()


def _grouped(url: str, wanted: set[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Members of one sample together (a shard stores a sample's members next to each other)."""
    key, fields = None, {}
    for k, field, data in _members(url, wanted):
        if k != key:
            if key is not None:
                yield key, fields
            key, fields = k, {}
        fields[field] = data
    if key is not None:
        yield key, fields


def read_samples(urls: list[str]) -> tuple[list[EvalSample], list[str]]:
    """Every sample's key and caption (json + txt members only); errors name shard and reason."""
    samples: list[EvalSample] = []
    errors: list[str] = []
    for url in urls:
        try:
            for key, fields in _grouped(url, {JSON, TXT}):
                try:
                    meta = parse_meta(fields[JSON])
                    caption = fields[TXT].decode("utf-8").strip() if TXT in fields else meta.caption
                except Exception as e:  # one bad sample costs that sample
                    errors.append(f"{url}: sample {key}: unreadable json/txt ({type(e).__name__}: {e})")
                    continue
                if not caption:
                    errors.append(f"{url}: sample {key}: empty caption")
                    continue
                samples.append(
                    EvalSample(key, caption, url, meta.frames, meta.height, meta.width, meta.fps, meta.source)
                )
        except (OSError, tarfile.TarError) as e:
            errors.append(f"{url}: unreadable shard ({type(e).__name__}: {e})")
    return samples, errors


def by_source(samples: list[EvalSample], sources: list[str] | None) -> list[EvalSample]:
    """The samples of the given sources (case-insensitive); all of them when sources is None."""
    if sources is None:
        return samples
    wanted = {s.lower() for s in sources}
    return [s for s in samples if s.source.lower() in wanted]


def choose(samples: list[EvalSample], n: int, seed: int) -> list[EvalSample]:
    """n samples drawn by seed, in draw order; independent of shard order, and a smaller n with
    the same seed picks a prefix of a larger one's choice."""
    by_key = sorted({s.key: s for s in samples}.values(), key=lambda s: s.key)
    perm = np.random.default_rng(seed).permutation(len(by_key))
    return [by_key[i] for i in perm[:n]]


def sample_seed(seed: int, key: str) -> int:
    """The generation seed of one sample: fixed by (seed, key), whatever batch it lands in."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def iter_real_videos(chosen: list[EvalSample], errors: list[str]) -> Iterator[tuple[EvalSample, np.ndarray]]:
    """(sample, uint8 [T, H, W, 3]) of the chosen samples, shard by shard; a video that does not
    decode is recorded in `errors` and skipped."""
    by_shard: dict[str, dict[str, EvalSample]] = {}
    for s in chosen:
        by_shard.setdefault(s.shard, {})[s.key] = s
    for url, wanted in by_shard.items():
        found: set[str] = set()
        try:
            for key, field, data in _members(url, {MP4}):
                s = wanted.get(key)
                if s is None or field != MP4:
                    continue
                found.add(key)
                try:
                    frames = decode_mp4(data)
                except Exception as e:
                    errors.append(f"{url}: sample {key}: mp4 does not decode ({type(e).__name__}: {e})")
                    continue
                yield s, frames
        except (OSError, tarfile.TarError) as e:
            errors.append(f"{url}: unreadable shard ({type(e).__name__}: {e})")
        for key in sorted(set(wanted) - found):
            errors.append(f"{url}: sample {key}: no mp4 member")


def stage_size(index: ShardIndex | None, chosen: list[EvalSample]) -> dict[str, float]:
    if index is not None:
        return {"frames": index.frames, "height": index.height, "width": index.width, "fps": index.fps}
    s = chosen[0]
    return {"frames": s.frames, "height": s.height, "width": s.width, "fps": s.fps}
