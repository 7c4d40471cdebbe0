"""The cluster launchers (KubeRay RayJob, Slurm batch script) name an entrypoint and a config
that exist, and the config validates."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from jobs.run_config import load_run_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "jobs" / "deploy"


def _entrypoint(cmd: list[str]) -> Path:
    """`vjp run CONFIG`: the console script exists and CONFIG is a run config in the repo."""
    assert cmd[:2] == ["vjp", "run"], cmd
    # (tomllib is Python 3.11+; the package supports 3.10)
    assert re.search(r'^vjp = "jobs\.cli:main"$', (REPO / "pyproject.toml").read_text(), flags=re.M)
    from jobs.cli import COMMANDS

    assert COMMANDS["run"][0] == "jobs.run"
    config = REPO / cmd[2]
    assert config.is_file(), config
    load_run_config(config)  # validates
    return config


def test_rayjob_manifest_runs_vjp_run_on_a_gpu_cluster() -> None:
    doc = yaml.safe_load((DEPLOY / "rayjob-stage1.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    config = _entrypoint(shlex.split(spec["entrypoint"]))
    cfg, _ = load_run_config(config)
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert (
        runtime_env["working_dir"]
        == spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["workingDir"]
    )
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    gpus = 0
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus += group["replicas"] * int(limits.get("nvidia.com/gpu", 0))
        mounts = {m["mountPath"] for m in group["template"]["spec"]["containers"][0]["volumeMounts"]}
        assert "/shared" in mounts and cfg.run.out.startswith("/shared/")  # every pod sees run.out
    # Enough GPUs for the trainer's workers (one each) and the caption actors.
    assert gpus >= cfg.run.train.num_workers and gpus >= cfg.caption.vllm.num_actors


def test_slurm_script_starts_ray_and_submits_vjp_run() -> None:
    path = DEPLOY / "slurm-stage1.sbatch"
    text = path.read_text()
    bash = shutil.which("bash")
    assert bash and subprocess.run([bash, "-n", str(path)], capture_output=True).returncode == 0
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, flags=re.M))
    nodes, gpus = int(sbatch["nodes"]), int(sbatch["gpus-per-node"])
    assert "ray start --head" in text and 'ray start --address="$RAY_ADDRESS"' in text
    config_default = re.search(r"^CONFIG=\$\{CONFIG:-(\S+)\}$", text, flags=re.M)
    assert config_default, "CONFIG default missing"
    submit = re.search(r"ray job submit .*?-- (vjp run \"\$CONFIG\")", text, flags=re.S)
    assert submit, "no `ray job submit ... -- vjp run $CONFIG`"
    config = _entrypoint(["vjp", "run", config_default.group(1)])
    cfg, _ = load_run_config(config)
    assert cfg.run.train.num_workers == nodes * gpus
    # The uploaded working dir leaves out the venvs (gigabytes) and outputs.
    assert '"excludes": [".venv"' in text
