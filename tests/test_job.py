"""`vjp curate` end to end on the embedded local Ray, as the README runs it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jobs.cli import main


def curate_local(source: str, out: Path) -> int:
    return main(["curate", "--runner", "local", "--no-report", "--source", source, "--out", str(out)])


@pytest.mark.slow
def test_vjp_curate_sample_on_local_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], local_ray: object
) -> None:
    out = tmp_path / "out"
    assert main(["curate", "--source", "sample:", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos_ok"] == 5 and summary["videos_error"] == 0
    assert summary["clips_kept"] == len(list((out / "clips").glob("*.mp4"))) > 0
    report = (out / "report.html").read_text()
    assert "data:image/png;base64" in report and "Contact sheet" in report
    assert report.count('class="card kept"') == summary["clips_kept"]
    # Rejected clips are shown too: frames from staging/ when extracted, else the stored thumbnail.
    card = r'class="card rejected"><img class="strip" alt="[^"]+" src="data:image/jpeg'
    rejected_cards = re.findall(card, report)
    assert len(rejected_cards) == summary["clips"] - summary["clips_kept"]


def test_vjp_decide_changes_verdicts_only(
    tmp_path: Path, corpus_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert curate_local(f"files:{corpus_dir}/cuts.mp4", out) == 0
    before = json.loads(capsys.readouterr().out)
    cfg = tmp_path / "strict.yaml"
    cfg.write_text("curate:\n  filters:\n    static_motion_max: 1.0\n")
    assert main(["decide", "--out", str(out), "--config", str(cfg)]) == 0
    after = json.loads(capsys.readouterr().out)
    assert before["clips"] == after["clips"] and after["clips_kept"] == 0
    assert after["rejected_by_reason"]["static"] >= before["rejected_by_reason"].get("static", 0) + 1


def test_exit_code_nonzero_only_when_nothing_readable(tmp_path: Path, bad_dir: Path) -> None:
    out = tmp_path / "bad"
    assert curate_local(f"files:{bad_dir}/*.mp4", out) == 0  # good.mp4 is readable
    assert curate_local(f"files:{bad_dir}/zero.mp4", tmp_path / "none") == 1


def test_bad_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("curate:\n  split:\n    detektor: adaptive\n")
    assert main(["curate", "--source", "sample:", "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    assert "split.detektor" in capsys.readouterr().err
