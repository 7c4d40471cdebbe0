"""The demo corpus through the whole pipeline (`vjp run jobs/configs/demo.yaml`): wall and CPU
seconds per step and the share of the run each step takes, then the same command again on the
finished output (what a resume of a done run costs).

    .venv/bin/python benchmarks/run_bench.py [--config jobs/configs/demo.yaml] [--out DIR] [--keep]

The steps do not stream into each other (README: why), so the run's wall time is the sum of its
steps plus start-up. The last lines bound what streaming could win on this corpus: the most that
overlapping two neighbouring steps could save is the shorter one's wall time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(config: str, out: Path) -> tuple[float, float, dict]:
    """(wall s, CPU s of the whole process tree, steps.json) of one `vjp run`."""
    t0 = time.perf_counter()
    before = os.times()
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "run", config, "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode != 0:
        sys.exit(f"vjp run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    # Children's CPU (the vjp process and everything it waited for, Ray's workers included once
    # Ray has shut down with it).
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, json.loads((out / "run" / "steps.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "jobs" / "configs" / "demo.yaml"))
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the output folder")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="vjp-run-bench-")) / "out"
    if out.exists():
        shutil.rmtree(out)
    try:
        wall, cpu, steps = run(args.config, out)
        total_steps = sum(s["wall_s"] for s in steps.values())
        print(f"{'step':8s} {'wall s':>8s} {'CPU s':>8s} {'CPU/wall':>9s} {'share':>7s}  summary")
        for name, s in steps.items():
            print(
                f"{name:8s} {s['wall_s']:8.1f} {s['cpu_s']:8.1f} {s['cpu_s'] / max(s['wall_s'], 1e-9):9.2f} "
                f"{100 * s['wall_s'] / wall:6.1f}%  {s['line'][:90]}"
            )
        print(f"{'steps':8s} {total_steps:8.1f} {sum(s['cpu_s'] for s in steps.values()):8.1f}")
        print(
            f"{'run':8s} {wall:8.1f} {cpu:8.1f} {cpu / wall:9.2f}  "
            f"(start-up, Ray, report: {wall - total_steps:.1f} s)"
        )
        names = list(steps)
        best = max(
            (min(steps[a]["wall_s"], steps[b]["wall_s"]), f"{a}+{b}") for a, b in itertools.pairwise(names)
        )
        print(
            f"streaming bound: overlapping {best[1]} perfectly would save at most {best[0]:.1f} s "
            f"= {100 * best[0] / wall:.1f}% of the run's wall time"
        )
        rerun_wall, rerun_cpu, _ = run(args.config, out)
        print(
            f"rerun of the finished run: {rerun_wall:.1f} s wall, {rerun_cpu:.1f} s CPU "
            f"({rerun_wall / wall:.2f} x the first run)"
        )
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
