"""The one config file of `vjp run` and the `--set` overrides every command shares: validation
errors name the full key path, overrides are checked like the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from curation.configfile import ConfigError, apply_overrides, load_section
from jobs.cli import main
from jobs.run import caption_reason, select_steps
from jobs.run_config import load_run_config, parse_run_config
from tests.s3_fixtures import S3Env, s3, s3_server

__all__ = ["s3", "s3_server"]  # fixtures, found by name

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


@pytest.mark.parametrize("name", ["demo.yaml", "stage1.yaml", "stage2.yaml"])
def test_shipped_run_configs_validate(name: str) -> None:
    cfg, raw = load_run_config(CONFIGS / name)
    assert set(raw) == {"run", "curate", "caption", "shard", "train"}  # one file, every step
    assert cfg.run.steps == ["curate", "caption", "shard", "encode", "train"]
    for stage in cfg.run.stages:
        assert stage in cfg.shard.stages
    from training.config import parse_train_config

    assert parse_train_config(raw["train"]).steps >= 1


def test_stage_configs_match_the_seed_report() -> None:
    s1, _ = load_run_config(CONFIGS / "stage1.yaml")
    s2, _ = load_run_config(CONFIGS / "stage2.yaml")
    p1, p2 = s1.shard.stages["stage1"], s2.shard.stages["stage2"]
    assert (p1.width, p1.height, p1.frames) == (256, 256, 48)
    assert (p2.width, p2.height, p2.frames) == (848, 480, 48)
    for cfg in (s1, s2):
        assert cfg.caption.model.id == "Qwen/Qwen2-VL-7B-Instruct" and cfg.run.caption.backend == "vllm"
        assert any(s.startswith("pixabay:") for s in cfg.run.sources)
        assert any(s.startswith("finevideo:") for s in cfg.run.sources)
    # Stage 2 continues stage 1's run, and both hold out the same videos.
    assert s2.train["model"]["init_from"].endswith(s1.run.train.folder)
    assert s1.shard.split == s2.shard.split
    # The caption sections are equal, so stage 2 reuses stage 1's captions.
    assert s1.caption.content_hash() == s2.caption.content_hash()


def test_errors_of_every_section_name_their_key_path(tmp_path: Path) -> None:
    bad = {
        "run": {"out": str(tmp_path), "sources": ["sample:"], "steps": ["curate", "shard", "bogus"]},
        "curate": {"filters": {"blur_minn": 3}},
        "caption": {"qa": {"min_japanese_ratio": "high"}},
        "shard": {"stages": {"s1": {"width": 100, "height": 64}}},
        "train": {"optim": {"lr": -1}},
        "extra_section": {},
    }
    with pytest.raises(ConfigError) as e:
        parse_run_config(bad, "bad.yaml")
    msg = str(e.value)
    assert msg.startswith("invalid run config bad.yaml:")
    for path in (
        "run.steps.2",
        "curate.filters.blur_minn: unknown key",
        "caption.qa.min_japanese_ratio",
        "shard.stages.s1.width",
        "train.optim.lr",
        "extra_section: unknown key",
    ):
        assert f"  {path}" in msg, (path, msg)


def test_stage_names_are_checked_against_the_shard_section(tmp_path: Path) -> None:
    raw = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    raw["run"]["stages"] = ["stage9"]
    with pytest.raises(ConfigError, match=r"stage 'stage9' is not in shard\.stages"):
        parse_run_config(raw)


def test_run_overrides_and_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = str(CONFIGS / "demo.yaml")
    cfg, _ = load_run_config(demo, ["caption.qa.max_latin_ratio=0.3", f"run.out={tmp_path}"])
    assert cfg.caption.qa.max_latin_ratio == 0.3 and cfg.run.out == str(tmp_path)
    assert main(["run", demo, "--check", "--out", str(tmp_path)]) == 0
    assert main(["run", demo, "--check", "--set", "caption.frames.fps=fast"]) == 2
    assert "caption.frames.fps" in capsys.readouterr().err
    assert main(["run", demo, "--check", "--steps", "caption,cook"]) == 2
    assert "cook" in capsys.readouterr().err


def test_select_steps_keeps_pipeline_order() -> None:
    cfg, _ = load_run_config(CONFIGS / "demo.yaml")
    assert select_steps(cfg, "train,curate") == ["curate", "train"]
    assert select_steps(cfg, None) == cfg.run.steps


def test_caption_reason_is_the_first_failure_without_threshold() -> None:
    assert caption_reason("garbled;truncated;japanese_ratio<0.7") == "garbled"
    assert caption_reason("too_short<60") == "too_short"
    assert caption_reason(None) == "unknown"


# ---- --set on every command ------------------------------------------------------------------
def test_apply_overrides_nests_parses_yaml_and_strips_the_section() -> None:
    data = {"stages": {"stage1": {"crf": 18}}}
    out = apply_overrides(
        data, ["shard.stages.stage1.crf=20", "runner.progress=false", "split.salt=x"], "shard"
    )
    assert out == {"stages": {"stage1": {"crf": 20}}, "runner": {"progress": False}, "split": {"salt": "x"}}
    assert data["stages"]["stage1"]["crf"] == 18  # the input is not modified
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match=r"stages\.stage1 is not a mapping"):
        apply_overrides({"stages": {"stage1": 3}}, ["stages.stage1.crf=2"])


def test_load_section_applies_overrides_to_the_file(tmp_path: Path) -> None:
    from training.data.stages import parse_config

    cfg = parse_config(*load_section(CONFIGS / "shard.yaml", "shard", ["stages.stage1.crf=20"]))
    assert cfg.stages["stage1"].crf == 20 and cfg.stages["stage2"].crf == 18


SET_CASES = [
    ("curate --source sample: --out {tmp}/c --set filters.blur_min=sharp", "filters.blur_min"),
    ("decide --out {tmp}/c --set filters.nope=1", "filters.nope"),
    ("caption --clips {tmp}/m --set frames.fps=x", "frames.fps"),
    ("shard --clips {tmp}/m --stage stage1 --out {tmp}/s --set stages.stage1.crf=x", "stages.stage1.crf"),
    ("encode --shards {tmp}/s/stage1 --out {tmp}/l --set encode.text_max_length=0", "encode.text_max_length"),
]


@pytest.mark.parametrize(("argv", "path"), SET_CASES)
def test_every_command_takes_set_and_reports_the_key_path(
    argv: str, path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv.replace("{tmp}", str(tmp_path)).split()) == 2
    err = capsys.readouterr().err
    assert path in err and "with --set overrides" in err
    assert not (tmp_path / "c").exists()  # nothing ran


# ---- OUT on object storage: where things go, storage options, copies ------------------------
def test_run_storage_options_refuse_credentials_and_local_is_not_a_url() -> None:
    raw = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    raw["run"].update(out="s3://bucket/demo", storage_options={"client_kwargs": {"endpoint_url": "http://x"}})
    assert parse_run_config(raw).run.storage_options == {"client_kwargs": {"endpoint_url": "http://x"}}
    for bad in ({"secret": "s"}, {"client_kwargs": {"aws_secret_access_key": "s"}}, {"token": "t"}):
        raw["run"]["storage_options"] = bad
        with pytest.raises(ConfigError, match=r"run\.storage_options.*credentials do not belong"):
            parse_run_config(raw)
    raw["run"].update(storage_options={}, local="s3://bucket/local")
    with pytest.raises(ConfigError, match="local must be a local folder"):
        parse_run_config(raw)


def test_run_paths_keep_everything_in_a_local_out_and_split_a_bucket_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs.run_paths import RunPaths

    local = RunPaths.of(str(tmp_path / "out"), str(tmp_path / "ignored"), "train")
    assert local.local == local.out == str(tmp_path / "out") and not local.remote
    assert local.train_dir == local.train_results == str(tmp_path / "out" / "train")
    assert local.models_dir == str(tmp_path / "out" / "models")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bucket = RunPaths.of("s3://bkt/a/../runs/x/", None, "train")
    assert (
        bucket.remote
        and bucket.out == "s3://bkt/a/../runs/x"
        and bucket.shards_root == f"{bucket.out}/shards"
    )
    # the default local folder is named after the URL and never escapes the cache folder
    assert bucket.local == str(tmp_path / "cache" / "videojp" / "runs" / "s3" / "bkt" / "a" / "runs" / "x")
    assert bucket.train_dir == f"{bucket.local}/train" and bucket.train_results == f"{bucket.out}/train"
    absolute = RunPaths.of("s3://bkt/x", str(tmp_path / "l"), str(tmp_path / "shared" / "run1"))
    assert absolute.train_dir == str(tmp_path / "shared" / "run1")
    assert absolute.train_results == "s3://bkt/x/train"


def test_install_storage_options_reaches_this_process_and_its_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json
    import subprocess
    import sys

    import fsspec.config

    from jobs.run_paths import install_storage_options

    monkeypatch.setitem(fsspec.config.conf, "s3", {"anon": False})
    monkeypatch.setenv("FSSPEC_S3", json.dumps({"requester_pays": True}))
    so = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}
    assert install_storage_options("/local/out", so) == {}  # a local OUT: nothing to set
    env = install_storage_options("s3://b/p", so)
    assert json.loads(env["FSSPEC_S3"]) == {"requester_pays": True, **so}  # merged with what was there
    assert fsspec.config.conf["s3"] == {"anon": False, **so}
    child = subprocess.run(
        [sys.executable, "-c", "import fsspec.config, json; print(json.dumps(fsspec.config.conf.get('s3')))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(child.stdout) == {"requester_pays": True, **so}


def test_publish_uploads_a_folder_and_download_fetches_it_back(s3: S3Env, tmp_path: Path) -> None:
    from jobs.run_paths import publish
    from training.data.store import download

    src = tmp_path / "run"
    files = {"summary.json": b"{}", "samples/step_1/a.mp4": b"AAA", "checkpoints/x": b"state"}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    (src / ".summary.json.tmp-1").write_bytes(b"half")  # a killed writer's temporary
    url = s3.bucket("sync") + "/out"
    assert publish(str(src), url + "/train", skip=("checkpoints",)) == 2
    fs = s3.fs()
    assert sorted(p.split("/out/")[1] for p in fs.find(url.removeprefix("s3://"))) == [
        "train/samples/step_1/a.mp4", "train/summary.json"
    ]  # fmt: skip

    dest = tmp_path / "copy"
    assert download(url + "/train", str(dest)) == 2
    assert (dest / "samples" / "step_1" / "a.mp4").read_bytes() == b"AAA"
    assert (dest / "summary.json").read_bytes() == b"{}"
    assert download(url + "/missing", str(tmp_path / "none")) == 0
    # an object whose name climbs out of the folder is refused before anything is fetched
    fs.pipe_file(url.removeprefix("s3://") + "/evil/../../x", b"x")
    assert fs.find(url.removeprefix("s3://") + "/evil")  # S3 keeps the raw key
    with pytest.raises(ValueError, match="escapes"):
        download(url + "/evil", str(tmp_path / "evil"))
    assert not (tmp_path / "x").exists()
