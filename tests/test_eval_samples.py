"""Eval sample choice and reading: seeded, order-free, prefix-stable; bad shards are named, not fatal."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_shards import JA, make_clips, shard_local, write_clip, write_config
from training.data.loader import resolve_shards
from training.eval.evaluate import baseline_files, baseline_videos
from training.eval.samples import EvalSample, choose, iter_real_videos, read_samples, sample_seed


def _samples(n: int) -> list[EvalSample]:
    return [EvalSample(f"k{i:03d}", f"caption {i}", "s.tar", 16, 32, 32, 8.0) for i in range(n)]


def test_choice_is_seeded_order_free_and_prefix_stable() -> None:
    pool = _samples(50)
    a = [s.key for s in choose(pool, 10, seed=0)]
    assert a == [s.key for s in choose(list(reversed(pool)), 10, seed=0)]  # shard order does not matter
    assert a != [s.key for s in choose(pool, 10, seed=1)]
    assert [s.key for s in choose(pool, 20, seed=0)][:10] == a  # more samples extend the same draw
    assert len({*a}) == 10 and len(choose(pool, 500, seed=0)) == 50


def test_sources_filter_keeps_only_the_named_sources() -> None:
    from training.eval.samples import by_source

    pool = [
        EvalSample(f"k{i}", "c", "s.tar", 16, 32, 32, 8.0, ["pixabay", "finevideo"][i % 2]) for i in range(6)
    ]
    assert [s.key for s in by_source(pool, ["Pixabay"])] == ["k0", "k2", "k4"]
    assert by_source(pool, None) == pool and by_source(pool, ["other"]) == []


def test_per_sample_seeds_depend_on_seed_and_key_only() -> None:
    assert sample_seed(0, "abc") == sample_seed(0, "abc")
    assert len({sample_seed(0, f"k{i}") for i in range(100)}) == 100
    assert sample_seed(0, "abc") != sample_seed(1, "abc")
    assert all(0 <= sample_seed(s, "abc") < 2**31 for s in range(20))


@pytest.fixture(scope="module")
def eval_stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("evalsamples")
    specs = [
        {
            "clip_id": f"v{i}_{i:07d}_{i + 30:07d}",
            "video_id": f"v{i}",
            "caption": JA[i % len(JA)],
            "frames": 24,
            "fps": 8,
        }
        for i in range(5)
    ]
    stages = {
        "tiny": {
            "width": 32,
            "height": 32,
            "frames": 16,
            "fps": 8.0,
            "max_shard_samples": 2,
            "target_shard_bytes": None,
        }
    }
    config = write_config(
        tmp / "c.yaml", stages, captions={"fallback": "source_caption"}, split={"eval_fraction": 1.0}
    )
    assert shard_local(make_clips(tmp / "cur", specs), "tiny", tmp / "shards", config) == 0
    return tmp / "shards" / "tiny"


def test_reads_captions_then_streams_the_chosen_videos(eval_stage: Path) -> None:
    urls, index = resolve_shards(eval_stage, "eval")
    assert index is not None and len(urls) == 3
    samples, errors = read_samples(urls)
    assert errors == [] and len(samples) == 5
    assert {s.caption for s in samples} <= set(JA) and all(s.frames == 16 for s in samples)
    chosen = choose(samples, 3, seed=0)
    got = list(iter_real_videos(chosen, errors))
    assert sorted(s.key for s, _ in got) == sorted(s.key for s in chosen) and errors == []
    assert all(v.shape == (16, 32, 32, 3) for _, v in got)


def test_a_broken_shard_is_named_and_the_rest_is_read(eval_stage: Path, tmp_path: Path) -> None:
    urls, _ = resolve_shards(eval_stage, "eval")
    bad = tmp_path / "000009.tar"
    bad.write_bytes(Path(urls[0]).read_bytes()[:700])  # cut inside the first member
    samples, errors = read_samples([str(bad), *urls[1:]])
    assert len(samples) == 3 and len(errors) == 1 and "000009.tar" in errors[0]
    lost = [EvalSample("nope", "x", urls[1], 16, 32, 32, 8.0)]
    assert list(iter_real_videos(lost, errors)) == []
    assert any("nope" in e and "no mp4 member" in e for e in errors)


def test_baseline_folder_lists_videos_and_names_the_ones_that_do_not_decode(tmp_path: Path) -> None:
    write_clip(tmp_path / "k1.mp4", 32, 32, 12)
    (tmp_path / "k2.mp4").write_bytes(b"not a video")
    (tmp_path / ".k3.mp4.tmp-1.mp4").write_bytes(b"")  # a writer's temporary
    (tmp_path / "notes.txt").write_text("x")
    files = baseline_files(str(tmp_path))
    assert [Path(f).name for f in files] == ["k1.mp4", "k2.mp4"]
    errors: list[str] = []
    got = list(baseline_videos(files, {"k1": "夜の街"}, errors))
    assert [(it.key, it.prompt, it.video.shape) for it in got] == [("k1", "夜の街", (12, 32, 32, 3))]
    assert got[0].fps == pytest.approx(24.0) and got[0].origin.endswith("k1.mp4")  # the rate as read
    assert len(errors) == 1 and "k2.mp4" in errors[0] and "does not decode" in errors[0]
    with pytest.raises(FileNotFoundError, match="baseline folder"):
        baseline_files(str(tmp_path / "nope"))
