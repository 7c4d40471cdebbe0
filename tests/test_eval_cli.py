"""`vjp eval` end to end: a tiny trained checkpoint, a tiny eval split, random-weight I3D at 32 px.

Skips (with the reason) only while the sampler of issue 7 (training.sample, tests/train_fixtures)
is not in the tree; everything else fails loudly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:
    import training.sample  # noqa: F401
    from tests.train_fixtures import make_tiny_checkpoint, make_tiny_shards
except ModuleNotFoundError as e:  # only the sampler's absence may skip: any other import error fails
    if e.name not in ("training.sample", "tests.train_fixtures"):
        raise
    pytest.skip(f"{e.name} (the sampler, issue 7) is not in the tree yet", allow_module_level=True)

from jobs.cli import main
from tests.test_shards import cli
from training.data.sample_format import decode_mp4, read_index

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMOKE = [
    "--set",
    "fvd.allow_random_weights=true",
    "--set",
    "fvd.resolution=32",
    "--set",
    "report.videos=3",
    "--set",
    "fvd.bootstrap=20",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    ckpt = make_tiny_checkpoint(root / "ck")
    data = make_tiny_shards(root / "ev", n=8, eval_fraction=1.0)  # every video held out
    return {"root": root, "ckpt": ckpt, "shards": data["shards"]}


def _eval(tiny: dict[str, Path], out: Path, *extra: str, num: int = 6) -> int:
    argv = ["--ckpt", str(tiny["ckpt"]), "--shards", str(tiny["shards"]), "--out", str(out)]
    return cli([*argv, "--num", str(num), *SMOKE, *extra], "jobs.eval")


def _metrics(out: Path) -> dict[str, Any]:
    import jsonschema

    m = json.loads((out / "metrics.json").read_text())
    schema = json.loads((REPO / "schemas" / "eval_metrics.v2.schema.json").read_text())
    jsonschema.validate(m, schema)
    return m


def _prompts(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def first_run(tiny: dict[str, Path]) -> dict[str, Any]:
    out = tiny["root"] / "EVAL"
    assert _eval(tiny, out) == 0
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "generated").glob("*.mp4")}
    return {"out": out, "metrics": _metrics(out), "mtimes": mtimes}


def test_writes_n_videos_prompts_metrics_and_report(tiny: dict[str, Path], first_run: dict[str, Any]) -> None:
    out, m = first_run["out"], first_run["metrics"]
    index = read_index(tiny["shards"] / "__index__" / "eval.json")
    rows = _prompts(out)
    assert len(rows) == 6 == m["n"] and len(first_run["mtimes"]) == 6
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == 6
    captions = {}
    for shard in index.shards:  # every prompt is the held-out sample's own Japanese caption
        import tarfile

        with tarfile.open(tiny["shards"] / "eval" / shard.name) as tf:
            for member in tf.getmembers():
                if member.name.endswith(".txt"):
                    captions[member.name.split(".")[0]] = tf.extractfile(member).read().decode()
    assert all(r["prompt"] == captions[r["key"]] for r in rows)
    assert len({r["seed"] for r in rows}) == 6
    for r in rows:  # generated at the stage's size and frames
        video = decode_mp4((out / r["file"]).read_bytes())
        assert video.shape == (index.frames, index.height, index.width, 3)
    assert m["protocol"] == ["fvd16", "stage"] and set(m["fvd"]) == {"fvd16", "stage"}
    f16 = m["fvd"]["fvd16"]
    assert f16["preset"]["frames"] == 16 and f16["preset"]["resolution"] == 32
    assert f16["preset"]["standard"] is False and any("non-standard" in n for n in f16["notes"])
    assert m["fvd"]["stage"]["preset"]["frames"] == index.frames
    assert f16["n_generated"] == f16["n_real"] == 6 and f16["baseline_vs_real"] is None
    g = f16["generated_vs_real"]
    assert g["value"] > 0 and 0 <= g["low"] <= g["value"] <= g["high"] and g["level"] == 0.95
    # 8 held-out samples cannot give a second set of 6: no reference, and the notes say why.
    assert f16["real_vs_real"] is None and f16["n_reference"] == 0
    assert any("needs 2N = 12" in n for n in f16["notes"])
    assert m["checkpoint_step"] == 2 and m["stage"] == "tiny"
    assert m["real_set"]["kind"] == "shards" and m["real_set"]["split"] == "eval"
    assert m["real_set"]["available"] == 8
    assert m["feature_network"]["random_weights"] is True and m["feature_network"]["resolution"] == 32
    assert m["sampler"]["frames"] == 16 and m["sampler"]["steps"] >= 1
    assert m["generated"] == {"written": 6, "reused": 0, "failed": {}}
    page = (out / "report.html").read_text()
    assert page.count("data:image/jpeg;base64") == 6  # 3 rows x (generated, real)
    assert rows[0]["prompt"] in page and "random weights" in page
    assert "preset fvd16" in page and "preset stage" in page and "95% CI" in page
    assert {p.name for p in (out / "features").glob("*.npz")} == {
        f"{s}.{p}.npz" for s in ("real", "generated") for p in ("fvd16", "stage")
    }


def test_rerun_reuses_videos_and_regenerates_only_what_is_missing(
    tiny: dict[str, Path], first_run: dict[str, Any]
) -> None:
    out = first_run["out"]
    assert _eval(tiny, out) == 0
    m = _metrics(out)
    assert m["generated"]["written"] == 0 and m["generated"]["reused"] == 6
    assert {p.name: p.stat().st_mtime_ns for p in (out / "generated").glob("*.mp4")} == first_run["mtimes"]
    assert m["fvd"] == first_run["metrics"]["fvd"]  # same videos, same features, same numbers

    victim_row = _prompts(out)[1]
    victim = out / victim_row["file"]
    victim.unlink()
    # One missing, one more asked for: two generated, together in one batch of another size.
    assert _eval(tiny, out, "--set", "generate.batch_size=3", num=7) == 0
    m = _metrics(out)
    assert m["generated"]["written"] == 2 and m["generated"]["reused"] == 5 and m["n"] == 7
    # Same seed, same frames (compared before encoding: x264 itself is not bit-reproducible).
    again = {r["key"]: r for r in _prompts(out)}[victim_row["key"]]
    assert again["frames_sha256"] == victim_row["frames_sha256"] and victim.exists()
    assert [r["key"] for r in _prompts(out)][:6] == [r["key"] for r in _prompts(first_run["out"])][:6]


def test_a_video_does_not_depend_on_its_batch_or_the_thread_count(tiny: dict[str, Path]) -> None:
    """Per-video forward passes under a pinned thread count: the same pixels in any batch, whatever
    torch's thread count was before (batched forwards differ in the last bits on the CPU)."""
    import torch

    from training.eval.generate import Job, generate_videos
    from training.sample import Sampler

    sampler = Sampler.from_checkpoint(str(tiny["ckpt"]), device="cpu")
    jobs = [Job(f"k{i}", p, 100 + i) for i, p in enumerate(["夕暮れの海辺", "森の小川", "夜の街の電車"])]
    kwargs = {"steps": 2, "frames": 16, "height": 32, "width": 32}
    before = torch.get_num_threads()
    together = generate_videos(sampler, jobs, kwargs, threads=1)
    assert torch.get_num_threads() == before  # restored
    torch.set_num_threads(2)
    try:
        alone = [generate_videos(sampler, [j], kwargs, threads=1)[0] for j in reversed(jobs)][::-1]
    finally:
        torch.set_num_threads(before)
    assert all(np.array_equal(a, b) for a, b in zip(together, alone, strict=True))
    assert not np.array_equal(together[0], together[1])  # the seeds and prompts do matter


def test_baseline_folder_and_alignment_proxy(tiny: dict[str, Path], first_run: dict[str, Any]) -> None:
    from tests.test_eval_align import build_tiny_clip
    from training.sample import write_mp4

    out, baseline = tiny["root"] / "EVAL_B", tiny["root"] / "baseline"
    shutil.copytree(first_run["out"] / "generated", out / "generated")
    shutil.copy(first_run["out"] / "prompts.jsonl", out / "prompts.jsonl")
    baseline.mkdir()
    rows = _prompts(first_run["out"])[:6]
    for row in rows:  # the 6 eval keys, named <key>.mp4
        shutil.copy(first_run["out"] / row["file"], baseline)
    # One baseline clip at 4 fps with 8 frames (like a model that writes short, low-fps clips).
    short_key = rows[2]["key"]
    video = decode_mp4((baseline / f"{short_key}.mp4").read_bytes())
    write_mp4(video[::2], str(baseline / f"{short_key}.mp4"), 4.0)
    (baseline / "broken.mp4").write_bytes(b"not a video")
    (baseline / ".hidden.mp4").write_bytes(b"")
    clip = build_tiny_clip(tiny["root"] / "tiny-clip")
    extra = ["--baseline-dir", str(baseline), "--set", "align.enabled=true", "--set", f"align.model={clip}"]
    assert _eval(tiny, out, *extra) == 0
    m = _metrics(out)
    assert m["generated"]["reused"] == 6  # copied videos and prompts are reused, not regenerated
    for preset in ("fvd16", "stage"):
        f = m["fvd"][preset]
        # The short clip is left out (not padded) and listed; the other 5 are the generated videos.
        assert f["n_baseline"] == 5 and f["left_out_short"] == {"baseline": 1}
        assert f["baseline_vs_real"]["value"] > 0
        base = np.load(out / "features" / f"baseline.{preset}.npz")
        gen = np.load(out / "features" / f"generated.{preset}.npz")
        gen_by_key = dict(zip(gen["keys"], gen["features"], strict=True))
        assert short_key not in set(base["keys"]) and len(base["keys"]) == 5
        for k, feat in zip(base["keys"], base["features"], strict=True):  # same videos, same features
            assert np.allclose(feat, gen_by_key[k], rtol=1e-5, atol=1e-6)
    assert any(
        short_key in e and "has 8 frames, preset fvd16 needs 16" in e and "not padded" in e
        for e in m["errors"]
    )
    b = m["baseline"]
    assert (b["dir"], b["files"], b["n"], b["matched_by_key"]) == (str(baseline), 7, 6, True)
    assert b["unmatched_files"] == 1  # broken.mp4 is no eval key: left out, never decoded
    assert b["fps"] == {"8": 5, "4": 1} and b["sizes"] == {"32x32": 6}
    assert b["frames"] == {"min": 8, "median": 16, "max": 16}
    assert b["resample_fps"] is False and b["crop_aspect"] is False
    per_video = [json.loads(x) for x in (out / b["videos_file"]).read_text().splitlines()]
    assert {r["key"]: (r["fps"], r["frames"]) for r in per_video}[short_key] == (4.0, 8)
    a = m["alignment"]
    assert a["label"] == "CLIP proxy, not the seed's human study"
    assert a["n"] == 6 and -1 <= a["generated"] <= 1 and -1 <= a["real"] <= 1
    # 5 identical videos tie; the changed one decides the single counted pair.
    assert a["pairs"] == 6 and a["ties"] == 5 and a["wins"] in (0, 1)
    share = a["win_share_vs_baseline"]
    assert share["value"] == a["wins"] and share["low"] < share["high"]  # n = 1: a wide Wilson interval
    page = (out / "report.html").read_text()
    assert page.count("data:image/jpeg;base64") == 9  # + baseline column
    assert "alignment (CLIP proxy, not the seed&#x27;s human study)" in page


def test_ray_sampler_actors_make_the_same_videos(
    tiny: dict[str, Path], first_run: dict[str, Any], local_ray: Any
) -> None:
    out = tiny["root"] / "EVAL_RAY"
    assert _eval(tiny, out, "--runner", "ray", "--set", "generate.workers=1") == 0
    m = _metrics(out)
    assert m["generated"]["written"] == 6 and m["config"]["generate"]["runner"] == "ray"
    ray_rows = {r["key"]: r for r in _prompts(out)}
    for row in _prompts(first_run["out"])[:6]:  # the same frames, compared before encoding
        assert ray_rows[row["key"]]["frames_sha256"] == row["frames_sha256"], row["key"]
        assert (out / row["file"]).exists()


def test_an_external_eval_folder_with_its_prompts_and_the_reference_at_the_same_n(
    tiny: dict[str, Path], first_run: dict[str, Any], tmp_path: Path
) -> None:
    """--real-dir/--prompts: the first run's 6 generated videos plus 2 mirrored ones as a published
    eval set of 8. N = 4, so the other 4 are the real-vs-real reference. A chosen key of the first
    run is generated again from its own prompt and seed (reused here): the same file on both
    sides, so its real and generated features are equal."""
    from training.sample import write_mp4

    real = tmp_path / "EVALSET"
    (real / "clips").mkdir(parents=True)
    rows = _prompts(first_run["out"])[:6]
    lines = []
    for r in rows:
        shutil.copy(first_run["out"] / r["file"], real / "clips")
        lines.append(json.dumps({"file": f"clips/{r['key']}.mp4", "prompt": r["prompt"]}, ensure_ascii=False))
    for i, r in enumerate(rows[:2]):
        video = decode_mp4((first_run["out"] / r["file"]).read_bytes())[:, :, ::-1]
        write_mp4(np.ascontiguousarray(video), str(real / "clips" / f"x{i}.mp4"), 8.0)
        lines.append(
            json.dumps({"file": f"clips/x{i}.mp4", "caption": r["prompt"] + "(鏡)"}, ensure_ascii=False)
        )
    lines += [
        json.dumps({"file": "../../etc/passwd", "prompt": "外"}),
        json.dumps({"file": "clips/none.mp4", "prompt": "無"}),
        "not json",
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "EVAL_DIR"
    shutil.copytree(first_run["out"] / "generated", out / "generated")
    argv = [
        "--ckpt",
        str(tiny["ckpt"]),
        "--real-dir",
        str(real),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
    ]
    assert cli([*argv, "--num", "4", *SMOKE], "jobs.eval") == 0
    m = _metrics(out)
    assert m["real_set"]["kind"] == "dir" and m["real_set"]["available"] == 8
    assert (
        m["real_set"]["n_reference"] == 4 and m["stage"] == "checkpoint" and m["stage_size"]["frames"] == 16
    )
    assert m["generated"]["reused"] + m["generated"]["written"] == 4
    f = m["fvd"]["fvd16"]
    assert f["n_real"] == f["n_generated"] == f["n_reference"] == 4 and f["real_vs_real"]["value"] > 0
    real_f = np.load(out / "features" / "real.fvd16.npz")
    gen_f = dict(
        zip(
            *(np.load(out / "features" / "generated.fvd16.npz")[k] for k in ("keys", "features")), strict=True
        )
    )
    reused = [k for k in real_f["keys"] if k in {r["key"] for r in rows}]
    for k, feat in zip(real_f["keys"], real_f["features"], strict=True):
        if k in reused:
            assert np.allclose(feat, gen_f[k], rtol=1e-5, atol=1e-6), k
    assert len(reused) == m["generated"]["reused"]
    errors = "\n".join(m["errors"])
    assert "../../etc/passwd: outside" in errors and "none.mp4: no such video" in errors
    assert ":11: unreadable row" in errors


def test_bad_config_and_missing_inputs_exit_2(tiny: dict[str, Path], tmp_path: Path) -> None:
    base = ["eval", "--ckpt", str(tiny["ckpt"]), "--shards", str(tiny["shards"]), "--out", str(tmp_path)]
    assert main([*base, "--set", "fvd.bogus=1"]) == 2
    assert main([*base, "--set", "fvd.weights=" + str(tmp_path / "none.pt")]) == 2
    missing = ["eval", "--ckpt", str(tmp_path / "no-run"), "--shards", str(tiny["shards"])]
    assert main([*missing, "--out", str(tmp_path), *SMOKE]) == 2
    assert main([*base, "--sources", "finevideo", *SMOKE]) == 2  # the tiny set is all Pixabay
    no_real = ["eval", "--ckpt", str(tiny["ckpt"]), "--out", str(tmp_path), *SMOKE]
    assert main(no_real) == 2 and main([*no_real, "--real-dir", str(tmp_path)]) == 2


def test_the_run_report_shows_the_evaluation(
    tiny: dict[str, Path], first_run: dict[str, Any], tmp_path: Path
) -> None:
    import shutil

    from jobs.report import write_report

    out = tmp_path / "OUT"
    out.mkdir()
    assert "Evaluation" not in Path(write_report(str(out))).read_text()  # no eval, no section
    shutil.copytree(first_run["out"], out / "eval")  # where `vjp eval --out OUT/eval` writes
    page = Path(write_report(str(out))).read_text()
    assert '<section class="vjp-eval">' in page and "FVD generated vs real" in page and "preset fvd16" in page
    caption = _prompts(first_run["out"])[0]["prompt"]
    assert f'class="cap ja" lang="ja">{caption}' in page  # captions in the report's Japanese font
