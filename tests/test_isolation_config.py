from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from curation.config import ConfigError, CurateConfig, load_config, parse_config
from curation.ids import clip_id, video_id
from curation.isolate import IsolatedError, run_isolated


def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _sleep(s: float) -> str:
    time.sleep(s)
    return "woke"


def _raise() -> None:
    raise ValueError("bad packet")


def test_crash_costs_one_call() -> None:
    with pytest.raises(IsolatedError, match="crashed \\(SIGSEGV\\)"):
        run_isolated(_segfault)
    assert run_isolated(_sleep, 0.0) == "woke"  # the parent is fine and can go on


def test_hang_is_a_timeout() -> None:
    with pytest.raises(IsolatedError, match="timed out"):
        run_isolated(_sleep, 30.0, timeout=1.0)


def test_exception_message_travels() -> None:
    with pytest.raises(IsolatedError, match="ValueError: bad packet"):
        run_isolated(_raise)


def test_unknown_key_names_its_path(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("curate:\n  filters:\n    blur_minimum: 3\n")
    with pytest.raises(ConfigError, match=r"filters\.blur_minimum"):
        load_config(p)


def test_bad_value_names_its_path() -> None:
    with pytest.raises(ConfigError, match=r"split\.max_clip_s"):
        parse_config({"split": {"max_clip_s": "ten"}})
    with pytest.raises(ConfigError, match=r"max_clip_s must be >= min_clip_s"):
        parse_config({"split": {"min_clip_s": 5, "max_clip_s": 3}})


def test_shipped_yaml_equals_defaults() -> None:
    shipped = load_config(Path(__file__).parents[1] / "jobs" / "configs" / "curate.yaml")
    assert shipped == CurateConfig()


def test_hashes_separate_scores_from_decisions() -> None:
    a = CurateConfig()
    b = parse_config({"filters": {"blur_min": 1.0}})
    c = parse_config({"analysis": {"score_fps": 4.0}})
    assert a.analysis_hash == b.analysis_hash and a.decision_hash != b.decision_hash
    assert a.analysis_hash != c.analysis_hash


def test_ids_stable_and_safe() -> None:
    v = video_id("files", "a/b.mp4")
    assert v == video_id("files", "a/b.mp4") != video_id("files", "a/c.mp4")
    cid = clip_id(v, 10, 250)
    assert "." not in cid and cid.startswith(v)
    assert cid != clip_id(v, 10, 251)
