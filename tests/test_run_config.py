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
