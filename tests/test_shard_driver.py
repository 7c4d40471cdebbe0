"""`vjp shard`'s driver at scale: each shard task gets row numbers into the columnar plan source
(shared by threads; its own rows' columns on Ray), builds its own metas, hashes its plan and checks
its record; the driver builds no SampleMeta.

The reference is the previous code path run on the same data: the driver builds every shard's plan
hash (`shard_is_done`) and hands each task its pickled plans (metas inside, as Ray did), and the
files must be byte for byte the same.
"""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.test_shards import make_clips, write_captions, write_config

STAGE = "s"


def _corpus(tmp: Path) -> Path:
    """11 kept clips of 6 videos: 8 captioned (Japanese), one without a caption, one missing file,
    one too short; both splits get samples."""
    specs = []
    for i in range(11):
        spec: dict[str, Any] = {"clip_id": f"vid{i // 2}_{i:07d}_{i + 40:07d}", "video_id": f"vid{i // 2}"}
        if i == 9:
            spec["write"] = False
        if i == 10:
            spec["frames"] = 6
        specs.append(spec)
    manifests = make_clips(tmp / "cur", specs)
    captions = [
        {"clip_id": s["clip_id"], "caption_type": "dense", "caption": f"夜の街を走る電車、その{k}。"}
        for k, s in enumerate(specs)
        if k != 8
    ]
    write_captions(manifests, captions)
    return manifests


def _config(tmp: Path, progress: bool = False) -> Any:
    from curation.configfile import load_section
    from training.data.stages import parse_config

    stage = {"width": 64, "height": 64, "frames": 8, "fps": 24, "target_shard_bytes": None,
             "max_shard_samples": 2, "preset": "ultrafast"}  # fmt: skip
    path = write_config(tmp / "shard.yaml", {STAGE: stage}, split={"eval_fraction": 0.3, "salt": "c"})
    cfg = parse_config(*load_section(str(path), "shard", []))
    return cfg.model_copy(update={"runner": cfg.runner.model_copy(update={"progress": progress})})


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _previous_driver(manifests: Path, out: Path, cfg: Any) -> None:
    """The driver as it was: plan hashes and done-checks in the driver, plans pickled per task."""
    from jobs.shard import plan_stage, read_caption_table, read_kept_table, resolve_layout, write_indexes
    from training.data.shard_writer import group_shards, samples_per_shard, shard_is_done, write_shard

    root, clips_dir, captions_dir = resolve_layout(str(manifests))
    clips = read_kept_table(clips_dir)
    captions = read_caption_table(captions_dir, clips.column("clip_id"))
    plans, rows, est = plan_stage(clips, captions, root, STAGE, cfg, "local", clips_dir)
    shards = group_shards(plans, samples_per_shard(cfg.stage(STAGE), est), cfg.seed)
    records = {}
    for sh in shards:
        rec = shard_is_done(sh, str(out), STAGE)
        if rec is None:
            rec = write_shard(pickle.loads(pickle.dumps(sh)), root, str(out), STAGE, cfg)
        records[(sh.split, sh.name)] = rec
    write_indexes(str(out), STAGE, cfg, shards, records, rows)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("driver")
    manifests, cfg = _corpus(tmp), _config(tmp)
    ref = tmp / "previous"
    _previous_driver(manifests, ref, cfg)
    return {"tmp": tmp, "manifests": manifests, "cfg": cfg, "ref": _files(ref / STAGE)}


def test_shard_tasks_give_the_files_of_the_previous_driver(corpus: dict[str, Any], tmp_path: Path) -> None:
    from jobs.shard import shard_stage

    out = tmp_path / "out"
    summary = shard_stage(str(corpus["manifests"]), STAGE, str(out), corpus["cfg"], runner="local")
    got, ref = _files(out / STAGE), corpus["ref"]
    assert sorted(got) == sorted(ref) and [k for k in ref if got[k] != ref[k]] == []
    assert sorted(k for k in got if k.endswith(".tar")) == [
        "eval/000000.tar",
        "train/000000.tar",
        "train/000001.tar",
        "train/000002.tar",
    ] and {"train.json", "eval.json"} <= {Path(k).name for k in got}
    assert summary["shards_written"] == 4 and summary["shards_reused"] == 0 and not summary["failed_shards"]
    assert summary["samples_written"] == 8
    assert summary["skipped_by_reason"] == {"missing_file": 1, "no_caption": 1, "too_short": 1}


def test_the_driver_builds_no_meta_fresh_or_rerun(
    corpus: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import training.data.planning as planning
    from jobs.shard import shard_stage
    from training.data.shard_writer import SamplePlan

    built: list[int] = []
    real = planning.build_meta

    def build_meta(*a: Any, **k: Any) -> Any:
        built.append(threading.get_ident())
        return real(*a, **k)

    def no_pickle(self: Any) -> Any:
        raise AssertionError("a SamplePlan was pickled")

    monkeypatch.setattr(planning, "build_meta", build_meta)
    monkeypatch.setattr(SamplePlan, "__reduce__", no_pickle)
    out, main = tmp_path / "out", threading.get_ident()
    cfg = _config(tmp_path, progress=True)
    for run, (written, reused) in enumerate([(4, 0), (0, 4)]):
        built.clear()
        mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
        summary = shard_stage(str(corpus["manifests"]), STAGE, str(out), cfg, runner="local")
        assert (summary["shards_written"], summary["shards_reused"]) == (written, reused)
        # One meta per sample, every one in a shard task's thread, none in the driver's.
        assert len(built) == 8 and main not in built
        assert "4/4" in capsys.readouterr().err  # the progress bar counts every shard
        if run:  # the rerun left every tar alone
            assert mtimes and all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert _files(out / STAGE) == corpus["ref"]


def test_the_plan_source_ships_as_columns_and_tasks_as_rows(corpus: dict[str, Any]) -> None:
    from jobs.shard import plan_stage, read_caption_table, read_kept_table, resolve_layout
    from training.data.planning import PlanSource
    from training.data.shard_writer import group_shards, shard_tasks

    cfg = corpus["cfg"]
    root, clips_dir, captions_dir = resolve_layout(str(corpus["manifests"]))
    clips = read_kept_table(clips_dir)
    captions = read_caption_table(captions_dir, clips.column("clip_id"))
    plans, _, _ = plan_stage(clips, captions, root, STAGE, cfg, "local", clips_dir)
    shards = group_shards(plans, 2, cfg.seed)
    source, tasks = shard_tasks(shards)
    assert source.probe_of is None  # planning's probe lookup is not kept, nor shipped
    clone = pickle.loads(pickle.dumps(source, protocol=5))
    for sh, task in zip(shards, tasks, strict=True):
        assert (task.split, task.name) == (sh.split, sh.name)
        eager = [pickle.loads(pickle.dumps(p)) for p in sh.samples]  # what the driver used to send
        assert clone.plans(task.rows) == eager == source.plans(task.rows)
        blob = pickle.dumps(task)
        assert len(blob) < 600 and not any(p.key.encode() in blob for p in sh.samples)
        # A Ray task carries its own rows' columns: this shard's clips and captions, no other.
        cut = pickle.loads(pickle.dumps(task.cut(source), protocol=5))
        assert cut.source.clips.column("clip_id").to_pylist() == [p.key for p in sh.samples]
        assert cut.source.plans(cut.rows) == eager
    bare = PlanSource(source.clips, source.captions, lambda _: None, source.ctx)
    with pytest.raises(TypeError, match="probe columns"):
        pickle.dumps(bare)
    with pytest.raises(ValueError, match="lazy rows of one plan source"):
        shard_tasks(group_shards(eager, 2, cfg.seed))


def test_a_failed_shard_is_reported_then_retried_and_verify_rewrites_a_changed_tar(
    corpus: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.data.shard_writer as sw
    from jobs.shard import shard_stage

    real = sw.write_shard

    def flaky(shard: Any, *a: Any) -> Any:
        if (shard.split, shard.name) == ("train", "000000.tar"):
            raise RuntimeError("disk full")
        return real(shard, *a)

    manifests, cfg, out = str(corpus["manifests"]), corpus["cfg"], tmp_path / "out"
    monkeypatch.setattr(sw, "write_shard", flaky)
    summary = shard_stage(manifests, STAGE, str(out), cfg, runner="local")
    assert summary["failed_shards"] == ["train/000000.tar: RuntimeError: disk full"]
    assert (summary["shards_written"], summary["shards_reused"]) == (3, 0)
    rows = pq.read_table(out / STAGE / "__index__" / "samples.parquet").to_pylist()
    assert [r["status"] for r in rows if r["reason"] == "shard_failed"] == ["failed", "failed"]
    monkeypatch.setattr(sw, "write_shard", real)
    summary = shard_stage(manifests, STAGE, str(out), cfg, runner="local")
    assert (summary["shards_written"], summary["shards_reused"], summary["failed_shards"]) == (1, 3, [])
    got = _files(out / STAGE)
    # The failed run's sample table (content-named, no index names it now) is left where it was.
    (extra,) = [Path(k).name for k in got if k not in corpus["ref"]]
    assert extra.startswith("train.samples.") and extra.encode() not in got["__index__/train.json"]
    assert {k: v for k, v in got.items() if k in corpus["ref"]} == corpus["ref"]

    # Same size, other bytes: trusted without --verify, rewritten with it.
    tar = out / STAGE / "train" / "000001.tar"
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF
    tar.write_bytes(bytes(data))
    summary = shard_stage(manifests, STAGE, str(out), cfg, runner="local")
    assert (summary["shards_written"], summary["shards_reused"]) == (0, 4)
    summary = shard_stage(manifests, STAGE, str(out), cfg, runner="local", verify=True)
    assert (summary["shards_written"], summary["shards_reused"]) == (1, 3)
    assert {k: v for k, v in _files(out / STAGE).items() if k in corpus["ref"]} == corpus["ref"]


@pytest.mark.slow
def test_ray_tasks_cut_their_rows_and_a_rerun_reuses_every_shard(
    corpus: dict[str, Any], tmp_path: Path, local_ray: Any
) -> None:
    from jobs.shard import shard_stage

    out, manifests, cfg = tmp_path / "out", str(corpus["manifests"]), corpus["cfg"]
    summary = shard_stage(manifests, STAGE, str(out), cfg, runner="ray")
    assert (summary["shards_written"], summary["shards_reused"], summary["failed_shards"]) == (4, 0, [])
    assert _files(out / STAGE) == corpus["ref"]
    (out / STAGE / "eval" / "000000.tar").unlink()  # a lost shard: rewritten, the others reused
    summary = shard_stage(manifests, STAGE, str(out), cfg, runner="ray")
    assert (summary["shards_written"], summary["shards_reused"], summary["failed_shards"]) == (1, 3, [])
    assert _files(out / STAGE) == corpus["ref"]
