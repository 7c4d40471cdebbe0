"""`vjp run jobs/configs/demo.yaml` as the README runs it, twice: once straight through, once
killed with SIGKILL in several steps and rerun until done. Shared by the run and report tests
(one pair of runs per test session)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "jobs" / "configs" / "demo.yaml"
RUN_TIMEOUT_S = 900


def vjp_run(out: Path) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "run", str(DEMO), "--out", str(out)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray per run
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _end_group(proc: subprocess.Popen) -> None:
    """Ray's agents outlive a driver killed with SIGKILL: end the process group the run started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_until(out: Path, log: Path, trigger: Callable[[], bool] | None) -> tuple[int | None, bool]:
    """Run the demo; SIGKILL its driver as soon as `trigger()` holds. (returncode, killed)."""
    return run_command(vjp_run(out), log, trigger)


def run_command(
    cmd: list[str], log: Path, trigger: Callable[[], bool] | None = None, env: dict[str, str] | None = None
) -> tuple[int | None, bool]:
    """Run a `vjp run` command line; SIGKILL its driver as soon as `trigger()` holds, then end its
    process group. (returncode, killed)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env or _env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        t0 = time.monotonic()
        try:
            while proc.poll() is None:
                if trigger is not None and trigger():
                    proc.send_signal(signal.SIGKILL)  # the driver only, as the OOM killer would
                    proc.wait()
                    return None, True
                if time.monotonic() - t0 > RUN_TIMEOUT_S:
                    proc.kill()
                    raise TimeoutError(f"vjp run did not finish in {RUN_TIMEOUT_S} s; see {log}")
                time.sleep(0.1)
            return proc.returncode, False
        finally:
            _end_group(proc)
            time.sleep(0.5)


def tail(log: Path, n: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


@dataclass
class DemoRuns:
    reference: Path  # uninterrupted
    resumed: Path  # killed with SIGKILL and rerun, at the path the reference ran at
    kills: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)


_CACHE: dict[str, DemoRuns] = {}


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> DemoRuns:
    # Each test module that imports this fixture gets its own copy of the definition, and pytest
    # keys session fixtures by definition: the cache makes them one pair of runs per session.
    if "runs" not in _CACHE:
        _CACHE["runs"] = _make_demo_runs(tmp_path_factory)
    return _CACHE["runs"]


def _make_demo_runs(tmp_path_factory: pytest.TempPathFactory) -> DemoRuns:
    base = tmp_path_factory.mktemp("demo")
    out = base / "out"
    ref_log = base / "reference.log"
    rc, _ = run_until(out, ref_log, None)
    assert rc == 0, tail(ref_log)
    # Paths inside manifests and shards (the tiny captioner's folder is the caption model id) are
    # absolute: the interrupted run runs at the same path, so both must agree byte for byte.
    reference = base / "reference"
    out.rename(reference)

    triggers: list[tuple[str, Callable[[], bool]]] = [
        ("curate", lambda: len(list((out / "manifests" / "videos").glob("*.parquet"))) >= 2),
        ("caption", lambda: any((out / "manifests" / "captions").glob("*.parquet"))),
        ("train", lambda: (out / "train" / "checkpoints" / "step_000003").is_dir()),
    ]
    runs = DemoRuns(reference, out, logs=[ref_log])
    for name, trigger in triggers:
        log = base / f"killed-in-{name}.log"
        runs.logs.append(log)
        rc, killed = run_until(out, log, trigger)
        if killed:
            runs.kills.append(name)
        elif rc == 0:
            break  # finished before the trigger (a fast machine): nothing left to interrupt
        else:
            pytest.fail(f"run before the {name} kill failed:\n{tail(log)}")
    log = base / "resumed.log"
    runs.logs.append(log)
    rc, _ = run_until(out, log, None)
    assert rc == 0, tail(log)
    return runs
