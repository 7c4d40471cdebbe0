"""What the object-store OUT tests (s3://, gs://) share: the curate command they run as a child,
its environment, and the comparisons of manifests and objects against a local run."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from curation.manifest import read_table

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def curate_cmd(src: Path, out: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "curate", "--runner", "local", "--no-report",
            "--source", f"files:{src}/*.mp4", "--out", out]  # fmt: skip


def manifest_rows(folder: str, drop: tuple[str, ...] = ()) -> set[tuple]:
    """The rows of a manifest folder (local or URL), order-free, without the columns in `drop`."""
    rows = read_table(folder, group_key=None).to_pylist()
    return {tuple(sorted((k, repr(v)) for k, v in r.items() if k not in drop)) for r in rows}


def bucket_objects(fs: Any, url: str) -> dict[str, bytes]:
    """Every object below `url`, by its name relative to it."""
    root = url.split("://", 1)[1]
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root)}


def assert_same_as_local(local: str, url: str, fs: Any) -> dict[str, bytes]:
    """A curation OUT in a bucket holds what a local run of the same videos holds: the same manifest
    rows, each folder compacted to one committed file, and byte-identical clips. Returns the objects."""
    from curation.manifest import committed_files
    from curation.pipeline import Layout

    la, lb = Layout(local), Layout(url)
    assert manifest_rows(os.path.dirname(la.clips_manifest)) == manifest_rows(
        os.path.dirname(lb.clips_manifest)
    )
    for folder in ("videos", "scores", "thumbs"):
        assert manifest_rows(getattr(la, folder)) == manifest_rows(getattr(lb, folder)), folder
        # Compacted: one committed data file for this small job, no loose per-video parts left.
        assert [n[:2] for n in committed_files(getattr(lb, folder))] == ["c-"], folder
    objects = bucket_objects(fs, url)
    kept = {n for n in objects if n.startswith("clips/")}
    assert kept == {f"clips/{p.name}" for p in Path(local, "clips").iterdir()}
    assert all(objects[n] == Path(local, n).read_bytes() for n in kept)  # byte-identical clips
    return objects
